"""Verified ingestion: verify → policy → synthetic-content checks → chunk → embed → store → ledger.

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
import queue
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

from ingest.chunking import Chunker
from ingest.ledger import Ledger, LedgerKey, LiveDocument, chunk_id, commitments, parse_chunk_id, text_sha256
from ingest.loaders import extract_text, is_document, is_markdown
from ingest.provenance import TrustedKey, TrustStore, Verdict, revoke_key, utc_now, verify_document
from rag.errors import InvalidInputError, LedgerError, NotFoundError
from rag.protocols import Embedder, VectorStore
from rag.settings import Settings
from rag.types import Chunk

T = TypeVar("T")


class ContentCheck(Protocol):
    """A synthetic-content check run on verified text; returns (reason, detail) to refuse it."""

    def check(self, text: str) -> tuple[str, str] | None: ...


__all__ = ["ContentCheck", "IngestReport", "Ingestor", "chunk_id", "discover", "in_background", "parse_chunk_id"]


@dataclass
class IngestReport:
    accepted: list[dict[str, Any]] = field(default_factory=list)
    replaced: list[dict[str, Any]] = field(default_factory=list)
    unchanged: list[dict[str, Any]] = field(default_factory=list)
    duplicates: list[dict[str, Any]] = field(default_factory=list)
    rejected: list[dict[str, Any]] = field(default_factory=list)
    withdrawn: list[dict[str, Any]] = field(default_factory=list)
    chunks: int = 0
    seconds: float = 0.0
    repaired_chunks: int = 0

    @property
    def exit_code(self) -> int:
        return 1 if self.rejected else 0

    def rejected_by_reason(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for item in self.rejected:
            counts[item["reason"]] = counts.get(item["reason"], 0) + 1
        return dict(sorted(counts.items()))

    def as_dict(self) -> dict[str, Any]:
        return {
            "accepted": len(self.accepted),
            "replaced": len(self.replaced),
            "skipped_unchanged": len(self.unchanged),
            "skipped_duplicate": len(self.duplicates),
            "rejected": len(self.rejected),
            "rejected_by_reason": self.rejected_by_reason(),
            "withdrawn": len(self.withdrawn),
            "chunks": self.chunks,
            "seconds": round(self.seconds, 3),
            "chunks_per_s": round(self.chunks / self.seconds, 2) if self.seconds > 0 else 0.0,
            "repaired_chunks": self.repaired_chunks,
            "rejections": self.rejected,
            "withdrawals": self.withdrawn,
        }


@dataclass
class _Pending:
    verdict: Verdict
    action: str
    chunks: list[Chunk]
    previous: LiveDocument | None
    notes: dict[str, Any] = field(default_factory=dict)


@dataclass
class _Withdraw:
    """A live document taken out: its signer was revoked, or its owner's new manifest is refused."""

    doc: LiveDocument
    reason: str
    detail: str
    refused: Verdict | None = None


