"""The curator CLI as a user runs it: exit codes, readable errors, JSON output."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO, pydoc_text


def rag(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", "from rag.cli import main; main()", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**os.environ, "COLUMNS": "200"},
        timeout=120,
    )


def test_keys_sign_verify_round_trip(tmp_path: Path) -> None:
    trust = tmp_path / "trust.json"
    made = rag("keys", "new", "alice", "--out", str(tmp_path / "keys"), "--trust", str(trust))
    assert made.returncode == 0, made.stderr
    again = rag("keys", "new", "alice", "--out", str(tmp_path / "keys"))
    assert again.returncode == 2 and "key_exists" in again.stderr
    doc = tmp_path / "docs" / "pass.md"
    doc.parent.mkdir()
    doc.write_text(pydoc_text("pass"))
    signed = rag(
        "sign",
        str(doc),
        "--key",
        str(tmp_path / "keys" / "alice.key"),
        "--author",
        "Python documentation authors",
        "--license",
        "PSF-2.0",
        "--origin",
        "human",
    )
    assert signed.returncode == 0, signed.stderr
    ok = rag("verify", str(doc.parent), "--trust", str(trust), "--json")
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)[0]["verdict"] == "verified"
    doc.write_text(doc.read_text() + "x")
    bad = rag("verify", str(doc), "--trust", str(trust))
    assert bad.returncode == 1 and "digest_mismatch" in bad.stdout


def test_bad_input_gives_code_and_sentence(tmp_path: Path) -> None:
    missing = rag("verify", str(tmp_path / "nope"))
    assert missing.returncode == 2 and "[path_not_found]" in missing.stderr and "does not exist" in missing.stderr
    origin = rag(
        "sign", str(REPO / "pyproject.toml"), "--key", "k", "--author", "a", "--license", "x", "--origin", "robot"
    )
    assert origin.returncode == 2 and "--origin" in origin.stderr
    unknown = rag("remove", "no-such-doc")
    assert unknown.returncode == 2 and "unknown_document" in unknown.stderr


def test_ledger_verify_fails_on_tamper(tmp_path: Path, settings) -> None:  # type: ignore[no-untyped-def]
    from ingest.ledger import Ledger
    from ingest.ledger_head import LedgerKey

    ledger = Ledger(settings.ledger_path, LedgerKey(settings.ledger_key_path))  # heads are signed
    for i in range(3):
        ledger.append({"action": "reject", "doc_id": f"d{i}", "sha256": None, "reason": "missing_manifest"})
    assert rag("ledger", "verify").returncode == 0
    lines = settings.ledger_path.read_text().splitlines(keepends=True)
    settings.ledger_path.write_text(lines[0] + lines[2])
    broken = rag("ledger", "verify")
    assert broken.returncode == 1 and "chain" in broken.stdout


def test_ask_refuses_a_blank_question_with_a_code(tmp_path: Path) -> None:
    result = rag("ask", "   ")
    assert result.returncode == 2 and "empty_question" in result.stderr
