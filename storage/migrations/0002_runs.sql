-- One row per run, written whole by the run processor (the single writer of a
-- run's record, so edits and lifecycle events apply in order); the largest
-- version (how many of the run's events the processor had folded) is current,
-- and of equal versions the later write. Readers use FINAL.
-- heartbeat_at is the run's own clock; last_seen_at the server's, when it last
-- received anything from the run (crash detection compares that one).
--
-- Config is flattened to dotted keys ("optimizer.lr") in two maps: config
-- holds every value as JSON text (exact equality, grouping, display, $exists)
-- and config_num the numeric and boolean ones as Float64 (comparisons and
-- numeric sorts). Ten thousands of runs with a few dozen keys each scan in a
-- few milliseconds, with no schema change when a new key appears.
CREATE TABLE IF NOT EXISTS runs
(
    team LowCardinality(String),
    project LowCardinality(String),
    run_id String,
    name String,
    state LowCardinality(String),
    created_at DateTime64(3, 'UTC'),
    updated_at DateTime64(3, 'UTC'),
    heartbeat_at DateTime64(3, 'UTC'),
    last_seen_at DateTime64(3, 'UTC'),
    finished_at Nullable(DateTime64(3, 'UTC')),
    exit_code Nullable(Int32),
    run_group String,
    job_type String,
    tags Array(String),
    notes String,
    user String,
    host String,
    program String,
    args Array(String),
    python String,
    git String,
    config Map(String, String),
    config_num Map(String, Float64),
    version UInt64
)
ENGINE = ReplacingMergeTree(version)
ORDER BY (team, project, run_id);

-- The run summary (wandb's run.summary): the summary processor's view of each
-- metric (last, or min/max/mean per define_metric) plus values set with
-- run.summary[...], in the same two-map shape as config.
CREATE TABLE IF NOT EXISTS run_summaries
(
    team LowCardinality(String),
    project LowCardinality(String),
    run_id String,
    summary Map(String, String),
    summary_num Map(String, Float64),
    version UInt64
)
ENGINE = ReplacingMergeTree(version)
ORDER BY (team, project, run_id);

-- The keys a project has seen, with their JSON types, so a UI lists columns
-- and chart choices without scanning runs. Writers add rows as they go.
CREATE TABLE IF NOT EXISTS key_catalog
(
    team LowCardinality(String),
    project LowCardinality(String),
    kind Enum8('config' = 1, 'summary' = 2, 'metric' = 3, 'system' = 4),
    key String,
    type LowCardinality(String)
)
ENGINE = ReplacingMergeTree
ORDER BY (team, project, kind, key, type);
