"""The one place that picks implementations from settings. Heavy backends import lazily."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rag.embedders import SentenceTransformerEmbedder
from rag.protocols import Embedder
from rag.retrieval import HybridRetriever, LexicalIndex
from rag.settings import Settings
from rag.stores import ChromaStore

if TYPE_CHECKING:
    from ingest.pipeline import Ingestor
    from ingest.provenance import TrustStore


def build_embedder(settings: Settings) -> SentenceTransformerEmbedder:
    cfg = settings.embedder
    return SentenceTransformerEmbedder(
        cfg.model_path, batch_size=cfg.batch_size, quantize=cfg.quantize, threads=cfg.threads
    )


def build_store(settings: Settings, collection: str | None = None) -> ChromaStore:
    return ChromaStore.open(
        path=settings.chroma_path, url=settings.store.url, collection=collection or settings.store.collection
    )


def build_ingestor(settings: Settings, embedder: Embedder | None = None, trust: TrustStore | None = None) -> Ingestor:
    """The ingestor, with the BM25 index rebuilt whenever the stored chunks change."""
    from ingest.ledger import Ledger
    from ingest.pipeline import Ingestor

    store = build_store(settings)
    lexical = LexicalIndex(settings.lexical_path)
    ledger = Ledger(settings.ledger_path)
    return Ingestor(
        settings,
        store,
        embedder or build_embedder(settings),
        trust=trust,
        on_change=lambda: lexical.rebuild(store, ledger.head()),
    )


def build_retriever(settings: Settings, embedder: Embedder | None = None) -> HybridRetriever:
    """Hybrid retriever over the store; the saved BM25 index is reused unless the ledger moved past it."""
    from ingest.ledger import Ledger

    store = build_store(settings)
    lexical = LexicalIndex(settings.lexical_path)
    head = Ledger(settings.ledger_path).head()
    if lexical.load() != head:
        lexical.rebuild(store, head)
    return HybridRetriever(store, embedder or build_embedder(settings), lexical)
