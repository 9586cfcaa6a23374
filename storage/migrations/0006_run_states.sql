-- The stream processor's state of each run (lifecycle, summary statistics, alert
-- rule memory) as JSON, written whole after the batch's rows and before its
-- offsets are committed, so whichever worker owns the run next resumes from it.
-- (Faust's changelog-backed tables were the first choice; their recovery hung
-- after a rebalance with faust-streaming 0.15.3 on Kafka 4.4, see docs/architecture.md.)
CREATE TABLE IF NOT EXISTS run_states
(
    team LowCardinality(String),
    project LowCardinality(String),
    run_id String,
    state String CODEC(ZSTD(3)),
    version UInt64
)
ENGINE = ReplacingMergeTree(version)
ORDER BY (team, project, run_id);
