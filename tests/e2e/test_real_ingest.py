"""Ingest with the real embedder and real Chroma (embedded and client/server), and a real kill."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from ingest.ledger import Ledger
from ingest.pipeline import Ingestor, parse_chunk_id
from ingest.pydoc_import import import_pydoc
from rag.settings import Settings
from rag.stores import ChromaStore
from rag.wiring import build_embedder, build_ingestor, build_store
from tests.conftest import REPO, Curator, pydoc_text

pytestmark = pytest.mark.slow


@pytest.fixture
def pydoc_corpus(tmp_path: Path, curator: Curator) -> Path:
    out = tmp_path / "pydoc"
    import_pydoc(out, curator.key_path)
    return out


def assert_consistent(settings: Settings, store: ChromaStore) -> None:
    live = Ledger(settings.ledger_path).live()
    ids = store.ids()
    assert len(ids) == len(set(ids)), "duplicate chunk ids"
    assert len(ids) == sum(doc.chunks for doc in live.values())
    per_doc = Counter(parse_chunk_id(i)[0] for i in ids)  # type: ignore[index]
    assert per_doc == Counter({d.doc_id: d.chunks for d in live.values()})
    assert Ledger(settings.ledger_path).verify().ok


def test_default_corpus_ingests_idempotently_and_retrieves(
    settings: Settings, pydoc_corpus: Path, curator: Curator
) -> None:
    ingestor = build_ingestor(settings)
    first = ingestor.ingest([pydoc_corpus])
    assert not first.rejected and len(first.accepted) >= 78 and first.chunks > 400
    store = build_store(settings)
    assert_consistent(settings, store)

    second = build_ingestor(settings).ingest([pydoc_corpus])
    assert second.chunks == 0 and len(second.unchanged) == len(first.accepted)

    embedder = build_embedder(settings)
    hits = store.query(embedder.embed(["What does the assert statement do when debugging is on?"])[0], 3)
    assert hits[0].metadata["doc_id"] == "assert.md"
    assert hits[0].metadata["signer_keyid"] == curator.entry.keyid

    doc = pydoc_corpus / "pass.md"
    doc.write_text(pydoc_text("pass") + "\n(annotated by the curator)\n")
    curator.sign(doc, root=pydoc_corpus)
    third = build_ingestor(settings).ingest([pydoc_corpus])
    assert [r["doc_id"] for r in third.replaced] == ["pass.md"]
    build_ingestor(settings).remove("del.md")
    assert_consistent(settings, store)
    assert not store.where({"doc_id": "del.md"})


def _ledger_lines(settings: Settings) -> int:
    return len(settings.ledger_path.read_bytes().splitlines()) if settings.ledger_path.exists() else 0


@pytest.mark.parametrize("kill_after_entries", [0, 5])
def test_kill_mid_ingest_then_rerun_converges(
    settings: Settings, pydoc_corpus: Path, kill_after_entries: int, tmp_path: Path
) -> None:
    env = {**os.environ, "RAG_INGEST__FLUSH_CHUNKS": "24"}
    cmd = [sys.executable, "-c", "from rag.cli import main; main()", "ingest", str(pydoc_corpus), "--json"]
    proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    chroma_dir = settings.chroma_path
    while time.monotonic() < deadline and proc.poll() is None:
        written = chroma_dir.exists() and any(chroma_dir.rglob("*.bin"))
        if _ledger_lines(settings) > kill_after_entries or (kill_after_entries == 0 and written):
            break
        time.sleep(0.02)
    assert proc.poll() is None, "ingest finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = _ledger_lines(settings)
    assert killed_at < 78

    rerun = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr
    assert_consistent(settings, build_store(settings))
    assert len(Ledger(settings.ledger_path).live()) == 78
    again = build_ingestor(settings).ingest([pydoc_corpus])
    assert again.chunks == 0 and again.repaired_chunks == 0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_ingest_into_a_chroma_server(settings: Settings, corpus: Path, tmp_path: Path) -> None:
    import httpx

    port = _free_port()
    chroma = Path(sys.executable).with_name("chroma")
    server = subprocess.Popen(
        [str(chroma), "run", "--path", str(tmp_path / "server"), "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/api/v2/heartbeat", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        else:
            pytest.fail("chroma server did not start")
        settings.store.url = f"http://127.0.0.1:{port}"
        report = Ingestor(settings, build_store(settings), build_embedder(settings)).ingest([corpus])
        assert len(report.accepted) == 3
        remote = ChromaStore.open(url=settings.store.url, collection=settings.store.collection)
        assert remote.count() == report.chunks > 0
        assert not (settings.data_dir / "chroma").exists()  # nothing went to the embedded store
        assert_consistent(settings, remote)
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_hybrid_retrieval_over_the_real_default_corpus(settings: Settings, pydoc_corpus: Path) -> None:
    from rag.wiring import build_retriever

    embedder = build_embedder(settings)
    build_ingestor(settings, embedder).ingest([pydoc_corpus])
    retriever = build_retriever(settings, embedder)
    assert retriever.lexical.head == Ledger(settings.ledger_path).head()  # built by ingest, reused here
    expectations = {
        "What happens when a break statement runs inside a loop?": "break.md",
        "How do I write a lambda expression?": "lambda.md",
        "What does the pass statement do when it is executed?": "pass.md",
    }
    for question, doc_id in expectations.items():
        hits = retriever.retrieve(question, top_k=4)
        assert doc_id in [h.chunk.metadata["doc_id"] for h in hits], (question, [h.chunk.id for h in hits])


def test_query_path_embeds_exactly_like_the_batch_path(settings: Settings) -> None:
    embedder = build_embedder(settings)
    texts = ["What does the pass statement do?", "A longer sentence about loops, break and continue statements."]
    one_by_one = [embedder.embed([t])[0] for t in texts]  # a batch each, as a query
    embedder.batch_size = 1
    batched = embedder.embed(texts)  # encode(): two batches of one
    for a, b in zip(one_by_one, batched, strict=True):
        assert sum(x * y for x, y in zip(a, b, strict=True)) > 0.9999
        assert abs(sum(x * x for x in a) - 1.0) < 1e-5
