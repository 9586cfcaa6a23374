"""Dev and test launchers for the real services (Kafka broker, ClickHouse over chdb). Not shipped in the package."""
