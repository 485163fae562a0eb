"""Shared by the tests of issue 13's HTTP parts: a service over real Chroma (fake embedder and generator) that
a signed corpus was ingested into, and helpers that sign documents and upload them."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from fastapi import FastAPI

from api.app import create_app
from ingest.pipeline import Ingestor
from rag.settings import Settings
from rag.types import AnswerMode
from rag.wiring import build_answer_service, build_store
from tests.conftest import Curator, pydoc_text
from tests.fakes import FakeEmbedder, FakeGenerator

# A sentence of the pydoc topic "while" (human text, Python documentation authors), which the corpus fixture
# (assert, pass, del) does not hold: it is supported only once while.md is in the store.
WHILE_SENTENCE = "The while statement is used for repeated execution as long as an expression is true."
WHILE_QUESTION = "What is the while statement used for?"


class CountingGenerator(FakeGenerator):
    """The scripted answer, reporting how many tokens (words) it generated, as the local generator does."""

    last_tokens = 0

    def stream(
        self,
        question: str,
        passages: Sequence[str] | None,
        *,
        mode: AnswerMode = "free",
        max_new_tokens: int | None = None,
    ) -> Iterator[str]:
        words = list(super().stream(question, passages, mode=mode, max_new_tokens=max_new_tokens))
        self.last_tokens = len(words)
        yield from words


def curation_app(settings: Settings, corpus: Path, *, anonymous: bool = True) -> FastAPI:
    """The app `rag serve` builds, over real Chroma holding the signed corpus; the generator always says
    WHILE_SENTENCE, which the groundedness check releases only when a passage supports it."""
    settings.answer.relevance_threshold = 0.05  # the hashing fake embedder gives low cosines
    settings.watermark.detect = False  # the watermark check loads two models' tokenizers; its own tests cover it
    settings.server.max_upload_bytes = 64 * 1024
    Ingestor(settings, build_store(settings), FakeEmbedder()).ingest([corpus])
    service = build_answer_service(settings, embedder=FakeEmbedder(), generator=CountingGenerator(WHILE_SENTENCE))
    return create_app(settings, service, anonymous=anonymous)


def signed(curator: Curator, folder: Path, name: str, text: str | None = None, **kw: Any) -> tuple[bytes, bytes]:
    """A document `name` (a pydoc topic's text unless `text`) signed by `curator`; (its bytes, its manifest's)."""
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text if text is not None else pydoc_text(Path(name).stem), encoding="utf-8")
    manifest = curator.sign(path, root=folder, title=Path(name).stem, **kw)
    return path.read_bytes(), manifest.read_bytes()


def upload_files(name: str, document: bytes, manifest: bytes) -> dict[str, tuple[str, bytes, str]]:
    return {
        "document": (Path(name).name, document, "text/markdown"),
        "manifest": (Path(name).name + ".prov.json", manifest, "application/json"),
    }
