-- System samples (CPU, memory, GPU, ...), one row per (run, metric, time).
-- Ordered like metric history so a panel of one system metric across many runs
-- reads one range. Volumes are small (a sample every few seconds), so charts
-- aggregate them on the fly.
CREATE TABLE IF NOT EXISTS system_points
(
    team LowCardinality(String),
    project LowCardinality(String),
    metric LowCardinality(String),
    run_id LowCardinality(String),
    time DateTime64(3, 'UTC') CODEC(DoubleDelta, ZSTD(1)),
    value Float64 CODEC(FPC, ZSTD(1)),
    seq UInt64 CODEC(DoubleDelta, ZSTD(1))
)
ENGINE = ReplacingMergeTree(seq)
ORDER BY (team, project, metric, run_id, time);

-- Console output; (seq, row) orders a run's lines and identifies each one.
CREATE TABLE IF NOT EXISTS console_lines
(
    team LowCardinality(String),
    project LowCardinality(String),
    run_id String,
    seq UInt64 CODEC(Delta, ZSTD(1)),
    row UInt32 CODEC(T64, ZSTD(1)),
    time DateTime64(3, 'UTC') CODEC(DoubleDelta, ZSTD(1)),
    stream LowCardinality(String),
    line String CODEC(ZSTD(3))
)
ENGINE = ReplacingMergeTree
ORDER BY (team, project, run_id, seq, row);

-- Run files and media: metadata only, the blob is in the file store under
-- store_key. A path saved again replaces the earlier entry (larger seq).
CREATE TABLE IF NOT EXISTS run_files
(
    team LowCardinality(String),
    project LowCardinality(String),
    run_id String,
    path String,
    kind LowCardinality(String),
    media_type LowCardinality(String),
    step Nullable(UInt64),
    size UInt64,
    sha256 FixedString(64),
    store_key String,
    meta String,
    time DateTime64(3, 'UTC'),
    seq UInt64
)
ENGINE = ReplacingMergeTree(seq)
ORDER BY (team, project, run_id, path);
