"""The hash-chained ledger catches edits, drops and reorderings, and survives a torn write."""

from __future__ import annotations

import json
from pathlib import Path

from ingest.ledger import Ledger


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
