-- Raw metric points: one row per (run, metric, logged row).
-- Ordered for the dominant query, one metric across many runs of a project.
-- (team, project, run_id, seq, row) identifies a point: a redelivered event
-- writes identical rows, which ReplacingMergeTree collapses on merge.
CREATE TABLE IF NOT EXISTS metric_points
(
    team LowCardinality(String),
    project LowCardinality(String),
    run_id String,
    metric LowCardinality(String),
    step UInt64 CODEC(Delta, ZSTD(1)),
    time DateTime64(3, 'UTC') CODEC(DoubleDelta, ZSTD(1)),
    value Float64 CODEC(Gorilla, ZSTD(1)),
    seq UInt64 CODEC(Delta, ZSTD(1)),
    row UInt32 CODEC(ZSTD(1))
)
ENGINE = ReplacingMergeTree
ORDER BY (team, project, metric, run_id, step, seq, row);
