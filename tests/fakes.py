"""Fakes for fast unit tests: real classes implementing the protocols, never MagicMock."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator, Sequence
from typing import Any

from rag.stores import vector_sha256
from rag.types import AnswerMode, Chunk, Generation, StoredChunk


class FakeEmbedder:
    """Deterministic bag-of-words hashing vectors: similar texts get similar vectors."""

    dimension = 64
    model_id = "fake-hashed-words"

    def __init__(self) -> None:
        self.calls: list[list[str]] = []
        self.fail_after: int | None = None

    def warm_up(self) -> None:
        pass

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        if self.fail_after is not None and len(self.calls) >= self.fail_after:
            raise RuntimeError("embedder crashed")
        self.calls.append(list(texts))
        out = []
        for text in texts:
            vec = [0.0] * self.dimension
            for word in text.lower().split():
                vec[int(hashlib.md5(word.encode()).hexdigest(), 16) % self.dimension] += 1.0
            norm = math.sqrt(sum(v * v for v in vec)) or 1.0
            out.append([v / norm for v in vec])
        return out

    @property
    def embedded_texts(self) -> int:
        return sum(len(c) for c in self.calls)


class InMemoryStore:
    """A vector store in a dict, with the same contract as ChromaStore."""

    def __init__(self) -> None:
        self.rows: dict[str, tuple[Chunk, list[float]]] = {}

    def upsert(self, chunks: Sequence[Chunk], embeddings: Sequence[Sequence[float]]) -> None:
        for chunk, emb in zip(chunks, embeddings, strict=True):
            self.rows[chunk.id] = (chunk, list(emb))

    def delete(self, ids: Sequence[str]) -> None:
        for i in ids:
            self.rows.pop(i, None)

    def ids(self) -> list[str]:
        return list(self.rows)

    def contents(self) -> list[tuple[StoredChunk, list[float]]]:
        return [(StoredChunk(i, c.text, dict(c.metadata)), list(e)) for i, (c, e) in self.rows.items()]

    def get(self, ids: Sequence[str], *, vectors: bool = False) -> list[StoredChunk]:
        return [
            StoredChunk(
                i,
                self.rows[i][0].text,
                dict(self.rows[i][0].metadata),
                vector_sha256=vector_sha256(self.rows[i][1]) if vectors else None,
            )
            for i in ids
            if i in self.rows
        ]

    def query(
        self, embedding: Sequence[float], k: int, where: dict[str, Any] | None = None, *, content: bool = True
    ) -> list[StoredChunk]:
        scored = []
        for chunk, emb in self.rows.values():
            if where and any(chunk.metadata.get(key) != value for key, value in where.items()):
                continue
            scored.append(
                StoredChunk(
                    chunk.id,
                    chunk.text if content else "",
                    dict(chunk.metadata) if content else {},
                    sum(a * b for a, b in zip(embedding, emb, strict=True)),
                )
            )
        return sorted(scored, key=lambda c: -c.score)[:k]

    def count(self) -> int:
        return len(self.rows)


class FakeGenerator:
    """Returns a scripted answer, streamed word by word; records what it was asked."""

    watermarked = True
    model_id = "fake-generator"

    def __init__(self, text: str) -> None:
        self.text = text
        self.calls: list[tuple[str, list[str] | None, str]] = []

    def warm_up(self) -> None:
        pass

    def stream(
        self,
        question: str,
        passages: Sequence[str] | None,
        *,
        mode: AnswerMode = "free",
        max_new_tokens: int | None = None,
    ) -> Iterator[str]:
        self.calls.append((question, None if passages is None else list(passages), mode))
        for i, word in enumerate(self.text.split(" ")):
            yield word if i == 0 else " " + word

    def generate(
        self,
        question: str,
        passages: Sequence[str] | None,
        *,
        mode: AnswerMode = "free",
        max_new_tokens: int | None = None,
    ) -> Generation:
        text = "".join(self.stream(question, passages, mode=mode))
        return Generation(text=text, tokens=len(text.split()), seconds=0.01, prompt_tokens=10)
