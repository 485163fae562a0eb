"""What the ledger commits to, chunk by chunk, and the answer-time gate that serves only that.

An admitting ledger entry lists its chunks' sha256 in order; `commitments()` maps every chunk id of the
live documents to its committed hash and signer. `cross_check` compares a vector store with that map
both ways (`rag ledger verify`); `LedgerGate` is what the answering service asks, per retrieved chunk,
whether it may be served now.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ingest.ledger import GENESIS, Ledger, LiveDocument, chunk_id, entry_hash, text_sha256
from ingest.trust import TrustStore
from rag.errors import LedgerError, TrustStoreError
from rag.types import StoredChunk

if TYPE_CHECKING:
    from rag.protocols import VectorStore

log = logging.getLogger(__name__)

NAMED_AT_MOST = 20  # problems that name chunks name this many, then count the rest


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
            record = self.ledger.read_head_file()
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
