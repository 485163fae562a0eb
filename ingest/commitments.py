"""What the ledger commits to, chunk by chunk, and the answer-time gate that serves only that.

An admitting ledger entry lists its chunks' sha256 in order, the sha256 of each chunk's stored vector
(so that a vector edited behind the ledger cannot steer retrieval), and the document's provenance (title,
authors, licence, origin, source, signer); `commitments()` maps every chunk id of the live documents to
its committed hashes and those fields. `cross_check` compares a vector store with that map both ways
(`rag ledger verify`); `LedgerGate` is what the answering service asks, per retrieved chunk, whether it
may be served now, and it hands back the chunk carrying the committed fields, never the store's.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Container, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ingest.ledger import GENESIS, Ledger, LiveDocument, chunk_id, entry_hash, revoked_keyids, text_sha256
from ingest.ledger_head import refuse_links, remembered_head, verified_head
from ingest.trust import TrustStore
from rag.errors import LedgerError, TrustStoreError
from rag.types import StoredChunk

if TYPE_CHECKING:
    from rag.protocols import VectorStore

log = logging.getLogger(__name__)

NAMED_AT_MOST = 20  # problems that name chunks name this many, then count the rest


@dataclass(frozen=True)
class Commitment:
    """What the ledger commits one chunk id to: its text hash and its document's provenance (`facts`,
    shared by the document's chunks, the fields a store row carries and a citation shows)."""

    doc_id: str
    sha256: str
    signer_keyid: str
    index: int = 0
    facts: Mapping[str, str] = field(default_factory=dict, compare=False, repr=False)
    vector_sha256: str = ""

    def metadata(self) -> dict[str, Any]:
        """The chunk's metadata as the ledger commits it."""
        return {**self.facts, "chunk_index": self.index, "chunk_sha256": self.sha256}


def committed_facts(doc: LiveDocument) -> dict[str, str]:
    """A live document's provenance as its admitting entry records it, spelt as a store row spells it."""
    entry = doc.entry
    authors = entry.get("authors")
    return {
        "doc_id": doc.doc_id,
        "path": doc.doc_id,
        "title": str(entry.get("title") or ""),
        "authors": "; ".join(str(a) for a in authors) if isinstance(authors, list) else str(authors or ""),
        "license": str(entry.get("license") or ""),
        "origin": doc.origin,
        "source_uri": str(entry.get("source_uri") or ""),
        "signer_keyid": doc.signer_keyid,
        "signer_name": str(entry.get("signer_name") or ""),
        "doc_sha256": doc.sha256,
        "manifest_sha256": str(entry.get("manifest_sha256") or ""),
    }


def commitments(live: dict[str, LiveDocument]) -> dict[str, Commitment]:
    """chunk id → commitment, for every chunk of every live document whose entry commits its chunks' text and
    vectors (an entry from before either was committed commits nothing: such a document is not served)."""
    out: dict[str, Commitment] = {}
    for doc in live.values():
        facts = committed_facts(doc)
        texts, vectors = doc.chunk_hashes, doc.vector_hashes
        if texts is None or vectors is None:
            continue
        for n, (sha, vector) in enumerate(zip(texts, vectors, strict=True)):
            key = chunk_id(doc.doc_id, doc.sha256, n)
            out[key] = Commitment(doc.doc_id, sha, doc.signer_keyid, n, facts, vector)
    return out


def changed(chunk: StoredChunk, commitment: Commitment) -> str | None:
    """What of a stored chunk differs from its commitment (text, vector, metadata); None if nothing does."""
    if text_sha256(chunk.text) != commitment.sha256:
        return "text does not hash to the committed chunk hash"
    if chunk.vector_sha256 != commitment.vector_sha256:
        return "vector does not hash to the committed vector hash"
    if fields := drift(chunk.metadata, commitment):
        return f"metadata differs from the ledger entry ({', '.join(fields)})"
    return None


def drift(metadata: Mapping[str, Any], commitment: Commitment) -> list[str]:
    """The committed fields a store row spells differently from the ledger entry (forged or stale metadata)."""
    return [key for key, value in commitment.facts.items() if str(metadata.get(key, "")) != value]


