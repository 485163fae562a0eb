"""The one place that picks implementations from settings. Heavy backends import lazily."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rag.embedders import SentenceTransformerEmbedder
from rag.settings import Settings
from rag.stores import ChromaStore

if TYPE_CHECKING:
    from ingest.pipeline import Ingestor


def build_embedder(settings: Settings) -> SentenceTransformerEmbedder:
    cfg = settings.embedder
    return SentenceTransformerEmbedder(
        cfg.model_path, batch_size=cfg.batch_size, quantize=cfg.quantize, threads=cfg.threads
    )


def build_store(settings: Settings, collection: str | None = None) -> ChromaStore:
    return ChromaStore.open(
        path=settings.chroma_path, url=settings.store.url, collection=collection or settings.store.collection
    )


def build_ingestor(settings: Settings) -> Ingestor:
    from ingest.pipeline import Ingestor

    return Ingestor(settings, build_store(settings), build_embedder(settings))
