-- Artifacts (docs/artifacts.md): versions named by their manifest blob's SHA-256,
-- their aliases, and which runs logged and used them. Written by the processor from
-- `artifact` events (storage/artifacts.py); aliases also by the API. Small and read
-- across runs: on every node in a cluster.
--
-- A version's first store wins: `keep` falls as the processor's clock rises, so
-- ReplacingMergeTree(keep) keeps the earliest row of a digest and a redelivered
-- event, stored later, changes nothing. logged_at (the run's clock) orders versions
-- stored in the same millisecond (one batch). deleted = 1 hides a version whose only
-- run was deleted (storage/deletion.py) but keeps its place in the numbering: the
-- marker is the row written again with the same keep (the later insert wins the tie).
CREATE TABLE IF NOT EXISTS artifact_versions
(
    team String,
    project String,
    name String,
    digest String,
    type String,
    description String,
    metadata String,
    size UInt64,
    file_count UInt64,
    run_id String,
    created_at DateTime64(3, 'UTC'),
    logged_at DateTime64(3, 'UTC'),
    keep UInt64,
    deleted UInt8 DEFAULT 0
)
ENGINE = ReplacingMergeTree(keep)
ORDER BY (team, project, name, digest);
-- One row per alias of a name: the latest set_at wins; digest '' = removed.
CREATE TABLE IF NOT EXISTS artifact_aliases
(
    team String,
    project String,
    name String,
    alias String,
    digest String,
    set_at DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree(set_at)
ORDER BY (team, project, name, alias);
-- Lineage: a run (in run_project) logged or used a version; seq is the latest
-- event of the run that did so (a replay carries no larger seq).
CREATE TABLE IF NOT EXISTS artifact_usage
(
    team String,
    project String,
    name String,
    digest String,
    run_project String,
    run_id String,
    action LowCardinality(String),
    seq UInt64,
    at DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree(seq)
ORDER BY (team, project, name, digest, run_project, run_id, action);
