"""The service's routes, one module per concern; each is thin over the domain code in `rag/` and `ingest/`."""
