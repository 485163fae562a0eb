"""Hybrid retrieval, filters and the lexical index lifecycle (fake embedder, in-memory store)."""

from __future__ import annotations

from pathlib import Path

import pytest

from ingest.ledger import Ledger
from ingest.pipeline import Ingestor
from rag.errors import InvalidInputError
from rag.retrieval import HybridRetriever, LexicalIndex, where_clause
from rag.settings import Settings
from tests.fakes import FakeEmbedder, InMemoryStore


@pytest.fixture
def indexed(settings: Settings, corpus: Path) -> tuple[HybridRetriever, InMemoryStore]:
    store, embedder = InMemoryStore(), FakeEmbedder()
    lexical = LexicalIndex(settings.data_dir / "bm25")
    ledger = Ledger(settings.ledger_path)
    ingestor = Ingestor(settings, store, embedder, on_change=lambda: lexical.rebuild(store, ledger.head()))
    ingestor.ingest([corpus])
    return HybridRetriever(store, embedder, lexical), store


def test_lexical_and_dense_fuse_to_the_right_document(indexed: tuple[HybridRetriever, InMemoryStore]) -> None:
    retriever, _ = indexed
    hits = retriever.retrieve("AssertionError __debug__ assert statement", top_k=2)
    assert hits[0].chunk.metadata["doc_id"] == "assert.md"
    assert hits[0].lexical_rank == 0 and hits[0].fused > 0


def test_index_is_saved_and_reloaded_with_its_ledger_head(settings: Settings, indexed) -> None:  # type: ignore[no-untyped-def]
    fresh = LexicalIndex(settings.data_dir / "bm25")
    assert fresh.load() == Ledger(settings.ledger_path).head()
    assert fresh.search("deletion of a name del statement", 3)[0][0].startswith("del.md@")


def test_index_follows_removal(settings: Settings, corpus: Path) -> None:
    store, embedder = InMemoryStore(), FakeEmbedder()
    lexical = LexicalIndex(settings.data_dir / "bm25")
    ledger = Ledger(settings.ledger_path)
    ingestor = Ingestor(settings, store, embedder, on_change=lambda: lexical.rebuild(store, ledger.head()))
    ingestor.ingest([corpus])
    ingestor.remove("del.md")
    assert all(not i.startswith("del.md@") for i, _ in lexical.search("del statement deletion", 10))
    assert lexical.head == ledger.head()


def test_hits_come_best_fused_first_with_their_text(indexed: tuple[HybridRetriever, InMemoryStore]) -> None:
    retriever, store = indexed
    hits = retriever.retrieve("the pass statement is a null operation", top_k=10)
    assert len(hits) == store.count() > 1 and [h.fused for h in hits] == sorted((h.fused for h in hits), reverse=True)
    for hit in hits:
        assert hit.chunk.text == store.get([hit.chunk.id])[0].text and hit.chunk.metadata["chunk_sha256"]


def test_filters_restrict_results(indexed: tuple[HybridRetriever, InMemoryStore]) -> None:
    retriever, _ = indexed
    hits = retriever.retrieve("statement", top_k=5, filters={"doc_id": "pass.md"})
    assert hits and {h.chunk.metadata["doc_id"] for h in hits} == {"pass.md"}
    assert retriever.retrieve("statement", filters={"origin": "ai-generated"}) == []


def test_unknown_filter_field_is_refused() -> None:
    with pytest.raises(InvalidInputError) as err:
        where_clause({"colour": "red"})
    assert err.value.code == "unknown_filter"
    assert where_clause({"license": ["PSF-2.0", "MIT"], "origin": "human"}) == {
        "$and": [{"license": {"$in": ["PSF-2.0", "MIT"]}}, {"origin": "human"}]
    }


def test_warm_up_runs_the_warm_up_queries_only_when_there_is_something_to_search(
    indexed: tuple[HybridRetriever, InMemoryStore], settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    from rag.retrieval import WARM_UP_QUERIES

    retriever, _ = indexed
    asked: list[str] = []
    original = retriever.retrieve
    monkeypatch.setattr(retriever, "retrieve", lambda q, top_k=4: asked.append(q) or original(q, top_k))
    retriever.warm_up()
    assert asked == list(WARM_UP_QUERIES)
    empty = HybridRetriever(InMemoryStore(), FakeEmbedder(), LexicalIndex(settings.data_dir / "none"))
    monkeypatch.setattr(empty, "retrieve", lambda q, top_k=4: asked.append(q))
    empty.warm_up()
    assert len(asked) == len(WARM_UP_QUERIES)
