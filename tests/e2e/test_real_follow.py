"""The running service follows the ledger: another process ingests, replaces and removes while it answers."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from ingest.ledger import Ledger
from rag.settings import Settings
from rag.wiring import build_answer_service, build_embedder, build_ingestor
from tests.conftest import REPO, Curator, pydoc_text
from tests.ingest.test_commitments import FirstSentenceGenerator

pytestmark = pytest.mark.slow


def rag(*args: str) -> None:
    """Run the `rag` command in another process, as a curator would while the service runs."""
    cmd = [sys.executable, "-c", "from rag.cli import main; main()", *args]
    done = subprocess.run(cmd, cwd=REPO, env=dict(os.environ), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]


def test_ingest_replace_and_remove_in_another_process_show_in_the_next_answer(
    settings: Settings, tmp_path: Path, curator: Curator
) -> None:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for topic in ("pass", "assert"):
        (corpus / f"{topic}.md").write_text(pydoc_text(topic), encoding="utf-8")
        curator.sign(corpus / f"{topic}.md", title=topic)
    embedder = build_embedder(settings, serving=True)
    build_ingestor(settings, embedder).ingest([corpus])
    service = build_answer_service(settings, embedder=embedder, generator=FirstSentenceGenerator())
    service.retriever.warm_up()

    def docs(question: str) -> set[str]:
        result = service.answer(question)
        return {str(r["doc_id"]) for r in result.retrieved} | {c.doc_id for c in result.citations}

    loop = "What does the while statement do? It repeats execution as long as an expression is true."
    assert "while.md" not in docs(loop)

    # Added by another process: seen by the very next answer (no restart).
    (corpus / "while.md").write_text(pydoc_text("while"), encoding="utf-8")
    curator.sign(corpus / "while.md", title="while")
    rag("ingest", str(corpus))
    result = service.answer(loop)
    assert result.retrieved[0]["doc_id"] == "while.md" and not result.abstained
    assert {c.doc_id for c in result.citations} == {"while.md"}

    # Replaced by another process: only the new version's chunks can be retrieved or cited.
    old = Ledger(settings.ledger_path).live()["pass.md"].sha256
    (corpus / "pass.md").write_text(
        pydoc_text("pass") + "\nThe keepers of the lighthouse were paid 55 shillings a week in 1901.\n",
        encoding="utf-8",
    )
    curator.sign(corpus / "pass.md", title="pass")
    rag("ingest", str(corpus))
    new = Ledger(settings.ledger_path).live()["pass.md"].sha256
    result = service.answer("How many shillings a week were the keepers of the lighthouse paid in 1901?")
    chunk_ids = [str(r["chunk_id"]) for r in result.retrieved] + [c.chunk_id for c in result.citations]
    assert f"pass.md@{new[:16]}#" in " ".join(chunk_ids)
    assert not any(f"@{old[:16]}#" in i for i in chunk_ids)

    # Removed by another process: gone from the next answer.
    rag("remove", "while.md")
    assert "while.md" not in docs(loop)
