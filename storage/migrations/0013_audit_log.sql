-- The audit log: who changed access to a team's data (keys, members and roles,
-- visibility, share links, deletions), when, and from where. Append-only: rows
-- are only ever inserted (storage/audit.py); no code path updates or deletes
-- them and no endpoint changes them. A plain MergeTree, so merges never fold
-- rows together either. details is a JSON object.
CREATE TABLE IF NOT EXISTS audit_log
(
    team String,
    at DateTime64(6, 'UTC'),
    entry_id String,
    action LowCardinality(String),
    actor_kind LowCardinality(String),
    actor_user String,
    actor_key String,
    client_ip String,
    forwarded_for String,
    user_agent String,
    target String,
    details String
)
ENGINE = MergeTree
ORDER BY (team, at, entry_id);
