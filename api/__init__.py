"""HTTP API (FastAPI): thin routes over the rag pipeline."""
