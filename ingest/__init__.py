"""Curator side: provenance, verification, chunking, ledger, ingestion."""
