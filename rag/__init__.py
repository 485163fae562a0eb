"""Provenance-first RAG guardrail stack: domain core."""

__version__ = "0.1.0"
