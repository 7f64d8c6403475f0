"""Storage: SQLAlchemy only. Knows SQL and nothing of gRPC."""
