"""Stream processing: framework-free processing logic and the Faust app that drives it over Kafka."""
