-- A run's lineage: the run it was forked from (init(fork_from="RUN?_step=N")) and
-- its rewinds (init(resume_from="RUN?_step=N")), written whole with the run's
-- row by the run processor; the largest version is current. Only runs that
-- have a fork or a rewind have a row. Reads compose a run's history from it
-- (storage/lineage.py): no point is ever copied. The points a run logs after
-- a rewind are stored under the internal id "<run_id>~r<seq>", <seq> being the
-- seq of the rewind's run_start ("~" is not allowed in run ids), so the history
-- a rewind replaced stays stored.
CREATE TABLE IF NOT EXISTS run_lineage
(
    team LowCardinality(String),
    project LowCardinality(String),
    run_id String,
    fork_run_id String,
    fork_step UInt64,
    rewind_steps Array(UInt64),
    rewind_seqs Array(UInt64),
    rewind_at Array(DateTime64(3, 'UTC')),
    version UInt64
)
ENGINE = ReplacingMergeTree(version)
ORDER BY (team, project, run_id);
