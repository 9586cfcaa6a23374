"""ClickHouse storage: connection by DSN, versioned schema migrations, writers and queries."""
