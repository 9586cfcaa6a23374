-- Upper bucket levels (2 and up) that a batch left behind, one row per run: drivers that
-- process many batches a second refresh those levels on a cadence instead of per batch
-- (storage.buckets explains the versions). An empty ``metrics`` means nothing is pending.
-- Readers complete a level that is behind from level 1 (storage.series). Emptied rows go after a
-- day (should that bring back an older row of the run, it costs one more refresh).
CREATE TABLE IF NOT EXISTS bucket_pending
(
    team LowCardinality(String),
    project LowCardinality(String),
    run_id String,
    metrics Array(String),
    first_step UInt64,
    last_step UInt64,
    version UInt64,
    written_at DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree(version)
ORDER BY (team, project, run_id)
TTL toDateTime(written_at) + INTERVAL 1 DAY DELETE WHERE empty(metrics);
