-- Saved workspace views (docs/ui.md): a project's named layouts of panels,
-- filters, grouping and visible runs, shared with the team. The largest version
-- is current; deleted = 1 removes a view. is_default marks the project's
-- default view (the API keeps at most one).
CREATE TABLE IF NOT EXISTS workspace_views
(
    team String,
    project String,
    view_id String,
    name String,
    spec String,
    is_default UInt8,
    created_by String,
    updated_by String,
    created_at DateTime64(3, 'UTC'),
    updated_at DateTime64(3, 'UTC'),
    deleted UInt8 DEFAULT 0,
    version UInt64
)
ENGINE = ReplacingMergeTree(version)
ORDER BY (team, project, view_id);
