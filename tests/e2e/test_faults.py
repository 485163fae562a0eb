"""Faults with real processes (issue 17): `kill -9` of `rag ingest` at 20 seeded points, of the server in the
middle of a streamed answer, and of the Chroma server during an ingest into it.

The ingest runs here check provenance as usual but without the two content checks that load language models
(the synthetic-text score and the watermark detector: ~10 s per process before the first document, 2-7 s a
document): what is under test is what a kill leaves in the store and the ledger, and those checks write nothing.
The embedder and Chroma are the real ones."""

from __future__ import annotations

import fcntl
import hashlib
import json
import random
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from ingest.ledger import Ledger
from ingest.ledger_admin import check
from ingest.pipeline import parse_chunk_id
from rag.settings import Settings
from rag.stores import ChromaStore
from rag.wiring import build_embedder, build_ingestor, build_store
from tests.conftest import REPO, Curator, pydoc_text

pytestmark = pytest.mark.slow

RAG = [sys.executable, "-c", "from rag.cli import main; main()"]
FAST_INGEST = {"RAG_DETECTOR__POLICY": "off", "RAG_WATERMARK__DETECT": "false", "RAG_INGEST__FLUSH_CHUNKS": "8"}
DOCUMENTS = 200
KILLS = 20


@pytest.fixture
def fast(monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Settings (and the environment of every `rag` process started here) for quick ingests."""
    for name, value in FAST_INGEST.items():
        monkeypatch.setenv(name, value)
    return Settings()


def paragraphs(count: int) -> list[str]:
    """`count` distinct paragraphs of the Python Language Reference topics (human-written, short: quick to embed)."""
    from pydoc_data.topics import topics

    seen: dict[str, None] = {}
    for name in sorted(topics):
        for part in pydoc_text(name).split("\n\n"):
            text = part.strip()
            if 200 <= len(text) <= 700 and text.count(" ") > 30:
                seen.setdefault(text, None)
    found = list(seen)
    assert len(found) >= count, f"only {len(found)} paragraphs"
    return found[:count]


def write_documents(root: Path, curator: Curator, texts: list[str], revisions: dict[int, int]) -> dict[str, str]:
    """Write and sign document n for each n: revision in `revisions` (a revision after 0 adds a curator's note,
    so the document changes); returns those documents' sha256 by id."""
    root.mkdir(exist_ok=True)
    digests = {}
    for n, revision in revisions.items():
        body = texts[n] + (f"\n\n(Curator's revision {revision}.)" if revision else "") + "\n"
        doc = root / f"p{n:03d}.md"
        doc.write_text(body, encoding="utf-8")
        curator.sign(doc, root=root, title=f"paragraph {n}")
        digests[doc.name] = hashlib.sha256(body.encode()).hexdigest()
    return digests


def ledger_lines(settings: Settings) -> int:
    path = settings.ledger_path
    return path.read_bytes().count(b"\n") if path.exists() else 0


def ingest_running(settings: Settings) -> bool:
    """Whether some process holds the ingest lock (a run is past its start-up, inside `Ingestor.ingest`)."""
    path = settings.data_dir / "ingest.lock"
    if not path.exists():
        return False
    with path.open("a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(handle, fcntl.LOCK_UN)
        return False


def wait_for(condition: Callable[[], bool], proc: subprocess.Popen[Any], limit: float = 120) -> None:
    deadline = time.monotonic() + limit
    while not condition():
        if proc.poll() is not None or time.monotonic() > deadline:
            return
        time.sleep(0.005)


def assert_store_is_what_the_ledger_implies(settings: Settings, store: ChromaStore, digests: dict[str, str]) -> None:
    """No duplicate, no orphan, nothing missing, every document at its current version; `rag ledger verify`'s
    check (chain, signed head, and store against the ledger's commitments) passes."""
    live = Ledger(settings.ledger_path).live()
    assert {doc_id: doc.sha256 for doc_id, doc in live.items()} == digests
    ids = store.ids()
    assert len(ids) == len(set(ids)), "duplicate chunk ids"
    per_doc = Counter(parse_chunk_id(value)[0] for value in ids)  # type: ignore[index]
    assert per_doc == Counter({doc.doc_id: doc.chunks for doc in live.values()}), "orphans or missing chunks"
    verdict = check(settings, Ledger(settings.ledger_path), store)
    assert verdict.ok, verdict.problems


def run_rag(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*RAG, *args], cwd=REPO, capture_output=True, text=True, timeout=timeout)


# --- kill -9 of rag ingest ---------------------------------------------------------------------------------


def test_kill_9_of_rag_ingest_at_20_seeded_points_then_each_rerun_converges(
    fast: Settings, curator: Curator, tmp_path: Path
) -> None:
    """20 kill points over the 200-document corpus. Each round picks a seeded position and changes the 24
    documents around it (so a run, which walks the whole corpus in name order and skips unchanged documents by
    digest, replaces those), starts `rag ingest`, kills it with SIGKILL once it has written a seeded number of
    its ledger entries (sometimes a few ms later, to land inside a batch), then runs the ingest again: the store
    must then hold exactly what the ledger commits.

    The re-run is the library call `rag ingest` makes, in this process, so the embedder loads once."""
    settings, corpus = fast, tmp_path / "corpus"
    texts = paragraphs(DOCUMENTS)
    digests = write_documents(corpus, curator, texts, dict.fromkeys(range(DOCUMENTS), 0))
    embedder = build_embedder(settings)
    store = build_store(settings)
    build_ingestor(settings, embedder, store=store).ingest([corpus])
    rng = random.Random(17)
    rounds = []
    for revision in range(1, KILLS + 1):
        position = rng.randrange(DOCUMENTS)
        window = range(max(0, position - 8), min(DOCUMENTS, position + 16))
        digests.update(write_documents(corpus, curator, texts, dict.fromkeys(window, revision)))
        target = rng.randrange(0, len(window) - 8)  # entries written before the kill; a batch or more to go
        delay = rng.choice((0.0, rng.uniform(0.0, 0.05)))
        before = ledger_lines(settings)
        victim = subprocess.Popen(
            [*RAG, "ingest", str(corpus)], cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        wait_for(lambda: ingest_running(settings) and ledger_lines(settings) >= before + target, victim)  # noqa: B023
        time.sleep(delay)
        assert victim.poll() is None, f"round {revision}: the ingest ended before it could be killed"
        victim.send_signal(signal.SIGKILL)
        victim.wait()
        killed_at = window.start + ledger_lines(settings) - before  # the document it had reached

        store.reopen()  # what the killed process wrote
        report = build_ingestor(settings, embedder, store=store).ingest([corpus])
        assert not report.rejected
        assert_store_is_what_the_ledger_implies(settings, store, digests)
        rounds.append((killed_at, report.repaired_chunks))

    print("rounds (document reached when killed, chunks the re-run deleted):", rounds)
    assert len({at for at, _ in rounds}) >= 15, "the kills did not land at different points"
    # Some kills fell between a batch's chunks reaching Chroma and the entries that commit them (or before a
    # replaced version's chunks were deleted): the re-run found chunks the ledger does not commit and removed them.
    assert any(repaired for _, repaired in rounds)
    verified = run_rag("ledger", "verify")
    assert verified.returncode == 0, verified.stderr
    again = run_rag("ingest", str(corpus), "--json")
    assert again.returncode == 0, again.stderr
    summary = json.loads(again.stdout)
    assert summary["chunks"] == 0 and summary["repaired_chunks"] == 0


# --- kill -9 of the Chroma server during an ingest into it ---------------------------------------------------


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def chroma_server(path: Path, port: int) -> Iterator[subprocess.Popen[bytes]]:
    """`chroma run` (the venv's) on loopback, stopped on exit if still running."""
    binary = Path(sys.executable).with_name("chroma")
    command = [str(binary), "run", "--path", str(path), "--host", "127.0.0.1", "--port", str(port)]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/api/v2/heartbeat", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline and server.poll() is None, "chroma server did not start"
            time.sleep(0.2)
        yield server
    finally:
        if server.poll() is None:
            server.terminate()
            server.wait(30)


def test_chroma_server_killed_during_an_ingest_gives_one_coded_line_and_a_rerun_converges(
    fast: Settings, curator: Curator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    corpus = tmp_path / "corpus"
    digests = write_documents(corpus, curator, paragraphs(DOCUMENTS), dict.fromkeys(range(DOCUMENTS), 0))
    port = free_port()
    monkeypatch.setenv("RAG_STORE__URL", f"http://127.0.0.1:{port}")
    settings = Settings()
    with chroma_server(tmp_path / "chroma-server", port) as server:
        ingest = subprocess.Popen(
            [*RAG, "ingest", str(corpus)], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        wait_for(lambda: ledger_lines(settings) >= 24, ingest)  # a few batches are in
        assert ingest.poll() is None, "the ingest ended before the server could be killed"
        server.send_signal(signal.SIGKILL)
        server.wait()
        _, err = ingest.communicate(timeout=120)
    assert ingest.returncode in (1, 2)
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("error")]
    assert len(errors) == 1 and err.strip().splitlines()[-1] == errors[0], err
    assert re.fullmatch(
        rf"error \[backend_unavailable\] The Chroma server at http://127\.0\.0\.1:{port} stopped answering \(.+\); "
        r"retry once it is back \(an interrupted ingest converges when run again\)\.",
        errors[0],
    ), errors[0]
    committed = ledger_lines(settings)
    assert 24 <= committed < DOCUMENTS

    with chroma_server(tmp_path / "chroma-server", port):  # the same data, back on the same address
        rerun = run_rag("ingest", str(corpus), "--json")
        assert rerun.returncode == 0, rerun.stderr
        assert json.loads(rerun.stdout)["skipped_unchanged"] >= 24
        verified = run_rag("ledger", "verify")
        assert verified.returncode == 0, verified.stderr + verified.stdout
        remote = build_store(settings)
        assert_store_is_what_the_ledger_implies(settings, remote, digests)


# --- kill -9 of the server in the middle of a streamed answer ----------------------------------------------

STREAM_TOPICS = ("pass", "break", "continue", "assert", "del", "lambda", "while", "for", "return", "global")
STREAM_QUESTION = "What does the del statement do?"
# After the stream's first chunk, the answer is being retrieved and generated: reading ~500 prompt tokens and
# generating a sentence takes Gemma 3 270M well over a second on 2 cores, and no text leaves before its check.
KILL_AFTER_S = 0.2


@dataclass
class Streamed:
    deltas: list[str] = field(default_factory=list)
    done: bool = False
    cut: str | None = None  # the exception that ended the stream early, if one did


def stream_answer(url: str, on_start: Callable[[], None] = lambda: None) -> Streamed:
    """A streamed chat answer as a client reads it; `on_start` is called when the first chunk arrives."""
    body = {"messages": [{"role": "user", "content": STREAM_QUESTION}], "stream": True, "answer_mode": "free"}
    got = Streamed()
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=300) as response:
        assert response.status_code == 200
        started = False
        try:
            for line in response.iter_lines():
                if not line.startswith("data: "):
                    continue
                if line == "data: [DONE]":
                    got.done = True
                    continue
                event = json.loads(line.removeprefix("data: "))
                assert "error" not in event, event
                if not started:
                    started = True
                    on_start()
                if text := event["choices"][0]["delta"].get("content"):
                    got.deltas.append(text)
        except httpx.HTTPError as exc:
            got.cut = type(exc).__name__
    return got


@contextmanager
def rag_server(port: int, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """`rag serve` on loopback with the real default service, once ready; stopped on exit if still running."""
    with log.open("ab") as out:
        server = subprocess.Popen([*RAG, "serve", "--port", str(port)], cwd=REPO, stdout=out, stderr=out)
    try:
        deadline = time.monotonic() + 300
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline and server.poll() is None, log.read_text()[-3000:]
            time.sleep(0.3)
        yield server
    finally:
        if server.poll() is None:
            server.terminate()
            server.wait(30)


def test_kill_9_of_the_server_mid_stream_cuts_the_stream_and_a_restarted_server_serves(
    fast: Settings, curator: Curator, tmp_path: Path
) -> None:
    """The client sees the stream end without `[DONE]`, and nothing in it but text the service releases for that
    question (what a restarted server streams, up to the cut): no token of a sentence not yet checked. The
    reader's answers are one sentence, released whole once checked, so the kill lands while it is generated."""
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for topic in STREAM_TOPICS:
        doc = corpus / f"{topic}.md"
        doc.write_text(pydoc_text(topic), encoding="utf-8")
        curator.sign(doc, title=topic)
    assert not build_ingestor(fast).ingest([corpus]).rejected
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path / "server.log"

    with rag_server(port, log) as server:

        def kill_soon() -> None:
            time.sleep(KILL_AFTER_S)
            server.send_signal(signal.SIGKILL)

        cut = stream_answer(url, on_start=kill_soon)
        server.wait(30)
    assert server.returncode == -signal.SIGKILL
    assert cut.cut is not None and not cut.done, cut

    with rag_server(port, log):  # the same data dir and port
        whole = stream_answer(url)
        listing = httpx.get(f"{url}/v1/documents", timeout=30)
    assert whole.done and whole.cut is None
    assert listing.status_code == 200 and listing.json()["count"] == len(STREAM_TOPICS)
    # What the client got before the cut is what the service releases, from the start (killed this early: nothing).
    assert cut.deltas == whole.deltas[: len(cut.deltas)]
    # The answer had text to come: a checked sentence citing its passage, then the sources block.
    assert len(whole.deltas) >= 2 and re.search(r"\[\d\]", whole.deltas[0]) and "**Sources**" in whole.deltas[-1]
