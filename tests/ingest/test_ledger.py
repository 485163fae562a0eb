"""The hash-chained ledger catches edits, drops and reorderings, survives a torn write, and is never lost silently."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from chromadb.api.shared_system_client import SharedSystemClient
from typer.testing import CliRunner

from ingest.ledger import Ledger
from ingest.ledger_head import LedgerKey
from rag.cli import app
from rag.errors import LedgerError
from rag.settings import Settings
from rag.wiring import build_store
from tests.ingest.test_commitments import ingestor, verify_cli


def filled(tmp_path: Path, n: int = 4) -> Ledger:
    ledger = Ledger(tmp_path / "ledger.jsonl")
    for i in range(n):
        ledger.append(
            {"action": "add", "doc_id": f"d{i}", "sha256": f"{i:064d}", "chunks": 1, "chars": 10, "origin": "human"}
        )
    return ledger


def rewrite(ledger: Ledger, lines: list[str]) -> None:
    ledger.path.write_text("".join(lines))


def test_intact_ledger_verifies(tmp_path: Path) -> None:
    report = filled(tmp_path).verify()
    assert report.ok and report.entries == 4


def test_edited_entry_is_caught(tmp_path: Path) -> None:
    ledger = filled(tmp_path)
    lines = ledger.path.read_text().splitlines(keepends=True)
    entry = json.loads(lines[1])
    entry["doc_id"] = "forged"
    lines[1] = json.dumps(entry) + "\n"
    rewrite(ledger, lines)
    report = Ledger(ledger.path).verify()
    assert not report.ok and any("edited" in p for p in report.problems)


def test_dropped_middle_entry_is_caught(tmp_path: Path) -> None:
    ledger = filled(tmp_path)
    lines = ledger.path.read_text().splitlines(keepends=True)
    rewrite(ledger, lines[:1] + lines[2:])
    assert not Ledger(ledger.path).verify().ok


def test_dropped_last_entry_is_caught_by_the_head(tmp_path: Path) -> None:
    ledger = filled(tmp_path)
    lines = ledger.path.read_text().splitlines(keepends=True)
    rewrite(ledger, lines[:-1])
    report = Ledger(ledger.path).verify()
    assert not report.ok and any("head" in p for p in report.problems)


def test_reordered_entries_are_caught(tmp_path: Path) -> None:
    ledger = filled(tmp_path)
    lines = ledger.path.read_text().splitlines(keepends=True)
    lines[1], lines[2] = lines[2], lines[1]
    rewrite(ledger, lines)
    assert not Ledger(ledger.path).verify().ok


def test_torn_final_write_is_ignored_then_repaired(tmp_path: Path) -> None:
    ledger = filled(tmp_path, 2)
    with ledger.path.open("ab") as handle:
        handle.write(b'{"index": 2, "acti')
    fresh = Ledger(ledger.path)
    assert len(list(fresh.entries())) == 2
    assert fresh.repair_torn_tail()
    assert fresh.verify().ok
    fresh.append({"action": "remove", "doc_id": "d0", "sha256": "0" * 64})
    assert Ledger(ledger.path).verify().ok
    assert set(Ledger(ledger.path).live()) == {"d1"}


def test_live_view_replays_add_replace_remove(tmp_path: Path) -> None:
    ledger = filled(tmp_path, 3)
    ledger.append(
        {"action": "replace", "doc_id": "d1", "sha256": "f" * 64, "chunks": 2, "chars": 20, "origin": "human"}
    )
    ledger.append({"action": "remove", "doc_id": "d0", "sha256": "0" * 64})
    live = ledger.live()
    assert set(live) == {"d1", "d2"} and live["d1"].sha256 == "f" * 64


# --- the signed head: never a first run by accident, migrated only on request (real Chroma) -------------


def test_a_deleted_head_after_a_data_dir_move_refuses_and_deletes_nothing(
    settings: Settings, corpus: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ingestor(settings).ingest([corpus])
    moved = tmp_path / "moved"
    shutil.copytree(settings.data_dir, moved)
    SharedSystemClient.clear_system_cache()
    monkeypatch.setenv("RAG_DATA_DIR", str(moved))
    there = Settings()
    held = build_store(there).count()
    ledger_bytes = there.ledger_path.read_bytes()
    Ledger(there.ledger_path).head_path.unlink()  # the key remembers no head for the new path

    with pytest.raises(LedgerError) as refused:
        ingestor(there).ingest([corpus])
    assert refused.value.code == "ledger_corrupt" and "rag ledger reset --yes" in refused.value.message
    assert there.ledger_path.read_bytes() == ledger_bytes and build_store(there).count() == held

    # The operator vouches for it explicitly; then ingest goes on as before.
    signed = CliRunner().invoke(app, ["ledger", "sign-head"])
    assert signed.exit_code == 0, signed.output
    assert not ingestor(there).ingest([corpus]).accepted and verify_cli()[0] == 0


def test_ledger_reset_says_what_it_destroys_and_needs_yes(settings: Settings, corpus: Path) -> None:
    ingestor(settings).ingest([corpus])
    asked = CliRunner().invoke(app, ["ledger", "reset"], terminal_width=300)
    assert asked.exit_code == 2 and "[confirmation_required]" in asked.output
    assert "every chunk in the store" in asked.output
    held = build_store(settings).count()
    assert settings.ledger_path.exists() and held
    done = CliRunner().invoke(app, ["ledger", "reset", "--yes"], terminal_width=300)
    assert done.exit_code == 0 and f"deleted 3 ledger entries and {held} stored chunks" in done.output
    assert not settings.ledger_path.exists() and build_store(settings).count() == 0
    assert len(ingestor(settings).ingest([corpus]).accepted) == 3 and verify_cli()[0] == 0


def test_a_new_ledger_starts_with_a_signed_genesis_head(settings: Settings, corpus: Path) -> None:
    keyed = Ledger(settings.ledger_path, LedgerKey(settings.ledger_key_path))
    keyed.check_before_append()
    assert keyed.read_head_file()["index"] == -1 and keyed.verify().ok
    # A kill between the first append and its head leaves an entry after the genesis head: cut, never the ledger.
    genesis = keyed.head_path.read_bytes()
    Ledger(settings.ledger_path).append({"action": "remove", "doc_id": "x", "sha256": "0" * 64})
    keyed.head_path.write_bytes(genesis)
    assert len(ingestor(settings).ingest([corpus]).accepted) == 3
    assert [e["action"] for e in keyed.entries()] == ["add", "add", "add"] and verify_cli()[0] == 0


def test_a_ledger_from_before_signed_heads_is_migrated_only_by_sign_head(settings: Settings, corpus: Path) -> None:
    old = ingestor(settings)
    old.ledger = Ledger(settings.ledger_path)  # as the release before signed heads wrote it
    old.ingest([corpus])
    assert not settings.ledger_key_path.exists()
    for _ in range(2):
        with pytest.raises(LedgerError) as refused:
            ingestor(settings).ingest([corpus])
        assert refused.value.code == "ledger_corrupt" and "rag ledger sign-head" in refused.value.message
    assert not settings.ledger_key_path.exists()  # no key is made behind the operator's back

    signed = CliRunner().invoke(app, ["ledger", "sign-head"], terminal_width=300)
    assert signed.exit_code == 0 and "signed the ledger head at entry 3" in signed.output
    assert settings.ledger_key_path.exists() and settings.ledger_key_path.with_suffix(".pub").exists()
    assert verify_cli()[0] == 0 and not ingestor(settings).ingest([corpus]).accepted
    again = CliRunner().invoke(app, ["ledger", "sign-head"])
    assert again.exit_code == 0 and "nothing to do" in again.output


def test_sign_head_refuses_a_broken_chain(settings: Settings, corpus: Path) -> None:
    old = ingestor(settings)
    old.ledger = Ledger(settings.ledger_path)
    old.ingest([corpus])
    lines = settings.ledger_path.read_text().splitlines(keepends=True)
    settings.ledger_path.write_text(lines[0] + lines[2])  # a dropped entry
    signed = CliRunner().invoke(app, ["ledger", "sign-head"])
    assert signed.exit_code == 2 and "[ledger_corrupt]" in signed.output and "Not signing" in signed.output
    assert not settings.ledger_key_path.exists()
