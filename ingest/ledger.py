"""Append-only, hash-chained JSONL ledger of what entered and left the knowledge base.

Each entry carries `prev` (the previous entry's hash) and `hash` (sha256 of its own RFC 8785
canonical form without `hash`). A side file records the head (index and hash), so dropping
entries at the end is caught too, not only edits and reorderings in the middle.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import rfc8785

from ingest.provenance import utc_now
from rag.errors import LedgerError

GENESIS = "0" * 64
LIVE_ACTIONS = ("add", "replace")


def entry_hash(entry: dict[str, Any]) -> str:
    body = {k: v for k, v in entry.items() if k != "hash"}
    return hashlib.sha256(rfc8785.dumps(body)).hexdigest()


@dataclass
class LiveDocument:
    """A document the ledger says is in the store now."""

    doc_id: str
    sha256: str
    chunks: int
    chars: int
    origin: str
    index: int
    entry: dict[str, Any] = field(repr=False)


@dataclass
class VerifyReport:
    ok: bool
    entries: int
    head: str
    problems: list[str]


class Ledger:
    """Single-writer ledger; callers hold the ingest lock while appending."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.head_path = path.with_name(path.name + ".head")
        self._tail: tuple[int, str] | None = None

    def entries(self) -> Iterator[dict[str, Any]]:
        if not self.path.exists():
            return
        with self.path.open("rb") as handle:
            for number, line in enumerate(handle):
                if not line.endswith(b"\n"):
                    # A torn final write from a crash: never acknowledged, so it does not count.
                    return
                try:
                    yield json.loads(line)
                except json.JSONDecodeError as exc:
                    raise LedgerError(f"Ledger line {number + 1} is not JSON.") from exc

    def repair_torn_tail(self) -> bool:
        """Cut a partial last line left by a kill mid-append; returns whether anything was cut."""
        if not self.path.exists():
            return False
        data = self.path.read_bytes()
        if not data or data.endswith(b"\n"):
            return False
        cut = data.rfind(b"\n") + 1
        with self.path.open("r+b") as handle:
            handle.truncate(cut)
            os.fsync(handle.fileno())
        return True

    def tail(self) -> tuple[int, str]:
        """(next index, hash of the last entry)."""
        if self._tail is None:
            last: dict[str, Any] | None = None
            for entry in self.entries():
                last = entry
            self._tail = (0, GENESIS) if last is None else (int(last["index"]) + 1, str(last["hash"]))
        return self._tail

    def append(self, record: dict[str, Any]) -> dict[str, Any]:
        return self.append_many([record])[0]

    def append_many(self, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Append entries in one write and one fsync, then move the head."""
        if not records:
            return []
        index, prev = self.tail()
        entries, lines = [], []
        for record in records:
            entry = {"index": index, "time": utc_now(), **record, "prev": prev}
            entry["hash"] = prev = entry_hash(entry)
            entries.append(entry)
            lines.append(json.dumps(entry, sort_keys=True, ensure_ascii=False).encode() + b"\n")
            index += 1
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("ab") as handle:
            handle.write(b"".join(lines))
            handle.flush()
            os.fsync(handle.fileno())
        self._tail = (index, prev)
        tmp = self.head_path.with_name(self.head_path.name + ".tmp")
        tmp.write_text(json.dumps({"index": index - 1, "hash": prev}) + "\n")
        os.replace(tmp, self.head_path)
        return entries

    def head(self) -> str:
        return self.tail()[1]

    def read_head(self) -> str:
        """The head as on disk now (another process may have appended), from the head file."""
        try:
            return str(json.loads(self.head_path.read_text())["hash"])
        except (OSError, ValueError, KeyError):
            self._tail = None
            return self.head()

    def live(self) -> dict[str, LiveDocument]:
        """Replay the ledger into the set of documents it says are stored."""
        docs: dict[str, LiveDocument] = {}
        for entry in self.entries():
            action = entry.get("action")
            if action in LIVE_ACTIONS:
                docs[entry["doc_id"]] = LiveDocument(
                    doc_id=entry["doc_id"],
                    sha256=entry["sha256"],
                    chunks=int(entry["chunks"]),
                    chars=int(entry["chars"]),
                    origin=entry["origin"],
                    index=int(entry["index"]),
                    entry=entry,
                )
            elif action == "remove":
                docs.pop(entry["doc_id"], None)
        return docs

    def verify(self) -> VerifyReport:
        problems: list[str] = []
        prev, count, expected_index = GENESIS, 0, 0
        hashes: list[str] = []
        try:
            for entry in self.entries():
                where = f"entry {count + 1}"
                if entry.get("index") != expected_index:
                    problems.append(f"{where}: index {entry.get('index')} where {expected_index} was expected")
                if entry.get("prev") != prev:
                    problems.append(f"{where}: does not chain to the entry before it (dropped or reordered)")
                if entry_hash(entry) != entry.get("hash"):
                    problems.append(f"{where}: content does not match its hash (edited)")
                prev, count, expected_index = str(entry.get("hash")), count + 1, expected_index + 1
                hashes.append(prev)
        except LedgerError as exc:
            problems.append(str(exc))
        if self.head_path.exists():
            head = json.loads(self.head_path.read_text())
            # The head file is written after the entry, so a crash can leave it one behind, never ahead.
            if head["index"] >= count:
                problems.append(f"ledger ends at entry {count} but its head records entry {head['index'] + 1}")
            elif hashes[head["index"]] != head["hash"]:
                problems.append(f"entry {head['index'] + 1} differs from the recorded head")
        elif count:
            problems.append("the ledger head file is missing")
        return VerifyReport(ok=not problems, entries=count, head=prev, problems=problems)
