"""Vector stores. Chroma is the default: embedded `PersistentClient`, or `HttpClient` for a server."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np

from rag.embedder_choice import same_model
from rag.errors import BackendUnavailableError, ConflictError
from rag.types import Chunk, StoredChunk

# Chroma caps a single add; stay well under it.
_WRITE_BATCH = 1000


GET_PAGE = 5_000


def vector_sha256(vector: Sequence[float] | Any) -> str:
    """The sha256 of a vector as float32, little-endian: what a ledger entry commits for each stored vector.

    Chroma keeps vectors as float32 and may rescale one in a cosine collection, so ingest hashes the vectors
    as the store reads them back after writing, never the embedder's output."""
    return hashlib.sha256(np.asarray(vector, dtype="<f4").tobytes()).hexdigest()


class _ServerCollection:
    """A Chroma server's collection: a call that cannot reach the server (it stopped, the network went) raises
    `backend_unavailable` naming the server, instead of the HTTP library's exception (a CLI `internal_error`,
    an API 500). A write cut this way is safe to repeat: ingest writes chunks before the ledger entry that
    commits them, and the next run removes what no entry commits."""

    def __init__(self, collection: Any, url: str) -> None:
        self._collection = collection
        self._url = url

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._collection, name)
        if not callable(attribute):
            return attribute

        def call(*args: Any, **kwargs: Any) -> Any:
            with _reaching(self._url):
                return attribute(*args, **kwargs)

        return call


@contextmanager
def _reaching(url: str) -> Iterator[None]:
    import httpx

    try:
        yield
    except (httpx.TransportError, ConnectionError) as exc:
        reason = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        raise BackendUnavailableError(
            f"The Chroma server at {url} stopped answering ({reason}); retry once it is back "
            "(an interrupted ingest converges when run again)."
        ) from exc


