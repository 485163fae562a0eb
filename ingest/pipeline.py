"""Verified ingestion: verify → policy → synthetic-content checks → chunk → embed → store → ledger.

Crash safety comes from ordering and from ids that name content. Chunk ids are
`<doc_id>@<sha256[:16]>#<n>`; chunks are written before the ledger entry that makes them live and old
versions are deleted after it. On start, `reconcile()` deletes every stored chunk that the ledger's
live documents do not account for, so a kill at any point converges on the next run.
"""

from __future__ import annotations

import fcntl
import json
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

from ingest.chunking import Chunker
from ingest.ledger import Ledger, LiveDocument
from ingest.loaders import extract_text, is_document, is_markdown
from ingest.provenance import TrustStore, Verdict, utc_now, verify_document
from rag.errors import InvalidInputError, NotFoundError
from rag.protocols import Embedder, VectorStore
from rag.settings import Settings
from rag.types import Chunk

T = TypeVar("T")


class ContentCheck(Protocol):
    """A synthetic-content check run on verified text; returns (reason, detail) to refuse it."""

    def check(self, text: str) -> tuple[str, str] | None: ...


def chunk_id(doc_id: str, sha256: str, index: int) -> str:
    return f"{doc_id}@{sha256[:16]}#{index:05d}"


def parse_chunk_id(value: str) -> tuple[str, str] | None:
    doc_id, sep, rest = value.rpartition("@")
    sha16, sep2, _ = rest.partition("#")
    if not sep or not sep2:
        return None
    return doc_id, sha16


@dataclass
class IngestReport:
    accepted: list[dict[str, Any]] = field(default_factory=list)
    replaced: list[dict[str, Any]] = field(default_factory=list)
    unchanged: list[dict[str, Any]] = field(default_factory=list)
    duplicates: list[dict[str, Any]] = field(default_factory=list)
    rejected: list[dict[str, Any]] = field(default_factory=list)
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
            "chunks": self.chunks,
            "seconds": round(self.seconds, 3),
            "chunks_per_s": round(self.chunks / self.seconds, 2) if self.seconds > 0 else 0.0,
            "repaired_chunks": self.repaired_chunks,
            "rejections": self.rejected,
        }


@dataclass
class _Pending:
    verdict: Verdict
    action: str
    chunks: list[Chunk]
    previous: LiveDocument | None


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
        self.ledger = Ledger(settings.ledger_path)
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
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    # --- public operations ----------------------------------------------------------------

    def verify(self, paths: Sequence[Path]) -> list[Verdict]:
        """Verify without writing anything (signature, digest, subject and origin policy)."""
        live = self.ledger.live()
        verdicts = []
        for document, root in discover(paths):
            verdict = self._verify_one(document, root)
            if verdict.ok:
                verdict = self._policy(verdict, live, {}) or verdict
            verdicts.append(verdict)
        return verdicts

    def ingest(self, paths: Sequence[Path], progress: Callable[[int], None] | None = None) -> IngestReport:
        """Ingest documents and folders; `progress(n)` is called as documents are handled.

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
            rejects: list[dict[str, Any]] = []
            batches = self._prepare(documents, live, report, rejects, progress)
            for batch in in_background(batches) if self.settings.ingest.prepare_ahead else batches:
                self._flush(batch)
            self.ledger.append_many(rejects)
            self._write_quarantine(report)
        if self.on_change and (report.accepted or report.replaced or report.repaired_chunks):
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
    ) -> Iterator[list[_Pending]]:
        """Decide every document in order; yield the admitted ones in batches of ~flush_chunks chunks."""
        last_reject = self._last_rejections()
        by_sha = {doc.sha256: doc.doc_id for doc in live.values()}
        totals = _origin_totals(live)
        pending: list[_Pending] = []
        size = 0
        for document, root in documents:
            verdict = self._verify_one(document, root)
            outcome = self._decide(verdict, live, by_sha, totals)
            if isinstance(outcome, _Pending):
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

    def documents(self) -> list[dict[str, Any]]:
        """What the store holds, with provenance, as the ledger records it."""
        return [_document_view(doc) for doc in sorted(self.ledger.live().values(), key=lambda d: d.doc_id)]

    def reconcile(self) -> int:
        with self._locked():
            self.ledger.repair_torn_tail()
            return self._reconcile(self.ledger.live())

    # --- steps -----------------------------------------------------------------------------

    def _verify_one(self, document: Path, root: Path) -> Verdict:
        return verify_document(document, root, self.trust, max_bytes=self.settings.ingest.max_document_bytes)

    def _decide(
        self, verdict: Verdict, live: dict[str, LiveDocument], by_sha: dict[str, str], totals: dict[str, int]
    ) -> _Pending | Verdict | str:
        if not verdict.ok:
            return verdict
        current = live.get(verdict.doc_id)
        if current is not None and current.sha256 == verdict.sha256:
            return "unchanged"
        if verdict.sha256 in by_sha and by_sha[verdict.sha256 or ""] != verdict.doc_id:
            return "duplicate"
        refused = self._policy(verdict, live, totals)
        if refused is not None:
            return refused
        return _Pending(
            verdict=verdict,
            action="replace" if current is not None else "add",
            chunks=self._chunks(verdict),
            previous=current,
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
        self.store.delete(stale)

    def _reconcile(self, live: dict[str, LiveDocument]) -> int:
        """Delete stored chunks the ledger does not account for; drop live docs missing chunks."""
        present: dict[str, int] = {}
        orphans: list[str] = []
        for value in self.store.ids():
            parsed = parse_chunk_id(value)
            doc = live.get(parsed[0]) if parsed else None
            if parsed is None or doc is None or doc.sha256[:16] != parsed[1]:
                orphans.append(value)
            else:
                present[doc.doc_id] = present.get(doc.doc_id, 0) + 1
        for doc in list(live.values()):
            if present.get(doc.doc_id, 0) != doc.chunks:
                # Stored chunks fell short of what the ledger recorded: force a fresh embed of it.
                orphans.extend(chunk_id(doc.doc_id, doc.sha256, i) for i in range(doc.chunks))
                doc.sha256 = "incomplete:" + doc.sha256
        self.store.delete(orphans)
        return len(orphans)

    def _last_rejections(self) -> dict[str, tuple[str | None, str | None]]:
        last: dict[str, tuple[str | None, str | None]] = {}
        for entry in self.ledger.entries():
            if entry.get("action") == "reject":
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


def _add_totals(totals: dict[str, int], previous: LiveDocument | None, verdict: Verdict) -> None:
    assert verdict.text is not None and verdict.predicate is not None
    if previous is not None:
        totals["all"] -= previous.chars
        if previous.origin == "human":
            totals["human"] -= previous.chars
    totals["all"] += len(verdict.text)
    if verdict.predicate.origin == "human":
        totals["human"] += len(verdict.text)


def _placeholder(verdict: Verdict, pending: _Pending) -> LiveDocument:
    assert verdict.text is not None and verdict.predicate is not None and verdict.sha256 is not None
    return LiveDocument(
        doc_id=verdict.doc_id,
        sha256=verdict.sha256,
        chunks=len(pending.chunks),
        chars=len(verdict.text),
        origin=verdict.predicate.origin,
        index=-1,
        entry={},
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
