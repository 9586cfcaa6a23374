-- Metric history, ordered for the dominant query: one metric across many runs
-- of a project. Codecs were chosen by measurement (bench/query.py prints bytes
-- per point): noisy float64 values cost about 7 bytes with FPC + ZSTD whatever
-- else is tried, so every other column must cost almost nothing. Sorted
-- LowCardinality identity columns and DoubleDelta steps do; a per-point wall
-- time would not (about 1 byte of jitter per point), so time lives once per
-- (run, step) in metric_steps.
--
-- Idempotency: a point is identified by (run, metric, step). A redelivered or
-- resent event writes identical rows; a step logged again later has a larger
-- seq. ReplacingMergeTree(seq) keeps the latest on merge, and readers that need
-- exact answers before a merge use FINAL.
CREATE TABLE IF NOT EXISTS metric_points
(
    team LowCardinality(String),
    project LowCardinality(String),
    metric LowCardinality(String),
    run_id LowCardinality(String),
    step UInt64 CODEC(DoubleDelta, ZSTD(1)),
    value Float64 CODEC(FPC, ZSTD(1)),
    seq UInt64 CODEC(DoubleDelta, ZSTD(1))
)
ENGINE = ReplacingMergeTree(seq)
ORDER BY (team, project, metric, run_id, step);

-- The wall time of each logged step (a history row), shared by all its metrics.
CREATE TABLE IF NOT EXISTS metric_steps
(
    team LowCardinality(String),
    project LowCardinality(String),
    run_id LowCardinality(String),
    step UInt64 CODEC(DoubleDelta, ZSTD(1)),
    time DateTime64(3, 'UTC') CODEC(DoubleDelta, ZSTD(1)),
    seq UInt64 CODEC(DoubleDelta, ZSTD(1))
)
ENGINE = ReplacingMergeTree(seq)
ORDER BY (team, project, run_id, step);

-- Multi-resolution downsampling: level L groups steps into buckets of
-- storage.buckets.WIDTHS[L] steps (16, 64, 256, ... growing 4x per level).
-- Every bucket is recomputed whole from the level below whenever one of its
-- steps arrives (storage.buckets.refresh_buckets), so a replay rewrites the
-- same row and an out-of-order step lands in the right bucket; version is the
-- largest seq inside the bucket, so the latest recomputation wins.
-- min/max/sum are over finite values; first/last are the values at step_first
-- and step_last whatever they are (NaN included).
CREATE TABLE IF NOT EXISTS metric_buckets
(
    team LowCardinality(String),
    project LowCardinality(String),
    metric LowCardinality(String),
    level UInt8,
    run_id LowCardinality(String),
    bucket UInt64 CODEC(DoubleDelta, ZSTD(1)),
    step_first UInt64 CODEC(DoubleDelta, ZSTD(1)),
    step_last UInt64 CODEC(DoubleDelta, ZSTD(1)),
    time_first DateTime64(3, 'UTC') CODEC(DoubleDelta, ZSTD(1)),
    time_last DateTime64(3, 'UTC') CODEC(DoubleDelta, ZSTD(1)),
    count UInt32 CODEC(T64, ZSTD(1)),
    nonfinite UInt32 CODEC(T64, ZSTD(1)),
    min Float64 CODEC(FPC, ZSTD(1)),
    max Float64 CODEC(FPC, ZSTD(1)),
    sum Float64 CODEC(FPC, ZSTD(1)),
    first Float64 CODEC(FPC, ZSTD(1)),
    last Float64 CODEC(FPC, ZSTD(1)),
    version UInt64 CODEC(DoubleDelta, ZSTD(1))
)
ENGINE = ReplacingMergeTree(version)
ORDER BY (team, project, metric, level, run_id, bucket);

-- Per (run, metric) statistics kept by the summary processor; each write is
-- the whole state, so the largest version is the current one.
CREATE TABLE IF NOT EXISTS metric_summaries
(
    team LowCardinality(String),
    project LowCardinality(String),
    run_id String,
    metric LowCardinality(String),
    last Float64,
    min Float64,
    max Float64,
    mean Float64,
    count UInt64,
    nan_count UInt64,
    inf_count UInt64,
    first_step UInt64,
    last_step UInt64,
    first_time DateTime64(3, 'UTC'),
    last_time DateTime64(3, 'UTC'),
    version UInt64
)
ENGINE = ReplacingMergeTree(version)
ORDER BY (team, project, run_id, metric);
