"""rayline: ingest."""
