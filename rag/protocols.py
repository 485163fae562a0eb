"""The pluggable parts of the stack; implementations are chosen in `rag.wiring`."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, Protocol, runtime_checkable

from rag.types import AnswerMode, Chunk, Generation, StoredChunk


@runtime_checkable
class Embedder(Protocol):
    dimension: int

    @property
    def model_id(self) -> str:
        """Names the model and how it runs; recorded with the collection its vectors go into."""
        ...

    def warm_up(self) -> None: ...

    def embed(self, texts: Sequence[str]) -> list[list[float]]: ...


@runtime_checkable
class VectorStore(Protocol):
    def upsert(self, chunks: Sequence[Chunk], embeddings: Sequence[Sequence[float]]) -> None: ...

    def delete(self, ids: Sequence[str]) -> None: ...

    def ids(self) -> list[str]: ...

    def get(self, ids: Sequence[str], *, vectors: bool = False) -> list[StoredChunk]:
        """The chunks with these ids (those the store holds); with `vectors`, each carries its stored
        vector's `vector_sha256`, which the ledger commits."""
        ...

    def query(
        self, embedding: Sequence[float], k: int, where: dict[str, Any] | None = None, *, content: bool = True
    ) -> list[StoredChunk]:
        """Nearest chunks, best first; with `content=False` only ids and scores are filled in."""
        ...

    def count(self) -> int: ...

    def contents(self) -> list[tuple[StoredChunk, list[float]]]:
        """Every chunk with its stored vector (the corpus report reads the whole store)."""
        ...


@runtime_checkable
class Generator(Protocol):
    """Writes one short answer from numbered passages (or none: the ungrounded evaluation mode)."""

    watermarked: bool

    @property
    def model_id(self) -> str: ...

    def warm_up(self) -> None: ...

    def generate(
        self,
        question: str,
        passages: Sequence[str] | None,
        *,
        mode: AnswerMode = "free",
        max_new_tokens: int | None = None,
    ) -> Generation: ...

    def stream(
        self,
        question: str,
        passages: Sequence[str] | None,
        *,
        mode: AnswerMode = "free",
        max_new_tokens: int | None = None,
    ) -> Iterator[str]: ...
