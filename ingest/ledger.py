"""Append-only, hash-chained JSONL ledger of what entered and left the knowledge base.

Each entry carries `prev` (the previous entry's hash) and `hash` (sha256 of its own RFC 8785
canonical form without `hash`). An admitting entry (`add`, `replace`) lists its chunks' sha256 in
order (`chunk_sha256`; chunk n's id is `chunk_id(doc_id, sha256, n)`), so the chain commits to exactly
what may be served. A side file records the head (index and hash), signed with the ledger key kept
outside the data dir (a DSSE envelope, securesystemslib), so cutting entries at the end and rewriting
the head is caught too; `verify(expect=...)` checks the ledger still extends a head kept elsewhere.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import rfc8785

from ingest.provenance import key_id, load_private_key, utc_now, write_key_pair
from rag.errors import LedgerError, TrustStoreError
from rag.types import StoredChunk

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

    from ingest.provenance import TrustStore
    from rag.protocols import VectorStore

log = logging.getLogger(__name__)

GENESIS = "0" * 64
LIVE_ACTIONS = ("add", "replace")
GONE_ACTIONS = ("remove", "withdraw")
HEAD_PAYLOAD_TYPE = "application/vnd.provenance-first-rag.ledger-head+json"
NAMED_AT_MOST = 20  # problems that name chunks name this many, then count the rest


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

    @property
    def chunk_hashes(self) -> list[str] | None:
        """The committed chunk hashes in order; None for an entry written before chunks were committed."""
        hashes = self.entry.get("chunk_sha256")
        return [str(h) for h in hashes] if isinstance(hashes, list) and len(hashes) == self.chunks else None

    @property
    def signer_keyid(self) -> str:
        return str(self.entry.get("signer_keyid") or "")


@dataclass(frozen=True)
class Commitment:
    """What the ledger commits one chunk id to."""

    doc_id: str
    sha256: str
    signer_keyid: str


def commitments(live: dict[str, LiveDocument]) -> dict[str, Commitment]:
    """chunk id → commitment, for every chunk of every live document whose entry commits its chunks."""
    out: dict[str, Commitment] = {}
    for doc in live.values():
        for n, sha in enumerate(doc.chunk_hashes or ()):
            out[chunk_id(doc.doc_id, doc.sha256, n)] = Commitment(doc.doc_id, sha, doc.signer_keyid)
    return out


@dataclass
class VerifyReport:
    ok: bool
    entries: int
    head: str
    problems: list[str]


class LedgerKey:
    """The Ed25519 key that signs the ledger head; it lives outside the data dir (a setting)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._private: Ed25519PrivateKey | None = None

    def exists(self) -> bool:
        return self.path.exists()

    def create(self) -> None:
        write_key_pair(self.path.stem, self.path.parent)
        log.warning("made a new ledger key at %s: keep it outside the data dir, and back it up", self.path)

    def private(self) -> Ed25519PrivateKey:
        if self._private is None:
            self._private = load_private_key(self.path)
        return self._private

    def public(self) -> Ed25519PublicKey:
        return self.private().public_key()

    def sign(self, index: int, head: str) -> dict[str, Any]:
        """A DSSE envelope over {ledger head index, hash, time}."""
        from securesystemslib.dsse import Envelope
        from securesystemslib.signer import CryptoSigner, SSlibKey

        payload: dict[str, Any] = {"index": index, "hash": head, "entries": index + 1, "signed_at": utc_now()}
        public = SSlibKey.from_crypto(self.public(), keyid=key_id(self.public()))
        envelope = Envelope(rfc8785.dumps(payload), HEAD_PAYLOAD_TYPE, {})
        envelope.sign(CryptoSigner(self.private(), public))
        return dict(envelope.to_dict())

    @property
    def _heads_path(self) -> Path:
        return self.path.with_name(self.path.name + ".heads.json")

    def remember(self, ledger: Path, index: int | None, head: str | None) -> None:
        """Record beside the key (outside the data dir) the last head it signed for `ledger`: a ledger cut
        back to an older signed head, or deleted, is then caught without an outside copy. None forgets it."""
        with (self.path.parent / (self.path.name + ".lock")).open("w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            heads = self._heads()
            if index is None:
                heads.pop(str(ledger.resolve()), None)
                log.warning("starting a new ledger at %s, where the ledger key signed heads before", ledger)
            else:
                heads[str(ledger.resolve())] = {"index": index, "hash": head}
            tmp = self._heads_path.with_name(self._heads_path.name + ".tmp")
            tmp.write_text(json.dumps(heads, indent=1, sort_keys=True) + "\n")
            os.replace(tmp, self._heads_path)

    def remembered(self, ledger: Path) -> dict[str, Any] | None:
        found = self._heads().get(str(ledger.resolve()))
        return found if isinstance(found, dict) else None

    def _heads(self) -> dict[str, Any]:
        try:
            heads = json.loads(self._heads_path.read_text())
        except (OSError, ValueError):
            return {}
        return heads if isinstance(heads, dict) else {}

    def open(self, signed: dict[str, Any]) -> dict[str, Any]:
        """The payload of a signed head, if this key signed it; LedgerError otherwise."""
        from securesystemslib.dsse import Envelope
        from securesystemslib.exceptions import VerificationError
        from securesystemslib.signer import SSlibKey

        try:
            envelope = Envelope.from_dict(dict(signed))
            public = SSlibKey.from_crypto(self.public(), keyid=key_id(self.public()))
            envelope.verify([public], 1)
            payload = json.loads(envelope.payload)
        except (VerificationError, KeyError, TypeError, ValueError) as exc:
            raise LedgerError("the head is not signed by this ledger's key") from exc
        if envelope.payload_type != HEAD_PAYLOAD_TYPE or not isinstance(payload, dict):
            raise LedgerError("the signed envelope is not a ledger head")
        return payload


def parse_expected_head(value: str) -> dict[str, Any]:
    """A signed head as `rag ledger head` prints it, given as the JSON text or a file holding it."""
    text = value
    if not value.lstrip().startswith("{") and Path(value).is_file():
        text = Path(value).read_text()
    try:
        parsed = json.loads(text)
    except ValueError as exc:
        raise LedgerError("--expect takes the signed head printed by `rag ledger head` (JSON or a file).") from exc
    if not isinstance(parsed, dict):
        raise LedgerError("--expect takes the signed head printed by `rag ledger head` (JSON or a file).")
    return dict(parsed.get("signed", parsed))


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
        this object last looked, and an append must never extend a cut or edited ledger."""
        self._tail = None
        self.repair_torn_tail()
        signed_before = self.key is not None and self.key.exists() and self.key.remembered(self.path) is not None
        if self.key is not None and self.path.exists() and not self.head_path.exists() and not signed_before:
            # A kill between the first append and the first head: nothing was acknowledged yet.
            log.warning("cutting ledger entries written before any head was signed: never acknowledged")
            self.path.unlink()
        if self.key is not None and not self.key.exists():
            if self._read_head_file().get("signed"):
                raise LedgerError(f"The ledger key {self.key.path} that signed the head is missing.")
            # First run (or a ledger from before heads were signed): make the key, sign the head as it is.
            self.key.create()
            if self.tail()[0]:
                report = self.verify()
                if not report.ok:
                    raise LedgerError("The ledger does not verify: " + "; ".join(report.problems[:3]))
                self._write_head(*self.tail())
        self._cut_unacknowledged()
        report = self.verify()
        if not report.ok:
            raise LedgerError("The ledger does not verify, nothing was written: " + "; ".join(report.problems[:3]))

    def _cut_unacknowledged(self) -> None:
        """Cut entries after a valid head: a kill between the append and the head left them unacknowledged
        (their chunks are then orphans, removed by reconcile), and nothing forged after the head survives."""
        head = self._read_head_file()
        index = head.get("index")
        if not isinstance(index, int) or self._check_signature(head):
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

    def _write_head(self, next_index: int, head: str) -> None:
        record: dict[str, Any] = {"index": next_index - 1, "hash": head}
        if self.key is not None:
            if not self.key.exists():
                self.key.create()
            record["signed"] = self.key.sign(next_index - 1, head)
        tmp = self.head_path.with_name(self.head_path.name + ".tmp")
        tmp.write_text(json.dumps(record) + "\n")
        os.replace(tmp, self.head_path)
        if self.key is not None:
            self.key.remember(self.path, next_index - 1, head)

    def _read_head_file(self) -> dict[str, Any]:
        try:
            head = json.loads(self.head_path.read_text())
        except (OSError, ValueError):
            return {}
        return head if isinstance(head, dict) else {}

    def head(self) -> str:
        return self.tail()[1]

    def read_head(self) -> str:
        """The head as on disk now (another process may have appended), from the head file."""
        head = self._read_head_file().get("hash")
        if isinstance(head, str):
            return head
        self._tail = None
        return self.head()

    def signed_head(self) -> dict[str, Any]:
        """The signed head as on disk, for operators to keep elsewhere (`rag ledger head`)."""
        signed = self._read_head_file().get("signed")
        if not isinstance(signed, dict):
            raise LedgerError("The ledger has no signed head yet (nothing was ingested with a ledger key).")
        return signed

    def live(self, entries: Iterable[dict[str, Any]] | None = None) -> dict[str, LiveDocument]:
        """Replay the ledger (or `entries`) into the set of documents it says are stored."""
        docs: dict[str, LiveDocument] = {}
        for entry in self.entries() if entries is None else entries:
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
            elif action in GONE_ACTIONS:
                docs.pop(entry["doc_id"], None)
        return docs

    def verify(self, expect: dict[str, Any] | None = None) -> VerifyReport:
        """Check the chain, the head file and its signature; with `expect` (a signed head kept elsewhere),
        also that the ledger still extends it."""
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
        head = self._read_head_file()
        if head:
            index = head.get("index")
            if not isinstance(index, int) or index >= count:
                problems.append(f"ledger ends at entry {count} but its head records entry {index}")
            elif hashes[index] != head.get("hash"):
                problems.append(f"entry {index + 1} differs from the recorded head")
            elif index < count - 1:
                # A kill between the append and the head can leave these; the next ingest cuts them.
                problems.append(f"{count - 1 - index} entries after the recorded head (unacknowledged)")
            problems.extend(self._check_signature(head))
        elif self.head_path.exists():
            problems.append("the ledger head file is unreadable")
        elif count:
            problems.append("the ledger head file is missing")
        remembered = self.key.remembered(self.path) if self.key is not None and self.key.exists() else None
        if remembered is not None:
            index = remembered.get("index")
            if not isinstance(index, int) or index >= count:
                problems.append(f"the ledger has {count} entries but its key signed a head at index {index} (cut)")
            elif hashes[index] != remembered.get("hash"):
                problems.append(f"entry {index + 1} differs from the head its key signed (rewritten)")
        if expect is not None:
            problems.extend(self._check_extends(expect, hashes))
        return VerifyReport(ok=not problems, entries=count, head=prev, problems=problems)

    def _check_signature(self, head: dict[str, Any]) -> list[str]:
        if self.key is None:
            return []
        signed = head.get("signed")
        if not self.key.exists():
            return [f"the ledger key {self.key.path} is missing, so the head cannot be checked"]
        if not isinstance(signed, dict):
            return ["the ledger head is not signed (rewritten by something without the ledger key?)"]
        try:
            payload = self.key.open(signed)
        except LedgerError as exc:
            return [str(exc)]
        if payload.get("index") != head.get("index") or payload.get("hash") != head.get("hash"):
            return ["the signed head does not match the head file (rewritten)"]
        return []

    def _check_extends(self, expect: dict[str, Any], hashes: list[str]) -> list[str]:
        if self.key is None or not self.key.exists():
            return ["the ledger key is missing, so the expected head's signature cannot be checked"]
        try:
            payload = self.key.open(expect)
        except LedgerError as exc:
            return [f"expected head: {exc}"]
        index = payload.get("index")
        if not isinstance(index, int) or index >= len(hashes):
            return [f"the ledger has {len(hashes)} entries but the expected head is entry {index} (cut)"]
        if hashes[index] != payload.get("hash"):
            return [f"entry {index + 1} differs from the expected head (history rewritten)"]
        return []


def cross_check(live: dict[str, LiveDocument], store: VectorStore) -> list[str]:
    """Compare the store with the ledger's commitments both ways; one line per kind of problem."""
    committed = commitments(live)
    problems: list[str] = []
    legacy = sorted(doc.doc_id for doc in live.values() if doc.chunk_hashes is None)
    if legacy:
        problems.append(_named("live documents whose entry commits no chunk hashes (re-ingest them)", legacy))
    stored = store.ids()
    if stored and not live:
        problems.append(f"the ledger has no live document but the store holds {len(stored)} chunks (ledger lost?)")
    present = set(stored)
    uncommitted = sorted(i for i in stored if i not in committed)
    missing = sorted(i for i in committed if i not in present)
    changed = sorted(c.id for c in store.get(sorted(present & committed.keys())) if not _matches(c, committed[c.id]))
    if uncommitted:
        problems.append(_named("chunks in the store that the ledger does not commit", uncommitted))
    if missing:
        problems.append(_named("committed chunks missing from the store", missing))
    if changed:
        problems.append(_named("chunks whose stored text differs from the committed hash", changed))
    return problems


def _matches(chunk: StoredChunk, commitment: Commitment) -> bool:
    return text_sha256(chunk.text) == commitment.sha256


def _named(what: str, ids: Sequence[str]) -> str:
    shown = ", ".join(ids[:NAMED_AT_MOST])
    more = f" and {len(ids) - NAMED_AT_MOST} more" if len(ids) > NAMED_AT_MOST else ""
    return f"{len(ids)} {what}: {shown}{more}"


class LedgerGate:
    """What may be served now: the chunks the ledger's head commits to, from signers trusted now.

    `follow()` reads the head file (a few microseconds) and reloads the commitments only when the head
    moved, and the trust files only when they changed; `admits(chunk)` is a dict lookup and one sha256.
    Anything that cannot be read or does not verify leaves nothing admitted (fail closed)."""

    def __init__(self, ledger: Ledger, trust_paths: Sequence[Path]) -> None:
        self.ledger = ledger
        self.trust_paths = list(trust_paths)
        self.head: str | None = None
        self._committed: dict[str, Commitment] = {}
        self._trust: TrustStore | None = None
        self._trust_stamp: tuple[tuple[int, int, int] | None, ...] | None = None
        self._lock = threading.Lock()

    def follow(self) -> bool:
        """Catch up with the ledger head and the trust files; returns whether the head moved."""
        with self._lock:
            self._follow_trust()
            record = self.ledger._read_head_file()
            head = record.get("hash") if record else self.ledger.read_head()
            if head == self.head:
                return False
            self._committed = self._load(record)
            self.head = head if isinstance(head, str) else None
            return True

    def _load(self, record: dict[str, Any]) -> dict[str, Commitment]:
        index = record.get("index") if record else None
        prev, entries = GENESIS, list[dict[str, Any]]()
        try:
            for entry in self.ledger.entries():
                if entry.get("prev") != prev or entry_hash(entry) != entry.get("hash"):
                    raise LedgerError(f"entry {len(entries) + 1} does not verify")
                entries.append(entry)
                prev = str(entry["hash"])
                if index is not None and entry.get("index") == index:
                    break
        except (LedgerError, KeyError, TypeError, ValueError) as exc:
            log.error("the ledger does not verify (%s): no passage will be served until it does", exc)
            return {}
        if record and prev != record.get("hash"):
            log.error("the ledger does not reach its recorded head: no passage will be served until it does")
            return {}
        return commitments(self.ledger.live(entries))

    def _follow_trust(self) -> None:
        stamp = tuple(_stamp(path) for path in self.trust_paths)
        if stamp == self._trust_stamp:
            return
        from ingest.provenance import TrustStore

        try:
            self._trust = TrustStore.load(*self.trust_paths)
        except TrustStoreError as exc:
            log.error("trust files unusable (%s): no passage will be served until they are fixed", exc)
            self._trust = None
        self._trust_stamp = stamp

    def admits(self, chunk: StoredChunk) -> bool:
        """True if the ledger commits this chunk id to this text and its signer is trusted now."""
        commitment = self._committed.get(chunk.id)
        why = None
        if commitment is None:
            why = "not committed by the ledger head"
        elif text_sha256(chunk.text) != commitment.sha256:
            why = "text does not hash to the committed chunk hash"
        elif chunk.metadata.get("doc_id") != commitment.doc_id or (
            chunk.metadata.get("signer_keyid", "") != commitment.signer_keyid
        ):
            why = "metadata differs from the ledger entry"
        elif self._trust is None:
            why = "the trust files are unusable"
        else:
            why = self._trust.usable(commitment.signer_keyid, datetime.now(UTC))
        if why is not None:
            log.warning("dropping chunk %s: %s", chunk.id, why)
            return False
        return True


def _stamp(path: Path) -> tuple[int, int, int] | None:
    try:
        info = path.stat()
    except OSError:
        return None
    return info.st_mtime_ns, info.st_size, info.st_ino
