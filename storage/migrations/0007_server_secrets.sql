-- Secrets every API replica must share (the key that signs report share links),
-- created by the first replica that needs one. Two replicas racing both insert;
-- everyone then reads the earliest row, so they agree.
CREATE TABLE IF NOT EXISTS server_secrets
(
    name String,
    value String,
    created_at DateTime64(6, 'UTC')
)
ENGINE = MergeTree
ORDER BY (name, created_at);
