-- Revocations of a report's share links, and its deletion, appended here rather
-- than written into the report's row: a report edit racing a revoke (or a
-- delete) rewrites the row from what it read, and could bring back an older
-- share_version. Here the largest share_version and any deletion always win.
CREATE TABLE IF NOT EXISTS report_links
(
    team String,
    project String,
    report_id String,
    share_version UInt32,
    deleted UInt8,
    at DateTime64(3, 'UTC')
)
ENGINE = MergeTree
ORDER BY (team, project, report_id);
