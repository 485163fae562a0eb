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


def test_query_without_content_returns_ids_and_scores_only(tmp_path: Path) -> None:
    store = ChromaStore.open(path=tmp_path / "chroma", url=None, collection="ids")
    chunks = [Chunk(f"c{i}", "d", i, f"text {i}", "", "", {"doc_id": "d"}) for i in range(3)]
    store.upsert(chunks, [[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]])
    full = store.query([1.0, 0.0], 2)
    bare = store.query([1.0, 0.0], 2, content=False)
    assert [c.id for c in bare] == [c.id for c in full] == ["c0", "c1"]
    assert [round(c.score, 4) for c in bare] == [round(c.score, 4) for c in full] == [1.0, 0.6]
    assert full[0].text == "text 0" and bare[0].text == "" and bare[0].metadata == {}


def test_a_collection_refuses_vectors_of_another_embedder(tmp_path: Path) -> None:
    from rag.errors import ConflictError
    from rag.settings import Settings
    from rag.wiring import build_store

    first = ChromaStore.open(path=tmp_path / "chroma", collection="kb1", embedder="minilm+openvino-int8")
    first.upsert([Chunk("c0", "d", 0, "text", "", "", {"doc_id": "d"})], [[1.0, 0.0]])
    assert ChromaStore.open(path=tmp_path / "chroma", collection="kb1", embedder="minilm+openvino-int8").count() == 1
    with pytest.raises(ConflictError) as caught:
        ChromaStore.open(path=tmp_path / "chroma", collection="kb1", embedder="minilm+int8")
    assert caught.value.code == "embedder_mismatch" and caught.value.http_status == 409
    assert "minilm+openvino-int8" in caught.value.message and "RAG_EMBEDDER__MODEL_PATH" in caught.value.message

    # Another model is refused through the settings too: a collection of MiniLM's vectors, another model's id.
    build_store(Settings(data_dir=tmp_path / "data")).upsert(
        [Chunk("c0", "d", 0, "text", "", "", {"doc_id": "d"})], [[1.0, 0.0]]
    )
    with pytest.raises(ConflictError):
        ChromaStore.open(path=Settings(data_dir=tmp_path / "data").chroma_path, embedder="intfloat/e5-small-v2")


def test_runtimes_of_one_model_share_a_collection(tmp_path: Path) -> None:
    """Every runtime of MiniLM that agrees with float32 is one model: a collection built by one runtime is
    queried by another (and by the ids collections recorded before runtimes shared one)."""
    from rag.embedders import MINILM_ID
    from rag.settings import Settings
    from rag.wiring import build_store

    settings = Settings(data_dir=tmp_path / "data", embedder={"backend": "openvino", "quantize": "int8"})
    built = build_store(settings, runtime="openvino-int8")
    built.upsert(
        [Chunk(f"c{i}", "d", i, f"text {i}", "", "", {"doc_id": "d"}) for i in range(2)], [[1.0, 0.0], [0.0, 1.0]]
    )
    queried = build_store(Settings(data_dir=tmp_path / "data", embedder={"backend": "torch", "quantize": "none"}))
    assert [c.id for c in queried.query([0.99, 0.1], 1)] == ["c0"]
    metadata = queried._collection.metadata
    assert metadata["embedder"] == MINILM_ID and metadata["embedder_runtime"] == "openvino-int8"
    for legacy in (f"{MINILM_ID}+openvino-int8", f"{MINILM_ID}+int8"):
        old = ChromaStore.open(path=tmp_path / "old", collection=legacy.rsplit("+", 1)[1], embedder=legacy)
        old.upsert([Chunk("c0", "d", 0, "text", "", "", {"doc_id": "d"})], [[1.0, 0.0]])
        again = ChromaStore.open(path=tmp_path / "old", collection=legacy.rsplit("+", 1)[1], embedder=MINILM_ID)
        assert again.count() == 1


def test_a_chroma_server_that_stops_answering_is_backend_unavailable() -> None:
    """Not the HTTP library's exception (a CLI `internal_error`, an API 500): a coded error naming the server."""
    import httpx

    from rag.errors import BackendUnavailableError

    class Unreachable:
        def upsert(self, **_: object) -> None:
            raise httpx.ConnectError("[Errno 111] Connection refused")

        def count(self) -> int:
            raise httpx.RemoteProtocolError("Server disconnected without sending a response.")

    store = ChromaStore(stores._ServerCollection(Unreachable(), "http://127.0.0.1:8001"))
    with pytest.raises(BackendUnavailableError) as refused:
        store.upsert([Chunk("c0", "d", 0, "text", "", "", {"doc_id": "d"})], [[1.0, 0.0]])
    assert refused.value.code == "backend_unavailable"
    assert (
        "http://127.0.0.1:8001 stopped answering (" in refused.value.message
        and "Connection refused" in refused.value.message
    )
    with pytest.raises(BackendUnavailableError, match="Server disconnected"):
        store.count()
