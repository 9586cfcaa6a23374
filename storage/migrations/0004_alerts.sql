-- Alerts from the SDK (run.alert) and from rules; alert_id is derived from the
-- source event, so a replay writes the same row again.
CREATE TABLE IF NOT EXISTS alerts
(
    team LowCardinality(String),
    project LowCardinality(String),
    run_id String,
    alert_id String,
    rule_id String,
    source LowCardinality(String),
    level LowCardinality(String),
    title String,
    text String,
    time DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree
ORDER BY (team, project, run_id, alert_id);

-- Alert rules per project; kind and spec (JSON) are interpreted by the alert
-- processor. Updates write the whole rule with a larger version; a delete
-- writes is_deleted = 1, which FINAL then hides.
CREATE TABLE IF NOT EXISTS alert_rules
(
    team LowCardinality(String),
    project LowCardinality(String),
    rule_id String,
    name String,
    kind LowCardinality(String),
    spec String,
    enabled Bool,
    cooldown_s UInt32,
    created_at DateTime64(3, 'UTC'),
    updated_at DateTime64(3, 'UTC'),
    version UInt64,
    is_deleted UInt8
)
ENGINE = ReplacingMergeTree(version, is_deleted)
ORDER BY (team, project, rule_id);
