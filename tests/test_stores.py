"""The real embedded Chroma store: paged reads (SQLite caps a statement at 32,766 variables)."""

from __future__ import annotations

from pathlib import Path

import pytest

from rag import stores
from rag.stores import ChromaStore
from rag.types import Chunk


def test_get_reads_in_pages_and_keeps_every_row(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(stores, "GET_PAGE", 3)
    store = ChromaStore.open(path=tmp_path / "chroma", url=None, collection="paged")
    chunks = [Chunk(f"c{i}", "d", i, f"text {i}", "", "", {"doc_id": "d", "n": i}) for i in range(8)]
    store.upsert(chunks, [[1.0 if j == i % 4 else 0.0 for j in range(4)] for i in range(8)])
    got = store.get([f"c{i}" for i in range(8)])
    assert sorted(c.id for c in got) == [f"c{i}" for i in range(8)]
    assert {c.id: c.text for c in got}["c7"] == "text 7" and len(store.ids()) == 8
