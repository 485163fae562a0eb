"""Verified ingestion: verify → policy → synthetic-content checks → chunk → embed → store → ledger.

What each document becomes is decided in `ingest.decisions`; this module writes it.

Crash safety comes from ordering and from ids that name content. Chunk ids are
`<doc_id>@<sha256[:16]>#<n>`; chunks are written before the ledger entry that makes them live and old
versions are deleted after it. On start, `reconcile()` deletes every stored chunk that the ledger's
live documents do not commit (id and text hash), so a kill at any point converges on the next run.
Every write first verifies the ledger (chain and signed head) and refuses with `ledger_corrupt`.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from ingest.background import in_background
from ingest.commitments import changed, commitments, signed_entries
from ingest.decisions import ContentCheck, Decider, IngestReport, Pending, Withdraw, owner_of
from ingest.files import printable_path, read_json_object
from ingest.ledger import Ledger, LiveDocument, chunk_id, parse_chunk_id, revoked_keyids
from ingest.ledger_head import LedgerKey
from ingest.loaders import is_document
from ingest.provenance import Verdict
from ingest.trust import TrustedKey, TrustStore, revoke_key, utc_now
from rag.errors import BackendUnavailableError, InvalidInputError, LedgerError, NotFoundError
from rag.protocols import Embedder, VectorStore
from rag.settings import Settings
from rag.types import Chunk

T = TypeVar("T")

__all__ = ["Ingestor", "chunk_id", "discover", "in_background", "parse_chunk_id"]


def discover(paths: Sequence[Path]) -> list[tuple[Path, Path]]:
    """(document, corpus root) pairs; a directory is its own root, a file's root is its folder.

    Everything named like a document is listed whatever it is (a folder, a FIFO, a link), so that verification
    refuses it with a reason code instead of skipping it unseen; so is a linked folder (never entered) and a
    folder that cannot be listed. A path given here that is a link to a folder is followed: it is the root."""
    found: list[tuple[Path, Path]] = []
    for path in paths:
        if path.is_dir():
            found.extend((entry, path) for entry in _walk(path))
        elif os.path.lexists(path):
            if not is_document(path):
                raise InvalidInputError(
                    f"{printable_path(path)} is not a supported document (.md, .markdown, .txt, .html or .htm).",
                    code="unsupported_type",
                )
            found.append((path, path.parent))
        else:
            raise InvalidInputError(f"{printable_path(path)} does not exist.", code="path_not_found")
    return found


def _walk(root: Path) -> list[Path]:
    """Entries under `root` to decide on, in path order, without following links (os.walk does not enter a
    linked folder)."""
    found: list[Path] = []
    unlisted: list[Path] = []

    def failed(error: OSError) -> None:
        if error.filename is not None and Path(error.filename) != root:
            unlisted.append(Path(error.filename))
        else:
            raise InvalidInputError(
                f"The folder {printable_path(root)} cannot be read: {(error.strerror or 'error').lower()}.",
                code="unreadable",
            )

    for folder, dirs, files in os.walk(root, onerror=failed, followlinks=False):
        here = Path(folder)
        for name in dirs:
            entry = here / name
            if is_document(entry) or entry.is_symlink():
                found.append(entry)
        found.extend(here / name for name in files if is_document(here / name))
    return sorted(set(found + unlisted))


class Ingestor:
    """Admits only verified documents into the store and records every decision in the ledger."""

    def __init__(
        self,
        settings: Settings,
        store: VectorStore | None,
        embedder: Embedder | None,
        *,
        trust: TrustStore | None = None,
        checks: Sequence[ContentCheck] = (),
        on_change: Callable[[], None] | None = None,
    ) -> None:
        self.settings = settings
        # Read-only uses (verify, documents) need neither a store nor an embedder.
        self._store = store
        self._embedder = embedder
        trust = trust or TrustStore.load(settings.trust_path, settings.local_trust_path)
        self.decider = Decider(settings.ingest, trust, checks)
        self.ledger = Ledger(settings.ledger_path, LedgerKey(settings.ledger_key_path))
        self.on_change = on_change

    @property
    def store(self) -> VectorStore:
        if self._store is None:
            raise RuntimeError("this Ingestor was built without a vector store")
        return self._store

    @property
    def embedder(self) -> Embedder:
        if self._embedder is None:
            raise RuntimeError("this Ingestor was built without an embedder")
        return self._embedder

    @contextmanager
    def _locked(self) -> Iterator[None]:
        self.settings.data_dir.mkdir(parents=True, exist_ok=True)
        with (self.settings.data_dir / "ingest.lock").open("w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                self._check_ledger()
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _check_ledger(self) -> None:
        """Refuse (`ledger_corrupt`) to write on a ledger that does not verify, or beside a store it lost."""
        ledger, key = self.ledger, self.ledger.key
        if not ledger.path.exists() and not ledger.head_path.exists():
            # A new ledger starts with a signed genesis head before anything is written, so stored chunks
            # without ledger and head mean the ledger was lost, never a first run's interrupted write.
            held = self._store.count() if self._store is not None else 0
            if held:
                raise LedgerError(
                    f"The ledger {ledger.path} and its head are missing but the store holds {held} chunks; "
                    "restore them, or start afresh with `rag ledger reset --yes` (deletes every stored chunk)."
                )
            last = key.remembered(ledger.path) if key is not None and key.exists() else None
            if last is not None and isinstance(last.get("index"), int) and last["index"] >= 0:
                # An emptied data dir is not taken as a new knowledge base: an older copy put back later would
                # then pass as this ledger. Only the operator starts afresh (`rag ledger reset`).
                raise LedgerError(
                    f"The ledger {ledger.path} and its head are missing, but the ledger key signed a head at entry "
                    f"{last['index']} for it; restore them, or start afresh with `rag ledger reset --yes`."
                )
        ledger.check_before_append()
        # Key ids the verified ledger records a revoke for are revoked, whatever the trust files say now.
        self.decider.trust = self.decider.trust.with_revoked(revoked_keyids(ledger.entries()))
        self.decider.removed = ledger.removed()

    # --- public operations ----------------------------------------------------------------

    def verify(self, paths: Sequence[Path]) -> list[Verdict]:
        """Verify without writing anything (signature, digest, subject and origin policy)."""
        entries = list(self.ledger.entries())
        self.decider.trust = self.decider.trust.with_revoked(revoked_keyids(entries))
        self.decider.removed = self.ledger.removed(entries)
        return self.decider.verify(discover(paths), self.ledger.live(entries))

    def ingest(
        self,
        paths: Sequence[Path],
        progress: Callable[[int], None] | None = None,
        *,
        allow_signer_change: bool = False,
        documents: list[tuple[Path, Path]] | None = None,
    ) -> IngestReport:
        """Ingest documents and folders; `progress(n)` is called as documents are handled.

        `documents`: (document, corpus root) pairs to ingest as well, as `discover` would name them.

        Documents of a revoked signer are withdrawn first. A document admitted under one signer is
        replaced or withdrawn only under the same signer unless `allow_signer_change` (then recorded).

        With `ingest.prepare_ahead`, verifying, checking and chunking run on a helper thread one batch
        ahead, while this thread embeds and writes the previous batch (torch and Chroma release the
        GIL). Either way batches are written in order, each before its ledger entries, so the
        crash-safety argument is the same.
        """
        documents = discover(paths) + list(documents or [])
        started = time.perf_counter()
        report = IngestReport()
        with self._locked():
            for check in self.decider.checks:  # e.g. the own-output registry against its pin (registry_tampered)
                getattr(check, "before_ingest", lambda: None)()
            self.ledger.repair_torn_tail()
            live = self.ledger.live()
            report.repaired_chunks = self._reconcile(live)
            # Before any decision, so a new owner's version of a withdrawn document is an ordinary add.
            self._withdraw(self.decider.revoked(live), live, report)
            rejects: list[Verdict] = []
            withdrawals: list[Withdraw] = []
            batches = self.decider.prepare(
                documents, live, report, rejects, progress, withdrawals, self._last_rejections(), allow_signer_change
            )
            for batch in in_background(batches) if self.settings.ingest.prepare_ahead else batches:
                self._flush(batch)
            self._withdraw(withdrawals, live, report)
            self.ledger.append_many([_reject_record(refused) for refused in rejects])
            self._write_quarantine(report)
        if self.on_change and (report.accepted or report.replaced or report.withdrawn or report.repaired_chunks):
            self.on_change()
        report.seconds = time.perf_counter() - started
        return report

    def remove(self, doc_id: str) -> LiveDocument:
        """Remove a document: the ledger records it first, then its chunks are deleted."""
        with self._locked():
            live = self.ledger.live()
            doc = live.get(doc_id)
            if doc is None:
                raise NotFoundError(
                    f"No document with id {doc_id!r} is in the knowledge base.", code="unknown_document"
                )
            self.ledger.append({"action": "remove", "doc_id": doc_id, "sha256": doc.sha256})
            self.store.delete([chunk_id(doc_id, doc.sha256, i) for i in range(doc.chunks)])
        if self.on_change:
            self.on_change()
        return doc

    def revoke(self, keyid: str, trust_file: Path, reason: str | None = None) -> tuple[TrustedKey, bool]:
        """Revoke a signer in `trust_file` (one of the configured trust files) and record it in the ledger;
        (entry, whether anything was written). The ledger entry is what makes it stick: a key id with a
        `revoke` entry is revoked at ingest and at answer time whatever the trust files say later.

        The trust file is written first; a crash between the two leaves the ledger line missing, and running
        the command again appends it. The next ingest withdraws the signer's documents.
        """
        configured = {path.resolve() for path in (self.settings.trust_path, self.settings.local_trust_path)}
        if trust_file.resolve() not in configured:
            raise InvalidInputError(
                f"{trust_file} is not a trust file this deployment reads ({self.settings.trust_path} or "
                f"{self.settings.local_trust_path}); a revocation recorded there would change nothing.",
                code="trust_file_not_configured",
            )
        with self._locked():
            in_file = TrustStore.load(trust_file)
            entry = TrustStore({**self.decider.trust.keys, **in_file.keys}).resolve(keyid)
            already = in_file.get(entry.keyid)
            recorded = entry.keyid in revoked_keyids(self.ledger.entries())
            if already is not None and already.revoked and recorded:
                return already, False
            revoked = revoke_key(trust_file, entry, reason=reason)
            if not recorded:
                self.ledger.append(
                    {
                        "action": "revoke",
                        "signer_keyid": revoked.keyid,
                        "signer_name": revoked.name,
                        "reason": revoked.revoked_reason,
                        "trust_file": str(trust_file),
                        "revoked_at": revoked.revoked_at,
                    }
                )
        self.decider.trust = TrustStore({**self.decider.trust.keys, revoked.keyid: revoked})
        return revoked, True

    def documents(self, *, include_withdrawn: bool = False) -> list[dict[str, Any]]:
        """What the store holds, with provenance, as the ledger's signed head commits it (`ledger_corrupt` if the
        head or chain does not verify: an edited ledger lists nothing); optionally what was withdrawn."""
        entries = signed_entries(self.ledger, self.settings.ledger_public_key)
        return self.ledger.documents(include_withdrawn=include_withdrawn, entries=entries)

    def reconcile(self) -> int:
        with self._locked():
            self.ledger.repair_torn_tail()
            return self._reconcile(self.ledger.live())

    # --- steps -----------------------------------------------------------------------------

    def _withdraw(self, items: list[Withdraw], live: dict[str, LiveDocument], report: IngestReport) -> None:
        """Record each withdrawal in the ledger, then delete its chunks (the ledger entry comes first)."""
        for item in items:
            doc = item.doc
            record: dict[str, Any] = {
                "action": "withdraw",
                "doc_id": doc.doc_id,
                "sha256": doc.sha256,
                "reason": item.reason,
                "detail": item.detail,
                "signer_keyid": owner_of(doc),
            }
            if item.refused is not None:
                record["manifest_sha256"] = item.refused.manifest_sha256
                record["refused_signer_keyid"] = item.refused.signer_keyid
            self.ledger.append(record)
            self.store.delete([chunk_id(doc.doc_id, doc.sha256, i) for i in range(doc.chunks)])
            live.pop(doc.doc_id, None)
            report.withdrawn.append({"doc_id": doc.doc_id, "sha256": doc.sha256, "reason": item.reason})

    def _flush(self, pending: list[Pending]) -> None:
        if not pending:
            return
        next_index, _ = self.ledger.tail()
        ingested_at = utc_now()
        chunks: list[Chunk] = []
        for offset, item in enumerate(pending):
            stamp = {"ledger_index": next_index + offset, "ingested_at": ingested_at}
            chunks.extend(Chunk(**{**c.__dict__, "metadata": {**c.metadata, **stamp}}) for c in item.chunks)
        embeddings = self.embedder.embed([c.text for c in chunks])
        self.store.upsert(chunks, embeddings)
        # The entry commits each vector as the store holds it (read back: the store may rescale it).
        stored = {c.id: c.vector_sha256 for c in self.store.get([c.id for c in chunks], vectors=True)}
        missing = [c.id for c in chunks if not stored.get(c.id)]
        if missing:
            raise BackendUnavailableError(
                f"The vector store did not keep {len(missing)} of the chunks just written (e.g. {missing[0]})."
            )
        self.ledger.append_many([_live_record(item, stored) for item in pending])
        stale = [
            chunk_id(item.previous.doc_id, item.previous.sha256, i)
            for item in pending
            if item.previous is not None
            for i in range(item.previous.chunks)
        ]
        # A new manifest for unchanged text rewrites the same chunk ids: keep what was just written.
        written = {c.id for c in chunks}
        self.store.delete([value for value in stale if value not in written])

    def _reconcile(self, live: dict[str, LiveDocument]) -> int:
        """Make the store hold only what the ledger commits: delete stored chunks it does not commit, whose text
        or vector no longer hashes to the commitment or whose metadata differs from the ledger entry; a live
        document left short (or whose entry commits no vectors) is marked `incomplete`, for a fresh embed.

        Reads the text and vector of every committed chunk (Chroma returned ~500 chunks in well under a second)."""
        committed = commitments(live)
        stored = self.store.ids()
        orphans = [value for value in stored if value not in committed]
        present = [value for value in stored if value in committed]
        edited = {c.id for c in self.store.get(present, vectors=True) if changed(c, committed[c.id]) is not None}
        orphans.extend(edited)
        held = Counter(committed[value].doc_id for value in present if value not in edited)
        for doc in list(live.values()):
            if held.get(doc.doc_id, 0) != doc.chunks:
                # Stored chunks fell short of what the ledger commits (or it commits none): embed it afresh.
                doc.incomplete = True
        self.store.delete(orphans)
        return len(orphans)

    def _last_rejections(self) -> dict[str, tuple[str | None, str | None]]:
        last: dict[str, tuple[str | None, str | None]] = {}
        for entry in self.ledger.entries():
            if entry.get("action") in ("reject", "withdraw"):
                last[entry["doc_id"]] = (entry.get("sha256"), entry.get("reason"))
            else:
                last.pop(entry.get("doc_id", ""), None)
        return last

    def _write_quarantine(self, report: IngestReport) -> None:
        path = self.settings.quarantine_path
        current = read_json_object(path)
        for item in report.accepted + report.replaced + report.unchanged:
            current.pop(item["path"], None)
        for item in report.rejected:
            current[item["path"]] = item
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(current, indent=2, sort_keys=True) + "\n")
        os.replace(tmp, path)


def _live_record(item: Pending, vectors: dict[str, str | None]) -> dict[str, Any]:
    verdict = item.verdict
    assert verdict.predicate is not None and verdict.text is not None
    predicate = verdict.predicate
    return {
        "action": item.action,
        "doc_id": verdict.doc_id,
        "sha256": verdict.sha256,
        "manifest_sha256": verdict.manifest_sha256,
        "chunks": len(item.chunks),
        "chars": len(verdict.text),
        "origin": predicate.origin,
        "title": predicate.title,
        "authors": predicate.authors,
        "license": predicate.license,
        "source_uri": predicate.source_uri,
        "created": predicate.created,
        "curator": predicate.curator.name,
        "reviewed_at": predicate.curator.reviewed_at,
        "signer_keyid": verdict.signer_keyid,
        "signer_name": verdict.signer_name,
        "replaces": item.previous.sha256 if item.previous else None,
        # The commitment: chunk n is `chunk_id(doc_id, sha256, n)` and its text hashes to this.
        "chunk_sha256": [chunk.sha256 for chunk in item.chunks],
        # ... and its stored vector hashes to this (`rag.stores.vector_sha256`).
        "vector_sha256": [vectors[chunk.id] for chunk in item.chunks],
        **item.notes,
    }


def _reject_record(verdict: Verdict) -> dict[str, Any]:
    return {
        "action": "reject",
        "doc_id": verdict.doc_id,
        "sha256": verdict.sha256,
        "reason": verdict.reason,
        "detail": verdict.detail,
        "signer_keyid": verdict.signer_keyid,
    }
