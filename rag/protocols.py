"""The pluggable parts of the stack; implementations are chosen in `rag.wiring`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

from rag.types import Chunk, StoredChunk


@runtime_checkable
class Embedder(Protocol):
    dimension: int

    def warm_up(self) -> None: ...

    def embed(self, texts: Sequence[str]) -> list[list[float]]: ...


@runtime_checkable
class VectorStore(Protocol):
    def upsert(self, chunks: Sequence[Chunk], embeddings: Sequence[Sequence[float]]) -> None: ...

    def delete(self, ids: Sequence[str]) -> None: ...

    def ids(self) -> list[str]: ...

    def get(self, ids: Sequence[str]) -> list[StoredChunk]: ...

    def query(self, embedding: Sequence[float], k: int, where: dict[str, Any] | None = None) -> list[StoredChunk]: ...

    def count(self) -> int: ...
