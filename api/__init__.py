"""The Starlette application: ingest, queries, auth and the web UI assets."""