def cross_check(live: dict[str, LiveDocument], store: VectorStore) -> list[str]:
    """Compare the store with the ledger's commitments both ways; one line per kind of problem."""
    committed = commitments(live)
    problems: list[str] = []
    legacy = sorted(doc.doc_id for doc in live.values() if doc.chunk_hashes is None or doc.vector_hashes is None)
    if legacy:
        what = "live documents whose entry commits no chunk or vector hashes (not served; re-ingest them)"
        problems.append(_named(what, legacy))
    stored = store.ids()
    if stored and not live:
        problems.append(f"the ledger has no live document but the store holds {len(stored)} chunks (ledger lost?)")
    present = set(stored)
    uncommitted = sorted(i for i in stored if i not in committed)
    missing = sorted(i for i in committed if i not in present)
    rows = store.get(sorted(present & committed.keys()), vectors=True)
    edited = sorted(c.id for c in rows if text_sha256(c.text) != committed[c.id].sha256)
    moved = sorted(c.id for c in rows if c.vector_sha256 != committed[c.id].vector_sha256)
    drifted = {c.id: drift(c.metadata, committed[c.id]) for c in rows}
    fields = sorted({key for keys in drifted.values() for key in keys})
    if uncommitted:
        problems.append(_named("chunks in the store that the ledger does not commit", uncommitted))
    if missing:
        problems.append(_named("committed chunks missing from the store", missing))
    if edited:
        problems.append(_named("chunks whose stored text differs from the committed hash", edited))
    if moved:
        problems.append(_named("chunks whose stored vector differs from the committed hash", moved))
    if fields:
        what = f"chunks whose stored metadata differs from the ledger entry ({', '.join(fields)})"
        problems.append(_named(what, sorted(i for i, keys in drifted.items() if keys)))
    return problems


def _named(what: str, ids: Sequence[str]) -> str:
    shown = ", ".join(ids[:NAMED_AT_MOST])
    more = f" and {len(ids) - NAMED_AT_MOST} more" if len(ids) > NAMED_AT_MOST else ""
    return f"{len(ids)} {what}: {shown}{more}"


def entries_to(ledger: Ledger, index: int, head: str) -> list[dict[str, Any]]:
    """The ledger's entries up to entry `index`, replayed and checked to chain to `head`; LedgerError if not."""
    prev, entries = GENESIS, list[dict[str, Any]]()
    for entry in ledger.entries() if index >= 0 else ():
        linked = entry.get("index") == len(entries) and entry.get("prev") == prev
        if not linked or entry_hash(entry) != entry.get("hash"):
            raise LedgerError(f"entry {len(entries) + 1} does not verify")
        entries.append(entry)
        prev = str(entry["hash"])
        if len(entries) == index + 1:
            break
    if len(entries) != index + 1 or prev != head:
        raise LedgerError("the ledger does not reach its signed head")
    return entries


def signed_entries(ledger: Ledger, public_key_path: Path) -> list[dict[str, Any]]:
    """The entries up to the ledger's signed head, checked with the public key alone (what a listing may show);
    LedgerError (`ledger_corrupt`) if the head or the chain does not verify."""
    try:
        refuse_links(ledger.path, ledger.head_path)
        record = ledger.read_head_file()
        if not record:
            if next(ledger.entries(), None) is not None:
                raise LedgerError("the ledger head file is missing or unreadable")
            return []
        index, head = verified_head(public_key_path, record)
        return entries_to(ledger, index, head)
    except (KeyError, TypeError, ValueError) as exc:
        raise LedgerError(f"the ledger does not verify ({exc})") from exc


