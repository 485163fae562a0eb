"""Append-only, hash-chained JSONL ledger of what entered and left the knowledge base.

Each entry carries `prev` (the previous entry's hash) and `hash` (sha256 of its own RFC 8785
canonical form without `hash`). An admitting entry (`add`, `replace`) lists its chunks' sha256 in
order (`chunk_sha256`; chunk n's id is `chunk_id(doc_id, sha256, n)`), so the chain commits to exactly
what may be served (`ingest.commitments`). A side file records the head (index and hash), signed with
the ledger key kept outside the data dir (`ingest.ledger_head`), so cutting entries at the end and
rewriting the head is caught too; `verify(expect=...)` checks the ledger still extends a head kept elsewhere.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import rfc8785

from ingest.ledger_head import LedgerKey, check_extends, check_signature, hash_at, refuse_links
from ingest.trust import utc_now
from rag.errors import LedgerError

log = logging.getLogger(__name__)

GENESIS = "0" * 64
LIVE_ACTIONS = ("add", "replace")
GONE_ACTIONS = ("remove", "withdraw")


def entry_hash(entry: dict[str, Any]) -> str:
    body = {k: v for k, v in entry.items() if k != "hash"}
    return hashlib.sha256(rfc8785.dumps(body)).hexdigest()


def text_sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def chunk_id(doc_id: str, sha256: str, index: int) -> str:
    return f"{doc_id}@{sha256[:16]}#{index:05d}"


def parse_chunk_id(value: str) -> tuple[str, str] | None:
    doc_id, sep, rest = value.rpartition("@")
    sha16, sep2, _ = rest.partition("#")
    if not sep or not sep2:
        return None
    return doc_id, sha16


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
    # Set by reconcile when the store holds fewer chunks than the entry commits: embed it afresh.
    incomplete: bool = False
    removed: bool = False  # no longer live: its owner removed it (`Ledger.removed`)

    @property
    def chunk_hashes(self) -> list[str] | None:
        """The committed chunk hashes in order; None for an entry written before chunks were committed."""
        hashes = self.entry.get("chunk_sha256")
        return [str(h) for h in hashes] if isinstance(hashes, list) and len(hashes) == self.chunks else None

    @property
    def vector_hashes(self) -> list[str] | None:
        """The committed sha256 of each chunk's stored vector, in order; None for an entry from before vectors
        were committed (such a document is not served, and the next ingest embeds it afresh)."""
        hashes = self.entry.get("vector_sha256")
        return [str(h) for h in hashes] if isinstance(hashes, list) and len(hashes) == self.chunks else None

    @property
    def signer_keyid(self) -> str:
        return str(self.entry.get("signer_keyid") or "")


@dataclass
class VerifyReport:
    ok: bool
    entries: int
    head: str
    problems: list[str]


class Ledger:
    """Single-writer ledger; callers hold the ingest lock while appending."""

    def __init__(self, path: Path, key: LedgerKey | None = None) -> None:
        self.path = path
        self.head_path = path.with_name(path.name + ".head")
        self.key = key
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

    def check_before_append(self) -> None:
        """Verify the chain and the signed head as they are on disk now; LedgerError (`ledger_corrupt`) if not.

        Called under the ingest lock before anything is appended: another process may have appended since
        this object last looked, and an append must never extend a cut or edited ledger. A ledger is never
        deleted here: a new one starts with a signed genesis head, so a missing head never means a first run."""
        self._tail = None
        refuse_links(self.path, self.head_path)
        self.repair_torn_tail()
        if self.key is not None:
            self._check_head_present(self.key)
        self._cut_unacknowledged()
        report = self.verify()
        if not report.ok:
            raise LedgerError("The ledger does not verify, nothing was written: " + "; ".join(report.problems[:3]))

    def _check_head_present(self, key: LedgerKey) -> None:
        has_entries = self.path.exists() and self.path.stat().st_size > 0
        if not key.exists():
            if self.read_head_file().get("signed"):
                raise LedgerError(f"The ledger key {key.path} that signed the head is missing.")
            if has_entries or self.head_path.exists():
                raise LedgerError(
                    f"The ledger {self.path} has no signed head (written before heads were signed, or its key "
                    f"{key.path} is lost); nothing was written. Check it with `rag ledger verify`, then sign its "
                    "head once with `rag ledger sign-head`."
                )
            key.create()
        key.ensure_public_file()
        if not self.head_path.exists():
            if has_entries:
                raise LedgerError(
                    f"The ledger head {self.head_path} is missing; nothing was written. If the ledger is yours, "
                    "check it (`rag ledger verify --expect HEAD`, with a head kept elsewhere) and sign its head "
                    "with `rag ledger sign-head`; or start afresh with `rag ledger reset --yes`, which deletes the "
                    "ledger and every stored chunk."
                )
            self._write_head(0, GENESIS)  # a new ledger: its signed genesis head comes before any entry

    def _cut_unacknowledged(self) -> None:
        """Cut entries after a valid head: a kill between the append and the head left them unacknowledged
        (their chunks are then orphans, removed by reconcile), and nothing forged after the head survives."""
        head = self.read_head_file()
        index = head.get("index")
        if not isinstance(index, int) or check_signature(self.key, head) or not self.path.exists():
            return
        offset, kept = 0, 0
        with self.path.open("rb") as handle:
            for line in handle:
                if kept > index:
                    break
                entry = json.loads(line)
                if entry.get("index") == index and entry.get("hash") != head.get("hash"):
                    return  # not the head's ledger: leave it to verify() to report
                offset, kept = offset + len(line), kept + 1
        if kept == index + 1 and offset < self.path.stat().st_size:
            log.warning("cutting ledger entries after the signed head (entry %d): never acknowledged", index + 1)
            with self.path.open("r+b") as handle:
                handle.truncate(offset)
                os.fsync(handle.fileno())
            self._tail = None

    def append(self, record: dict[str, Any]) -> dict[str, Any]:
        return self.append_many([record])[0]

    def append_many(self, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Append entries in one write and one fsync, then move the (signed) head."""
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
        self._write_head(index, prev)
        return entries

    def sign_tail(self) -> tuple[int, str]:
        """Write the (signed) head at the last entry as on disk now: (index, hash). Only `rag ledger sign-head`."""
        self._tail = None
        next_index, head = self.tail()
        self._write_head(next_index, head)
        return next_index - 1, head

    def _write_head(self, next_index: int, head: str) -> None:
        record: dict[str, Any] = {"index": next_index - 1, "hash": head}
        if self.key is not None:
            if not self.key.exists():
                self.key.create()
            record["signed"] = self.key.sign(next_index - 1, head)
        tmp = self.head_path.with_name(self.head_path.name + ".tmp")
        tmp.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps(record) + "\n")
        os.replace(tmp, self.head_path)
        if self.key is not None:
            self.key.remember(self.path, next_index - 1, head)

    def read_head_file(self) -> dict[str, Any]:
        """The head record as on disk (index, hash and the signed envelope); empty if missing or unreadable."""
        try:
            head = json.loads(self.head_path.read_text())
        except (OSError, ValueError):
            return {}
        return head if isinstance(head, dict) else {}

    def head(self) -> str:
        return self.tail()[1]

    def read_head(self) -> str:
        """The head as on disk now (another process may have appended), from the head file."""
        head = self.read_head_file().get("hash")
        if isinstance(head, str):
            return head
        self._tail = None
        return self.head()

    def signed_head(self) -> dict[str, Any]:
        """The signed head as on disk, for operators to keep elsewhere (`rag ledger head`)."""
        signed = self.read_head_file().get("signed")
        if not isinstance(signed, dict):
            raise LedgerError("The ledger has no signed head yet (nothing was ingested with a ledger key).")
        return signed

    def live(self, entries: Iterable[dict[str, Any]] | None = None) -> dict[str, LiveDocument]:
        """Replay the ledger (or `entries`) into the set of documents it says are stored."""
        docs: dict[str, LiveDocument] = {}
        for entry in self.entries() if entries is None else entries:
            action = entry.get("action")
            if action in LIVE_ACTIONS:
                docs[entry["doc_id"]] = _as_live(entry)
            elif action in GONE_ACTIONS:
                docs.pop(entry["doc_id"], None)
        return docs

    def removed(self, entries: Iterable[dict[str, Any]] | None = None) -> dict[str, LiveDocument]:
        """Documents whose last entry is a `remove`, as last admitted: their signer still owns the name."""
        admitted: dict[str, dict[str, Any]] = {}
        gone: dict[str, LiveDocument] = {}
        for entry in self.entries() if entries is None else entries:
            action, doc_id = entry.get("action"), str(entry.get("doc_id"))
            if action in LIVE_ACTIONS:
                admitted[doc_id] = entry
                gone.pop(doc_id, None)
            elif action == "remove" and doc_id in admitted:
                gone[doc_id] = replace(_as_live(admitted.pop(doc_id)), removed=True)
            elif action in GONE_ACTIONS:
                admitted.pop(doc_id, None)
                gone.pop(doc_id, None)
        return gone

    def documents(
        self, *, include_withdrawn: bool = False, entries: list[dict[str, Any]] | None = None
    ) -> list[dict[str, Any]]:
        """What the store holds, with provenance, as the ledger (or `entries`) records it; optionally what was
        withdrawn."""
        entries = list(self.entries()) if entries is None else entries
        live = self.live(entries)
        views = [{**_document_view(doc), "status": "live"} for doc in live.values()]
        if include_withdrawn:
            admitted: dict[str, dict[str, Any]] = {}
            last: dict[str, dict[str, Any]] = {}
            for entry in entries:
                if entry.get("action") in ("add", "replace"):
                    admitted[entry["doc_id"]] = entry
                if entry.get("action") in ("add", "replace", "remove", "withdraw"):
                    last[entry["doc_id"]] = entry
            for doc_id, entry in last.items():
                if entry["action"] == "withdraw" and doc_id not in live and doc_id in admitted:
                    view = _document_view(_as_live(admitted[doc_id]))
                    views.append(
                        {
                            **view,
                            "chunks": 0,
                            "status": "withdrawn",
                            "withdrawn_reason": entry.get("reason"),
                            "withdrawn_at": entry.get("time"),
                        }
                    )
        return sorted(views, key=lambda view: view["doc_id"])

    def verify(self, expect: dict[str, Any] | None = None) -> VerifyReport:
        """Check the chain, the head file and its signature; with `expect` (a signed head kept elsewhere),
        also that the ledger still extends it."""
        try:
            refuse_links(self.path, self.head_path)
        except LedgerError as exc:
            return VerifyReport(ok=False, entries=0, head=GENESIS, problems=[exc.message])
        hashes, problems = self.chain()
        count, prev = len(hashes), (hashes[-1] if hashes else GENESIS)
        head = self.read_head_file()
        if head:
            index = head.get("index")
            at = hash_at(hashes, index) if isinstance(index, int) else None
            if at is None or not isinstance(index, int):
                problems.append(f"ledger ends at entry {count} but its head records entry {index}")
            elif at != head.get("hash"):
                problems.append(f"entry {index + 1} differs from the recorded head")
            elif index < count - 1:
                # A kill between the append and the head can leave these; the next ingest cuts them.
                problems.append(f"{count - 1 - index} entries after the recorded head (unacknowledged)")
            problems.extend(check_signature(self.key, head))
        elif self.head_path.exists():
            problems.append("the ledger head file is unreadable")
        elif count:
            problems.append("the ledger head file is missing")
        problems.extend(self.remembered_problems(hashes))
        if expect is not None:
            problems.extend(check_extends(self.key, expect, hashes))
        return VerifyReport(ok=not problems, entries=count, head=prev, problems=problems)

    def remembered_problems(self, hashes: list[str]) -> list[str]:
        """Problems if the chain does not reach the head the ledger key last signed for this ledger."""
        remembered = self.key.remembered(self.path) if self.key is not None and self.key.exists() else None
        if remembered is None:
            return []
        index = remembered.get("index")
        at = hash_at(hashes, index) if isinstance(index, int) else None
        if at is None or not isinstance(index, int):
            return [f"the ledger has {len(hashes)} entries but its key signed a head at index {index} (cut)"]
        if at != remembered.get("hash"):
            return [f"entry {index + 1} differs from the head its key signed (rewritten)"]
        return []

    def chain(self) -> tuple[list[str], list[str]]:
        """(the entry hashes in order, problems of the hash chain alone: indices, links and entry hashes)."""
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
        return hashes, problems


def revoked_keyids(entries: Iterable[dict[str, Any]]) -> set[str]:
    """Key ids the ledger records a `revoke` for: revoked whatever the trust files say now."""
    return {str(e["signer_keyid"]) for e in entries if e.get("action") == "revoke" and e.get("signer_keyid")}


def _as_live(entry: dict[str, Any]) -> LiveDocument:
    return LiveDocument(
        doc_id=entry["doc_id"],
        sha256=entry["sha256"],
        chunks=int(entry["chunks"]),
        chars=int(entry["chars"]),
        origin=entry["origin"],
        index=int(entry["index"]),
        entry=entry,
    )


def _document_view(doc: LiveDocument) -> dict[str, Any]:
    entry = doc.entry
    keys = (
        "title",
        "authors",
        "license",
        "origin",
        "source_uri",
        "created",
        "curator",
        "reviewed_at",
        "signer_name",
        "signer_keyid",
        "manifest_sha256",
        "synthetic",
    )
    view = {
        "doc_id": doc.doc_id,
        "sha256": doc.sha256,
        "chunks": doc.chunks,
        "chars": doc.chars,
        "ledger_index": doc.index,
        "ingested_at": entry.get("time"),
    }
    view.update({key: entry.get(key) for key in keys})
    return view
