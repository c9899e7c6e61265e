"""market-ingestor: exchange WebSockets -> bus (Kafka/NATS) -> Faust streams -> TimescaleDB, and push."""

__version__ = "0.1.0"