def discover(paths: Sequence[Path]) -> list[tuple[Path, Path]]:
    """(document, corpus root) pairs; a directory is its own root, a file's root is its folder."""
    found: list[tuple[Path, Path]] = []
    for path in paths:
        if path.is_dir():
            found.extend((p, path) for p in sorted(path.rglob("*")) if p.is_file() and is_document(p))
        elif path.is_file():
            if not is_document(path):
                raise InvalidInputError(
                    f"{path} is not a supported document (.md, .txt or .html).", code="unsupported_type"
                )
            found.append((path, path.parent))
        else:
            raise InvalidInputError(f"{path} does not exist.", code="path_not_found")
    return found


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
        self.trust = trust or TrustStore.load(settings.trust_path, settings.local_trust_path)
        self.checks = list(checks)
        self.ledger = Ledger(settings.ledger_path, LedgerKey(settings.ledger_key_path))
        self.chunker = Chunker(settings.ingest.chunk_size, settings.ingest.chunk_overlap)
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
        gone = not ledger.path.exists() and not ledger.head_path.exists()
        if gone and key is not None and key.exists() and key.remembered(ledger.path):
            # The key signed a head for this ledger before. Stored chunks without it: the ledger was lost
            # (without a signed head they would be a first run's interrupted write, which reconcile removes).
            held = self._store.count() if self._store is not None else 0
            if held:
                raise LedgerError(
                    f"The ledger {ledger.path} is missing but the store holds {held} chunks; restore the "
                    "ledger (and its head), or start afresh with an empty data dir."
                )
            key.remember(ledger.path, None, None)  # an empty data dir: a new knowledge base
        ledger.check_before_append()

    # --- public operations ----------------------------------------------------------------

    def verify(self, paths: Sequence[Path]) -> list[Verdict]:
        """Verify without writing anything (signature, digest, subject and origin policy)."""
        live = self.ledger.live()
        verdicts = []
        for document, root in discover(paths):
            verdict = self._verify_one(document, root)
            owner = _owner(live.get(verdict.doc_id))
            if verdict.ok and owner is not None and owner != verdict.signer_keyid:
                verdict = _refuse(verdict, "signer_changed", _signer_changed_detail(live.get(verdict.doc_id)))
            if verdict.ok:
                verdict = self._policy(verdict, live, {}) or verdict
            verdicts.append(verdict)
        return verdicts

    def ingest(
        self,
        paths: Sequence[Path],
        progress: Callable[[int], None] | None = None,
        *,
        allow_signer_change: bool = False,
    ) -> IngestReport:
        """Ingest documents and folders; `progress(n)` is called as documents are handled.

        Documents of a revoked signer are withdrawn first. A document admitted under one signer is
        replaced or withdrawn only under the same signer unless `allow_signer_change` (then recorded).

        With `ingest.prepare_ahead`, verifying, checking and chunking run on a helper thread one batch
        ahead, while this thread embeds and writes the previous batch (torch and Chroma release the
        GIL). Either way batches are written in order, each before its ledger entries, so the
        crash-safety argument is the same.
        """
        documents = discover(paths)
        started = time.perf_counter()
        report = IngestReport()
        with self._locked():
            self.ledger.repair_torn_tail()
            live = self.ledger.live()
            report.repaired_chunks = self._reconcile(live)
            # Before any decision, so a new owner's version of a withdrawn document is an ordinary add.
            self._withdraw(self._revoked(live), live, report)
            rejects: list[dict[str, Any]] = []
            withdrawals: list[_Withdraw] = []
            batches = self._prepare(documents, live, report, rejects, progress, withdrawals, allow_signer_change)
            for batch in in_background(batches) if self.settings.ingest.prepare_ahead else batches:
                self._flush(batch)
            self._withdraw(withdrawals, live, report)
            self.ledger.append_many(rejects)
            self._write_quarantine(report)
        if self.on_change and (report.accepted or report.replaced or report.withdrawn or report.repaired_chunks):
            self.on_change()
        report.seconds = time.perf_counter() - started
        return report

    def _prepare(
        self,
        documents: list[tuple[Path, Path]],
        live: dict[str, LiveDocument],
        report: IngestReport,
        rejects: list[dict[str, Any]],
        progress: Callable[[int], None] | None,
        withdrawals: list[_Withdraw],
        allow_signer_change: bool = False,
    ) -> Iterator[list[_Pending]]:
        """Decide every document in order; yield the admitted ones in batches of ~flush_chunks chunks."""
        last_reject = self._last_rejections()
        by_sha = {doc.sha256: doc.doc_id for doc in live.values()}
        totals = _origin_totals(live)
        pending: list[_Pending] = []
        size = 0
        for document, root in documents:
            verdict = self._verify_one(document, root)
            outcome = self._decide(verdict, live, by_sha, totals, allow_signer_change=allow_signer_change)
            if isinstance(outcome, _Withdraw):
                # Applied after the batches are written; until then it no longer counts as live.
                withdrawals.append(outcome)
                live.pop(verdict.doc_id, None)
                if by_sha.get(outcome.doc.sha256) == verdict.doc_id:
                    del by_sha[outcome.doc.sha256]
                _drop_totals(totals, outcome.doc)
                assert outcome.refused is not None
                report.rejected.append({**outcome.refused.as_dict(), "time": utc_now()})
            elif isinstance(outcome, _Pending):
                pending.append(outcome)
                size += len(outcome.chunks)
                live[verdict.doc_id] = _placeholder(verdict, outcome)
                by_sha[verdict.sha256 or ""] = verdict.doc_id
                _add_totals(totals, outcome.previous, verdict)
                (report.replaced if outcome.action == "replace" else report.accepted).append(_summary(verdict))
                report.chunks += len(outcome.chunks)
            elif outcome == "unchanged":
                report.unchanged.append(_summary(verdict))
            elif outcome == "duplicate":
                report.duplicates.append({**_summary(verdict), "duplicate_of": by_sha.get(verdict.sha256 or "")})
            else:
                refused = outcome if isinstance(outcome, Verdict) else verdict
                report.rejected.append({**refused.as_dict(), "time": utc_now()})
                if last_reject.get(refused.doc_id) != (refused.sha256, refused.reason):
                    rejects.append(_reject_record(refused))
                    last_reject[refused.doc_id] = (refused.sha256, refused.reason)
            if size >= self.settings.ingest.flush_chunks:
                yield pending
                pending, size = [], 0
            if progress:
                progress(1)
        if pending:
            yield pending

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
        """Revoke a signer in `trust_file` and record it in the ledger; (entry, whether it was new).

        The next ingest withdraws the signer's documents. The trust file is written first, so a crash
        between the two leaves the key revoked (only the ledger line missing), never the reverse.
        """
        with self._locked():
            in_file = TrustStore.load(trust_file)
            entry = TrustStore({**self.trust.keys, **in_file.keys}).resolve(keyid)
            already = in_file.get(entry.keyid)
            if already is not None and already.revoked:
                return already, False
            revoked = revoke_key(trust_file, entry, reason=reason)
            self.ledger.append(
                {
                    "action": "revoke",
                    "signer_keyid": revoked.keyid,
                    "signer_name": revoked.name,
                    "reason": reason,
                    "trust_file": str(trust_file),
                    "revoked_at": revoked.revoked_at,
                }
            )
        self.trust = TrustStore({**self.trust.keys, revoked.keyid: revoked})
        return revoked, True

    def documents(self, *, include_withdrawn: bool = False) -> list[dict[str, Any]]:
        """What the store holds, with provenance, as the ledger records it; optionally what was withdrawn."""
        live = self.ledger.live()
        views = [{**_document_view(doc), "status": "live"} for doc in live.values()]
        if include_withdrawn:
            admitted: dict[str, dict[str, Any]] = {}
            last: dict[str, dict[str, Any]] = {}
            for entry in self.ledger.entries():
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

    def reconcile(self) -> int:
        with self._locked():
            self.ledger.repair_torn_tail()
            return self._reconcile(self.ledger.live())

    # --- steps -----------------------------------------------------------------------------

    def _verify_one(self, document: Path, root: Path) -> Verdict:
        return verify_document(document, root, self.trust, max_bytes=self.settings.ingest.max_document_bytes)

    def _decide(
        self,
        verdict: Verdict,
        live: dict[str, LiveDocument],
        by_sha: dict[str, str],
        totals: dict[str, int],
        *,
        allow_signer_change: bool = False,
    ) -> _Pending | _Withdraw | Verdict | str:
        """What to do with one verified document: pending write, withdrawal, refusal or a skip."""
        if not verdict.ok:
            return verdict
        current = live.get(verdict.doc_id)
        owner = _owner(current)
        changed_signer = owner is not None and owner != verdict.signer_keyid
        if changed_signer and not allow_signer_change:
            return _refuse(verdict, "signer_changed", _signer_changed_detail(current))
        if (
            current is not None
            and current.sha256 == verdict.sha256
            and current.entry.get("manifest_sha256") == verdict.manifest_sha256
        ):
            return "unchanged"
        if verdict.sha256 in by_sha and by_sha[verdict.sha256 or ""] != verdict.doc_id:
            return "duplicate"
        # A new manifest for the same text is a new decision: the policy runs again on what it claims.
        refused = self._policy(verdict, live, totals)
        if refused is not None:
            if current is not None and current.sha256 == verdict.sha256:
                # The owner now says something the policy refuses about this very text: it goes.
                return _Withdraw(current, str(refused.reason), refused.detail, refused)
            return refused
        notes = {"signer_change": {"from": owner, "to": verdict.signer_keyid}} if changed_signer else {}
        return _Pending(
            verdict=verdict,
            action="replace" if current is not None else "add",
            chunks=self._chunks(verdict),
            previous=current,
            notes=notes,
        )

    def _policy(self, verdict: Verdict, live: dict[str, LiveDocument], totals: dict[str, int]) -> Verdict | None:
        assert verdict.predicate is not None and verdict.text is not None
        origin = verdict.predicate.origin
        policy = self.settings.ingest
        if origin not in policy.allowed_origins or origin == "ai-generated":
            return _refuse(verdict, "disallowed_origin", f"origin {origin!r} is not admitted by the policy")
        for check in self.checks:
            found = check.check(verdict.text)
            if found is not None:
                return _refuse(verdict, found[0], found[1])
        if origin != "human":
            totals = totals or _origin_totals(live)
            previous = live.get(verdict.doc_id)
            human = totals["human"] - (previous.chars if previous and previous.origin == "human" else 0)
            total = totals["all"] - (previous.chars if previous else 0) + len(verdict.text)
            share = human / total if total else 0.0
            if share < policy.human_floor:
                return _refuse(
                    verdict,
                    "human_floor",
                    f"human share would fall to {share:.3f}, under the floor {policy.human_floor}",
                )
        return None

    def _revoked(self, live: dict[str, LiveDocument]) -> list[_Withdraw]:
        """Live documents whose signer is revoked in the trust store this run uses."""
        found = []
        for doc in live.values():
            entry = self.trust.get(_owner(doc) or "")
            if entry is not None and entry.revoked:
                why = f": {entry.revoked_reason}" if entry.revoked_reason else ""
                found.append(_Withdraw(doc, "revoked_signer", f"key of {entry.name} was revoked{why}"))
        return found

    def _withdraw(self, items: list[_Withdraw], live: dict[str, LiveDocument], report: IngestReport) -> None:
        """Record each withdrawal in the ledger, then delete its chunks (the ledger entry comes first)."""
        for item in items:
            doc = item.doc
            record: dict[str, Any] = {
                "action": "withdraw",
                "doc_id": doc.doc_id,
                "sha256": doc.sha256,
                "reason": item.reason,
                "detail": item.detail,
                "signer_keyid": _owner(doc),
            }
            if item.refused is not None:
                record["manifest_sha256"] = item.refused.manifest_sha256
                record["refused_signer_keyid"] = item.refused.signer_keyid
            self.ledger.append(record)
            self.store.delete([chunk_id(doc.doc_id, doc.sha256, i) for i in range(doc.chunks)])
            live.pop(doc.doc_id, None)
            report.withdrawn.append({"doc_id": doc.doc_id, "sha256": doc.sha256, "reason": item.reason})

    def _chunks(self, verdict: Verdict) -> list[Chunk]:
        assert verdict.predicate is not None and verdict.text is not None and verdict.sha256 is not None
        path = Path(verdict.path)
        pieces = self.chunker.split(extract_text(path, verdict.text), markdown=is_markdown(path))
        predicate = verdict.predicate
        base: dict[str, Any] = {
            "doc_id": verdict.doc_id,
            "path": verdict.doc_id,
            "title": predicate.title,
            "authors": "; ".join(predicate.authors),
            "license": predicate.license,
            "origin": predicate.origin,
            "signer_keyid": verdict.signer_keyid or "",
            "signer_name": verdict.signer_name or "",
            "doc_sha256": verdict.sha256,
            "manifest_sha256": verdict.manifest_sha256 or "",
            "source_uri": predicate.source_uri or "",
        }
        return [
            Chunk(
                id=chunk_id(verdict.doc_id, verdict.sha256, i),
                doc_id=verdict.doc_id,
                index=i,
                text=piece.text,
                sha256=piece.sha256,
                heading_path=piece.heading_path,
                metadata={**base, "chunk_index": i, "chunk_sha256": piece.sha256, "heading_path": piece.heading_path},
            )
            for i, piece in enumerate(pieces)
        ]

    def _flush(self, pending: list[_Pending]) -> None:
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
        self.ledger.append_many([_live_record(item) for item in pending])
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
        """Make the store hold only what the ledger commits: delete stored chunks it does not commit or whose
        text no longer hashes to the commitment; a live document left short is marked for a fresh embed.

        Reads the text of every committed chunk (Chroma returned ~500 chunks in well under a second)."""
        committed = commitments(live)
        stored = self.store.ids()
        orphans = [value for value in stored if value not in committed]
        present = [value for value in stored if value in committed]
        changed = [c.id for c in self.store.get(present) if text_sha256(c.text) != committed[c.id].sha256]
        orphans.extend(changed)
        held = Counter(committed[value].doc_id for value in present if value not in set(changed))
        for doc in list(live.values()):
            if held.get(doc.doc_id, 0) != doc.chunks:
                # Stored chunks fell short of what the ledger commits (or it commits none): embed it afresh.
                doc.sha256 = "incomplete:" + doc.sha256
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
        current: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}
        for item in report.accepted + report.replaced + report.unchanged:
            current.pop(item["path"], None)
        for item in report.rejected:
            current[item["path"]] = item
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(current, indent=2, sort_keys=True) + "\n")
        os.replace(tmp, path)


