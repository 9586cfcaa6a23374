-- Teams, members, projects, API keys and reports: small tables the API reads
-- and writes. Each write is the whole row with a larger version (a timestamp
-- in microseconds); a delete writes is_deleted = 1, which FINAL hides.
CREATE TABLE IF NOT EXISTS teams
(
    team String,
    display_name String,
    created_at DateTime64(3, 'UTC'),
    version UInt64,
    is_deleted UInt8
)
ENGINE = ReplacingMergeTree(version, is_deleted)
ORDER BY team;

CREATE TABLE IF NOT EXISTS members
(
    team String,
    user String,
    role Enum8('viewer' = 1, 'member' = 2, 'admin' = 3),
    created_at DateTime64(3, 'UTC'),
    version UInt64,
    is_deleted UInt8
)
ENGINE = ReplacingMergeTree(version, is_deleted)
ORDER BY (team, user);

CREATE TABLE IF NOT EXISTS projects
(
    team String,
    project String,
    visibility Enum8('private' = 1, 'public' = 2),
    description String,
    created_at DateTime64(3, 'UTC'),
    version UInt64,
    is_deleted UInt8
)
ENGINE = ReplacingMergeTree(version, is_deleted)
ORDER BY (team, project);

-- An API key is shown once; only its SHA-256 is kept. key_id is the public
-- prefix that finds the row; revoked_at set means the key no longer works.
CREATE TABLE IF NOT EXISTS api_keys
(
    key_id String,
    secret_sha256 FixedString(64),
    team String,
    user String,
    name String,
    created_at DateTime64(3, 'UTC'),
    revoked_at Nullable(DateTime64(3, 'UTC')),
    version UInt64
)
ENGINE = ReplacingMergeTree(version)
ORDER BY key_id;

-- Reports: markdown with chart specs (JSON). Share links are signed, expiring
-- tokens checked against share_version, so bumping it revokes every link.
CREATE TABLE IF NOT EXISTS reports
(
    team String,
    project String,
    report_id String,
    title String,
    body String,
    panels String,
    created_by String,
    created_at DateTime64(3, 'UTC'),
    updated_at DateTime64(3, 'UTC'),
    share_version UInt32,
    version UInt64,
    is_deleted UInt8
)
ENGINE = ReplacingMergeTree(version, is_deleted)
ORDER BY (team, project, report_id);
