-- Runs that were deleted or moved away (storage/deletion.py). A tombstone is written
-- before any of the run's rows are removed, and is never removed itself: run searches
-- leave tombstoned ids out at once (so a deletion still under way shows nothing half
-- gone), and the stream processor dead-letters late events of a tombstoned run
-- (a resend from an SDK's spool, a replayed topic) instead of bringing it back.
-- reason: 'deleted', 'deleted with its project' or 'moved to team/project'. Small and
-- read inside run queries: on every node in a cluster.
CREATE TABLE IF NOT EXISTS run_tombstones
(
    team LowCardinality(String),
    project LowCardinality(String),
    run_id String,
    reason String,
    at DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree
ORDER BY (team, project, run_id);
