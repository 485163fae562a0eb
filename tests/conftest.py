from __future__ import annotations

import os
from pathlib import Path

import pytest

from ingest.pipeline import Ingestor
from ingest.provenance import sign_document
from ingest.trust import add_trusted_key, load_private_key, write_key_pair
from rag.settings import Settings
from tests.fakes import FakeEmbedder, InMemoryStore

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")
# The zero-shot detector scores each ingested document with Gemma (2-7 s a document on 2 cores). Tests
# about anything else ingest with it off, or the suite would not fit CI's time; the detector's own tests
# (tests/guardrails/test_detector.py) set the policy they test, and `bash run.sh` runs with the default.
os.environ.setdefault("RAG_DETECTOR__POLICY", "off")

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _isolated_data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test gets its own data dir; nothing touches the developer's .rag/."""
    monkeypatch.setenv("RAG_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("RAG_TRUST_PATH", str(tmp_path / "trust.json"))
    monkeypatch.setenv("RAG_LEDGER_KEY_PATH", str(tmp_path / "ledger-key" / "ledger.key"))


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings()


class Curator:
    """A test curator: a key pair trusted in the test trust store, and a helper to sign."""

    def __init__(self, tmp_path: Path, trust: Path, name: str = "test-curator") -> None:
        self.key_path, public = write_key_pair(name, tmp_path / "keys")
        self.entry = add_trusted_key(trust, name, public)
        self.key = load_private_key(self.key_path)
        self.name = name

    def sign(self, document: Path, *, origin: str = "human", root: Path | None = None, **extra: object) -> Path:
        kwargs: dict[str, object] = {"authors": ["Python documentation authors"], "license": "PSF-2.0"}
        kwargs.update(extra)
        return sign_document(document, self.key, root=root, origin=origin, curator=self.name, **kwargs)  # type: ignore[arg-type]


@pytest.fixture
def curator(tmp_path: Path, settings: Settings) -> Curator:
    return Curator(tmp_path, settings.trust_path)


def pydoc_text(topic: str) -> str:
    """Human-written text (the Python documentation authors'), so signing it as `human` is honest."""
    from pydoc_data.topics import topics

    return str(topics[topic])


@pytest.fixture
def corpus(tmp_path: Path, curator: Curator) -> Path:
    """A small signed corpus of real human-written documentation (three pydoc topics)."""
    root = tmp_path / "corpus"
    root.mkdir()
    for topic in ("assert", "pass", "del"):
        doc = root / f"{topic}.md"
        doc.write_text(pydoc_text(topic), encoding="utf-8")
        curator.sign(doc, title=topic)
    return root


@pytest.fixture
def store(settings: Settings, corpus: Path) -> InMemoryStore:
    """The small signed corpus ingested by the real ingestor into an in-memory store, with the fake embedder."""
    store = InMemoryStore()
    Ingestor(settings, store, FakeEmbedder()).ingest([corpus])
    return store


@pytest.fixture
def lenient(settings: Settings) -> Settings:
    settings.answer.relevance_threshold = 0.05  # the hashing fake embedder gives low cosines
    settings.answer.min_answer_similarity = -1.0  # ... also between a question and its answer sentence
    return settings