def in_background(items: Iterator[T], depth: int = 1) -> Iterator[T]:
    """Iterate `items` on a helper thread, at most `depth` items ahead of the consumer.

    An error in the producer is raised in the consumer; when the consumer stops early (or fails),
    the producer is told to stop and is joined before this generator returns.
    """
    channel: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(kind: str, value: Any) -> bool:
        while not stop.is_set():
            try:
                channel.put((kind, value), timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put("item", item):
                    return
            put("done", None)
        except BaseException as exc:  # handed over to the consumer, which raises it
            put("error", exc)

    thread = threading.Thread(target=produce, name="ingest-prepare", daemon=True)
    thread.start()
    try:
        while True:
            kind, value = channel.get()
            if kind == "done":
                return
            if kind == "error":
                raise value
            yield value
    finally:
        stop.set()
        thread.join()


def _refuse(verdict: Verdict, reason: str, detail: str) -> Verdict:
    return Verdict(**{**verdict.__dict__, "ok": False, "reason": reason, "detail": detail})


def _origin_totals(live: dict[str, LiveDocument]) -> dict[str, int]:
    totals = {"human": 0, "all": 0}
    for doc in live.values():
        totals["all"] += doc.chars
        if doc.origin == "human":
            totals["human"] += doc.chars
    return totals


def _drop_totals(totals: dict[str, int], previous: LiveDocument) -> None:
    totals["all"] -= previous.chars
    if previous.origin == "human":
        totals["human"] -= previous.chars


def _add_totals(totals: dict[str, int], previous: LiveDocument | None, verdict: Verdict) -> None:
    assert verdict.text is not None and verdict.predicate is not None
    if previous is not None:
        _drop_totals(totals, previous)
    totals["all"] += len(verdict.text)
    if verdict.predicate.origin == "human":
        totals["human"] += len(verdict.text)


def _owner(doc: LiveDocument | None) -> str | None:
    """The key id a live document was admitted under (None for one decided earlier in this run)."""
    return (doc.entry.get("signer_keyid") or None) if doc is not None else None


def _signer_changed_detail(doc: LiveDocument | None) -> str:
    assert doc is not None
    name = doc.entry.get("signer_name") or "another signer"
    owner = _owner(doc) or ""
    return f"admitted under {name} (key {owner[:16]}…); pass --allow-signer-change to let another signer replace it"


def _placeholder(verdict: Verdict, pending: _Pending) -> LiveDocument:
    assert verdict.text is not None and verdict.predicate is not None and verdict.sha256 is not None
    return LiveDocument(
        doc_id=verdict.doc_id,
        sha256=verdict.sha256,
        chunks=len(pending.chunks),
        chars=len(verdict.text),
        origin=verdict.predicate.origin,
        index=-1,
        entry={"signer_keyid": verdict.signer_keyid, "manifest_sha256": verdict.manifest_sha256},
    )


def _summary(verdict: Verdict) -> dict[str, Any]:
    return {"path": verdict.path, "doc_id": verdict.doc_id, "sha256": verdict.sha256}


def _live_record(item: _Pending) -> dict[str, Any]:
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
