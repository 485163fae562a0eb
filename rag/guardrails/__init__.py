"""Guardrails that keep machine text out of the corpus and checked text in the answers."""