class ChromaStore:
    """Chunks with provenance metadata in a Chroma collection (cosine space)."""

    def __init__(self, collection: Any, reopen: Callable[[], Any] | None = None) -> None:
        self._collection = collection
        self._reopen = reopen

    def reopen(self) -> None:
        """Open the collection afresh, to see what another process wrote.

        An embedded `PersistentClient` keeps its vector index in memory and never reloads it: chunks another
        process adds stay invisible to `query` (and deleted ones stay in it) until the client is made anew.
        Chroma shares one client system per path inside a process, so that system is dropped from its
        cache first; clients already holding it keep working. A server (`HttpClient`) needs nothing."""
        if self._reopen is not None:
            self._collection = self._reopen()

    @classmethod
    def open(
        cls,
        *,
        path: Path | None = None,
        url: str | None = None,
        collection: str = "knowledge_base",
        embedder: str | None = None,
        runtime: str | None = None,
    ) -> ChromaStore:
        """Open (or create) the collection; `embedder` (the model id) is recorded at creation and checked
        afterwards, so vectors of two different models never meet in one collection. Runtimes of one model
        that agree within the tested tolerance share its id (`rag.embedder_choice`); `runtime`, the one that
        created the collection, is recorded beside it for reference, not checked."""
        try:
            import chromadb
            from chromadb.config import Settings as ChromaSettings
        except ImportError as exc:  # pragma: no cover - install problem
            raise BackendUnavailableError("chromadb is not installed: pip install chromadb.") from exc
        chroma_settings = ChromaSettings(anonymized_telemetry=False)
        reopen: Callable[[], Any] | None = None
        if url:
            parsed = urlparse(url)
            try:
                client: Any = chromadb.HttpClient(
                    host=parsed.hostname or "localhost",
                    port=parsed.port or (443 if parsed.scheme == "https" else 8000),
                    ssl=parsed.scheme == "https",
                    settings=chroma_settings,
                )
            except Exception as exc:
                raise BackendUnavailableError(f"Cannot reach the Chroma server at {url}: {exc}") from exc
        else:
            assert path is not None
            path.mkdir(parents=True, exist_ok=True)
            client = chromadb.PersistentClient(path=str(path), settings=chroma_settings)

            def reopen() -> Any:
                from chromadb.api.shared_system_client import SharedSystemClient

                # The cache key of an embedded client is its directory (as Chroma's own settings spell it).
                SharedSystemClient._identifier_to_system.pop(str(client.get_settings().persist_directory), None)
                fresh = chromadb.PersistentClient(path=str(path), settings=chroma_settings)
                return fresh.get_collection(collection)

        metadata = {
            "hnsw:space": "cosine",
            **({"embedder": embedder} if embedder else {}),
            **({"embedder_runtime": runtime} if embedder and runtime else {}),
        }
        with _reaching(url) if url else nullcontext():
            opened = client.get_or_create_collection(collection, metadata=metadata)
        recorded = (opened.metadata or {}).get("embedder")
        if embedder and recorded and not same_model(str(recorded), embedder):
            raise ConflictError(
                f"The collection {collection!r} holds vectors of {recorded}, but this run embeds with "
                f"{embedder}; use the embedder model it was built with (RAG_EMBEDDER__MODEL_PATH) "
                "or ingest into a new data dir.",
                code="embedder_mismatch",
            )
        return cls(_ServerCollection(opened, url) if url else opened, reopen)

    def upsert(self, chunks: Sequence[Chunk], embeddings: Sequence[Sequence[float]]) -> None:
        for start in range(0, len(chunks), _WRITE_BATCH):
            part = chunks[start : start + _WRITE_BATCH]
            self._collection.upsert(
                ids=[c.id for c in part],
                embeddings=[list(e) for e in embeddings[start : start + _WRITE_BATCH]],
                documents=[c.text for c in part],
                metadatas=[c.metadata for c in part],
            )

    def delete(self, ids: Sequence[str]) -> None:
        for start in range(0, len(ids), _WRITE_BATCH):
            self._collection.delete(ids=list(ids[start : start + _WRITE_BATCH]))

    def ids(self) -> list[str]:
        out: list[str] = []
        offset, page = 0, 10_000
        while True:
            got = self._collection.get(include=[], limit=page, offset=offset)["ids"]
            out.extend(got)
            if len(got) < page:
                return out
            offset += page

    def contents(self) -> list[tuple[StoredChunk, list[float]]]:
        """Every chunk with its stored embedding, in pages (the corpus report reads the whole store)."""
        out: list[tuple[StoredChunk, list[float]]] = []
        offset = 0
        while True:
            got = self._collection.get(include=["documents", "metadatas", "embeddings"], limit=GET_PAGE, offset=offset)
            for i, t, m, e in zip(got["ids"], got["documents"], got["metadatas"], got["embeddings"], strict=True):
                out.append((StoredChunk(id=i, text=t or "", metadata=dict(m or {})), [float(x) for x in e]))
            if len(got["ids"]) < GET_PAGE:
                return out
            offset += GET_PAGE

    def get(self, ids: Sequence[str], *, vectors: bool = False) -> list[StoredChunk]:
        if not ids:
            return []
        out: list[StoredChunk] = []
        wanted = list(ids)
        include = ["documents", "metadatas", *(["embeddings"] if vectors else [])]
        # SQLite refuses a statement with more than 32,766 variables: read in pages.
        for start in range(0, len(wanted), GET_PAGE):
            got = self._collection.get(ids=wanted[start : start + GET_PAGE], include=include)
            found = got["embeddings"] if vectors else [None] * len(got["ids"])
            out.extend(
                StoredChunk(
                    id=i,
                    text=t or "",
                    metadata=dict(m or {}),
                    vector_sha256=vector_sha256(e) if e is not None else None,
                )
                for i, t, m, e in zip(got["ids"], got["documents"], got["metadatas"], found, strict=True)
            )
        return out

    def where(self, where: dict[str, Any]) -> list[StoredChunk]:
        got = self._collection.get(where=where, include=["documents", "metadatas"])
        return [
            StoredChunk(id=i, text=t or "", metadata=dict(m or {}))
            for i, t, m in zip(got["ids"], got["documents"], got["metadatas"], strict=True)
        ]

    def query(
        self, embedding: Sequence[float], k: int, where: dict[str, Any] | None = None, *, content: bool = True
    ) -> list[StoredChunk]:
        got = self._collection.query(
            query_embeddings=[list(embedding)],
            n_results=k,
            where=where,
            include=["documents", "metadatas", "distances"] if content else ["distances"],
        )
        ids, distances = got["ids"][0], got["distances"][0]
        texts = got["documents"][0] if content else [""] * len(ids)
        metadatas = got["metadatas"][0] if content else [{}] * len(ids)
        return [
            StoredChunk(id=i, text=t or "", metadata=dict(m or {}), score=1.0 - float(d))
            for i, t, m, d in zip(ids, texts, metadatas, distances, strict=True)
        ]

    def count(self) -> int:
        return int(self._collection.count())
