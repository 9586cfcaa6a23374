-- Sweeps (docs/sweeps.md): a sweep's configuration and state, the suggestions
-- handed to agents (claims), the agents' heartbeats, and what hyperband early
-- termination saw and decided. Written by the API (sweeps, claims, agents) and
-- by the processor (milestones, stops). Small and read across runs: on every node.
--
-- One row per sweep; the largest version is current (state and config edits).
CREATE TABLE IF NOT EXISTS sweeps
(
    team String,
    project String,
    sweep_id String,
    name String,
    config String,
    method LowCardinality(String),
    state LowCardinality(String),
    created_by String,
    created_at DateTime64(3, 'UTC'),
    updated_at DateTime64(3, 'UTC'),
    version UInt64
)
ENGINE = ReplacingMergeTree(version)
ORDER BY (team, project, sweep_id);
-- A suggestion handed to an agent: the run id it will start as, its parameters
-- (flat JSON object, "a.b" keys), the grid cell it covers (-1: none). A claim
-- given back (its agent went silent before its run ended) is the row written
-- again with released = 1 and a larger version; grid cells of released claims
-- are handed out again under a new run id.
CREATE TABLE IF NOT EXISTS sweep_claims
(
    team String,
    project String,
    sweep_id String,
    run_id String,
    agent_id String,
    params String,
    grid_index Int64,
    claimed_at DateTime64(3, 'UTC'),
    released UInt8 DEFAULT 0,
    version UInt64
)
ENGINE = ReplacingMergeTree(version)
ORDER BY (team, project, sweep_id, run_id);
-- Agents: the latest heartbeat wins.
CREATE TABLE IF NOT EXISTS sweep_agents
(
    team String,
    project String,
    sweep_id String,
    agent_id String,
    host String,
    pid UInt32,
    started_at DateTime64(3, 'UTC'),
    heartbeat_at DateTime64(3, 'UTC'),
    state LowCardinality(String)
)
ENGINE = ReplacingMergeTree(heartbeat_at)
ORDER BY (team, project, sweep_id, agent_id);
-- Hyperband: a run's metric value at a bracket's iteration (written once by the
-- processor; a replay writes the same row).
CREATE TABLE IF NOT EXISTS sweep_milestones
(
    team String,
    project String,
    sweep_id String,
    iteration UInt64,
    run_id String,
    value Float64,
    at DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree
ORDER BY (team, project, sweep_id, iteration, run_id);
-- A run told to stop: by hyperband (the processor) or by a cancelled sweep (the API).
CREATE TABLE IF NOT EXISTS sweep_stops
(
    team String,
    project String,
    sweep_id String,
    run_id String,
    reason String,
    at DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree
ORDER BY (team, project, sweep_id, run_id);
-- The sweep a run belongs to ('' for none), from its run_start.
ALTER TABLE runs ADD COLUMN IF NOT EXISTS sweep_id String DEFAULT '';