class LedgerGate:
    """What may be served now: the chunks the ledger's signed head commits to, from signers trusted now.

    `follow()` reads the head file (a few microseconds) and reloads the commitments only when it changed,
    and the trust files only when they changed; `admit(chunk)` is a dict lookup and one sha256 (of the
    text; the store hashes the vector). The head's signature is checked with the ledger's public key alone
    (`public_key_path`), the chain is replayed up to exactly the signed head, and key ids the ledger records
    a `revoke` for stay revoked whatever the trust files say. The head must also extend the last head the
    ledger key signed for this ledger (`heads_path`, kept beside the key outside the data dir): a ledger
    rolled back to an older copy, signed heads and all, serves nothing. Anything that cannot be read or
    does not verify leaves nothing admitted (fail closed)."""

    def __init__(
        self, ledger: Ledger, trust_paths: Sequence[Path], public_key_path: Path, heads_path: Path | None = None
    ) -> None:
        self.ledger = ledger
        self.trust_paths = list(trust_paths)
        self.public_key_path = public_key_path
        self.heads_path = heads_path
        self.head: str | None = None
        # The commitments and the key ids the ledger revoked, swapped as one (an admit never mixes two heads).
        self._state: tuple[dict[str, Commitment], set[str]] = ({}, set())
        self._seen: tuple[bytes, tuple[int, int, int] | None, tuple[int, int, int] | None] | None = None
        self._trust: TrustStore | None = None
        self._trust_stamp: tuple[tuple[int, int, int] | None, ...] | None = None
        self._served: tuple[int, str] | None = None  # the highest head loaded: never go back behind it
        self._warned = False
        self._lock = threading.Lock()

    def follow(self) -> bool:
        """Catch up with the ledger head and the trust files; returns whether the commitments were reloaded
        (or dropped: a ledger that stops verifying serves nothing, and is checked again at every follow)."""
        with self._lock:
            self._follow_trust()
            try:
                raw = self.ledger.head_path.read_bytes()
            except OSError:
                raw = b""
            seen = (raw, _stamp(self.public_key_path), _stamp(self.heads_path) if self.heads_path else None)
            if seen == self._seen:
                return False
            if self._same_head(seen):  # the head file was rewritten, not moved: nothing to reload
                self._seen = seen
                return False
            try:
                committed, revoked, self.head, self._served = self._load()
            except Exception as exc:  # whatever went wrong, nothing is served until a load succeeds
                log.error("the ledger does not verify (%s): no passage will be served until it does", exc)
                serving = self.head is not None or bool(self._state[0])
                self._state, self.head, self._seen = ({}, set()), None, None
                return serving
            self._state = (committed, revoked)
            self._seen = seen
            return True

    def _same_head(self, seen: tuple[bytes, Any, Any]) -> bool:
        """Whether the head file now signs the very head already loaded (only its bytes changed)."""
        if self._seen is None or self._served is None or seen[1:] != self._seen[1:]:
            return False
        try:
            return verified_head(self.public_key_path, self.ledger.read_head_file()) == self._served
        except LedgerError:
            return False

    def _load(self) -> tuple[dict[str, Commitment], set[str], str | None, tuple[int, str] | None]:
        """The commitments and revocations of the ledger up to its signed head; raises if anything fails."""
        refuse_links(self.ledger.path, self.ledger.head_path)
        record = self.ledger.read_head_file()
        if not record:
            if next(self.ledger.entries(), None) is not None:
                raise LedgerError("the ledger head file is missing or unreadable")
            if self._served is not None and self._served[0] >= 0:
                raise LedgerError(f"the ledger is gone, but this service served its entry {self._served[0]}")
            return {}, set(), None, None  # nothing ingested yet
        index, head = verified_head(self.public_key_path, record)
        last = remembered_head(self.heads_path, self.ledger.path) if self.heads_path else None
        if last is None and index >= 0 and not self._warned:
            self._warned = True
            log.warning(
                "no head remembered beside the ledger key for %s: a rollback to an older signed copy is caught "
                "only against what this process has served",
                self.ledger.path,
            )
        marks = [(mark, who) for mark, who in ((last, "the key signed"), (self._served, "was served")) if mark]
        for (at, _), who in marks:
            if at > index:
                raise LedgerError(f"the signed head is entry {index}, behind entry {at} that {who} (rolled back)")
        entries = entries_to(self.ledger, index, head)
        for (at, mark), who in marks:
            if at >= 0 and entries[at].get("hash") != mark:
                raise LedgerError(f"entry {at} differs from the head that {who} (history rewritten)")
        return commitments(self.ledger.live(entries)), revoked_keyids(entries), head, (index, head)

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

    def admit(self, chunk: StoredChunk) -> StoredChunk | None:
        """The chunk carrying the metadata the ledger commits, if the ledger head commits this chunk id to this
        text, this vector and these fields and its signer is trusted now; None (logged) otherwise."""
        committed, revoked = self._state
        commitment = committed.get(chunk.id)
        why = None
        if commitment is None:
            why = "not committed by the ledger head"
        elif (difference := changed(chunk, commitment)) is not None:
            why = difference
        elif commitment.signer_keyid in revoked:
            why = "its signer's key is revoked in the ledger"
        elif self._trust is None:
            why = "the trust files are unusable"
        else:
            why = self._trust.usable(commitment.signer_keyid, datetime.now(UTC))
        if why is not None:
            log.warning("dropping chunk %s: %s", chunk.id, why)
            return None
        assert commitment is not None
        return StoredChunk(id=chunk.id, text=chunk.text, metadata=commitment.metadata(), score=chunk.score)

    def committed_ids(self) -> Container[str]:
        """The chunk ids the loaded head commits (what a BM25 index may name)."""
        return self._state[0].keys()

    def admits(self, chunk: StoredChunk) -> bool:
        return self.admit(chunk) is not None


def _stamp(path: Path) -> tuple[int, int, int] | None:
    try:
        info = path.stat()
    except OSError:
        return None
    return info.st_mtime_ns, info.st_size, info.st_ino
