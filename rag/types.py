"""Frozen domain values passed between the parts of the stack."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

AnswerMode = Literal["extract", "free", "quote"]


@dataclass(frozen=True)
class Chunk:
    """One piece of a verified document, ready to embed; `metadata` is what the store keeps."""

    id: str
    doc_id: str
    index: int
    text: str
    sha256: str
    heading_path: str
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class StoredChunk:
    """A chunk as read back from a vector store."""

    id: str
    text: str
    metadata: dict[str, Any]
    score: float = 0.0
    # sha256 of the stored vector (`rag.stores.vector_sha256`), when the store was asked for it.
    vector_sha256: str | None = None


@dataclass(frozen=True)
class Generation:
    """What a generator returns: one line of text and what it cost."""

    text: str
    tokens: int
    seconds: float
    prompt_tokens: int
