-- An API key's scope (api/auth.py): what the key may do at most; its member's role still
-- caps it. 'ingest' writes runs and files only (the key a training job carries), 'read'
-- reads only, 'admin' does all the member's role allows. Keys made before scopes are 'admin'.
ALTER TABLE api_keys ADD COLUMN IF NOT EXISTS scope Enum8('ingest' = 1, 'read' = 2, 'admin' = 3) DEFAULT 'admin' AFTER name;
