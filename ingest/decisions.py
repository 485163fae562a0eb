"""The decide half of ingestion: what to do with each document, before anything is written.

A document is verified (signature, digest, subject), then checked against ownership (a document admitted
under one signer changes only under the same signer), the origin policy with its human floor and the
synthetic-content checks. The outcome is a pending write (an add or a replace, already chunked), a
withdrawal, a refusal or a skip; `ingest.pipeline` writes them, in order. A new manifest for the same
text is a new decision: the policy runs again on what it claims.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from ingest.chunking import Chunker
from ingest.ledger import LiveDocument, chunk_id
from ingest.loaders import extract_text, is_markdown
from ingest.provenance import Verdict, is_blank, verify_document
from ingest.trust import TrustStore, utc_now
from rag.guardrails.detector import SyntheticTextCheck
from rag.settings import IngestSettings
from rag.types import Chunk


class ContentCheck(Protocol):
    """A synthetic-content check run on verified text; returns (reason, detail) to refuse it."""

    def check(self, text: str) -> tuple[str, str] | None: ...


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
class Pending:
    """An admitted document waiting to be embedded and written (`add`, or `replace` of `previous`)."""

    verdict: Verdict
    action: str
    chunks: list[Chunk]
    previous: LiveDocument | None
    notes: dict[str, Any] = field(default_factory=dict)


@dataclass
class Withdraw:
    """A live document taken out: its signer was revoked, or its owner's new manifest is refused."""

    doc: LiveDocument
    reason: str
    detail: str
    refused: Verdict | None = None


class Decider:
    """Decides, document by document, what an ingest writes; it reads the trust store and writes nothing."""

    def __init__(self, settings: IngestSettings, trust: TrustStore, checks: Sequence[ContentCheck] = ()) -> None:
        self.settings = settings
        self.trust = trust
        self.checks = list(checks)
        self.chunker = Chunker(settings.chunk_size, settings.chunk_overlap)
        # Documents removed by their owner (the last admitting entry of each): still theirs (`held_by`).
        self.removed: dict[str, LiveDocument] = {}

    def held_by(self, doc_id: str, live: dict[str, LiveDocument]) -> LiveDocument | None:
        """The admitted document whose signer owns `doc_id`: the live one, or one its owner removed. A removal
        does not free the name for another signer (remove, then upload would be a takeover); a withdrawal
        (revoked signer, refused manifest) does."""
        return live.get(doc_id) or self.removed.get(doc_id)

    def verify_one(self, document: Path, root: Path) -> Verdict:
        return verify_document(document, root, self.trust, max_bytes=self.settings.max_document_bytes)

    def verify(self, documents: list[tuple[Path, Path]], live: dict[str, LiveDocument]) -> list[Verdict]:
        """Verdicts without writing anything (signature, digest, subject, ownership and origin policy)."""
        verdicts = []
        folded, decided = _folded(live), dict[str, str]()
        for document, root in documents:
            verdict = _collision(self.verify_one(document, root), folded, decided)
            held = self.held_by(verdict.doc_id, live)
            owner = owner_of(held)
            if verdict.ok and owner is not None and owner != verdict.signer_keyid:
                verdict = _refuse(verdict, "signer_changed", _signer_changed_detail(held))
            if verdict.ok:
                verdict = self.policy(verdict, live, {}) or verdict
            verdicts.append(verdict)
        return verdicts

    def prepare(
        self,
        documents: list[tuple[Path, Path]],
        live: dict[str, LiveDocument],
        report: IngestReport,
        rejects: list[Verdict],
        progress: Callable[[int], None] | None,
        withdrawals: list[Withdraw],
        last_reject: dict[str, tuple[str | None, str | None]],
        allow_signer_change: bool = False,
    ) -> Iterator[list[Pending]]:
        """Decide every document in order; yield the admitted ones in batches of ~flush_chunks chunks.

        `live` follows the decisions as they are made; refusals not already the last word in the ledger
        (`last_reject`: doc id → (sha256, reason)) are collected in `rejects` for it."""
        by_sha = {doc.sha256: doc.doc_id for doc in live.values()}
        totals = _origin_totals(live)
        folded, decided = _folded(live), dict[str, str]()
        pending: list[Pending] = []
        size = 0
        for document, root in documents:
            verdict = _collision(self.verify_one(document, root), folded, decided)
            outcome = self.decide(verdict, live, by_sha, totals, allow_signer_change=allow_signer_change)
            if isinstance(outcome, Withdraw):
                # Applied after the batches are written; until then it no longer counts as live.
                withdrawals.append(outcome)
                live.pop(verdict.doc_id, None)
                if by_sha.get(outcome.doc.sha256) == verdict.doc_id:
                    del by_sha[outcome.doc.sha256]
                _drop_totals(totals, outcome.doc)
                assert outcome.refused is not None
                report.rejected.append({**outcome.refused.as_dict(), "time": utc_now()})
            elif isinstance(outcome, Pending):
                pending.append(outcome)
                size += len(outcome.chunks)
                live[verdict.doc_id] = _placeholder(verdict, outcome)
                folded[fold_id(verdict.doc_id)] = verdict.doc_id
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
                    rejects.append(refused)
                    last_reject[refused.doc_id] = (refused.sha256, refused.reason)
            if size >= self.settings.flush_chunks:
                yield pending
                pending, size = [], 0
            if progress:
                progress(1)
        if pending:
            yield pending

    def decide(
        self,
        verdict: Verdict,
        live: dict[str, LiveDocument],
        by_sha: dict[str, str],
        totals: dict[str, int],
        *,
        allow_signer_change: bool = False,
    ) -> Pending | Withdraw | Verdict | str:
        """What to do with one verified document: pending write, withdrawal, refusal or a skip."""
        if not verdict.ok:
            return verdict
        current = live.get(verdict.doc_id)
        held = self.held_by(verdict.doc_id, live)
        owner = owner_of(held)
        changed_signer = owner is not None and owner != verdict.signer_keyid
        if changed_signer and not allow_signer_change:
            return _refuse(verdict, "signer_changed", _signer_changed_detail(held))
        if (
            current is not None
            and current.sha256 == verdict.sha256
            and current.entry.get("manifest_sha256") == verdict.manifest_sha256
            and not current.incomplete
        ):
            return "unchanged"
        if verdict.sha256 in by_sha and by_sha[verdict.sha256 or ""] != verdict.doc_id:
            return "duplicate"
        # A new manifest for the same text is a new decision: the policy runs again on what it claims.
        refused = self.policy(verdict, live, totals)
        if refused is not None:
            if current is not None and current.sha256 == verdict.sha256:
                # The owner now says something the policy refuses about this very text: it goes.
                return Withdraw(current, str(refused.reason), refused.detail, refused)
            return refused
        notes: dict[str, Any] = {"signer_change": {"from": owner, "to": verdict.signer_keyid}} if changed_signer else {}
        for check in self.checks:
            note = getattr(check, "note", None)  # checks that mark what they admit (the synthetic-text score)
            if note is not None:
                notes.update(note(verdict.text, doc_id=verdict.doc_id))
        return Pending(
            verdict=verdict,
            action="replace" if current is not None else "add",
            chunks=self.chunks(verdict),
            previous=current,
            notes=notes,
        )

    def policy(self, verdict: Verdict, live: dict[str, LiveDocument], totals: dict[str, int]) -> Verdict | None:
        """The refusal of the origin policy, the human floor or a content check, or of a document with nothing to
        read once its markup is removed; None to admit."""
        assert verdict.predicate is not None and verdict.text is not None
        if is_blank(extract_text(Path(verdict.path), verdict.text)):
            return _refuse(verdict, "empty_document", "no text is left once the markup is removed")
        origin = verdict.predicate.origin
        policy = self.settings
        if origin not in policy.allowed_origins or origin == "ai-generated":
            return _refuse(verdict, "disallowed_origin", f"origin {origin!r} is not admitted by the policy")
        for check in self.checks:
            # The synthetic-text check takes the document id too: a curator's admission is of a text under an id.
            found = (
                check.check(verdict.text, doc_id=verdict.doc_id)
                if isinstance(check, SyntheticTextCheck)
                else check.check(verdict.text)
            )
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

    def revoked(self, live: dict[str, LiveDocument]) -> list[Withdraw]:
        """Live documents whose signer is revoked in the trust store this run uses."""
        found = []
        for doc in live.values():
            entry = self.trust.get(owner_of(doc) or "")
            if entry is not None and entry.revoked:
                why = f": {entry.revoked_reason}" if entry.revoked_reason else ""
                found.append(Withdraw(doc, "revoked_signer", f"key of {entry.name} was revoked{why}"))
        return found

    def chunks(self, verdict: Verdict) -> list[Chunk]:
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


def owner_of(doc: LiveDocument | None) -> str | None:
    """The key id a live document was admitted under (None for one decided earlier in this run)."""
    return (doc.entry.get("signer_keyid") or None) if doc is not None else None


def fold_id(doc_id: str) -> str:
    """The form two document ids must not share: NFC, case folded."""
    return unicodedata.normalize("NFC", unicodedata.normalize("NFC", doc_id).casefold())


def _folded(live: dict[str, LiveDocument]) -> dict[str, str]:
    return {fold_id(doc_id): doc_id for doc_id in live}


def _collision(verdict: Verdict, folded: dict[str, str], decided: dict[str, str]) -> Verdict:
    """Refuse (`doc_id_collision`) an id that differs from a live one only in case or Unicode form, or that two
    files of one run both claim (a document is changed under its own id, by its owner)."""
    if not verdict.ok:
        return verdict
    twin = folded.get(fold_id(verdict.doc_id))
    earlier = decided.setdefault(verdict.doc_id, verdict.path)
    if twin is not None and twin != verdict.doc_id:
        return _refuse(verdict, "doc_id_collision", f"differs from the live document {twin!r} only in case or form")
    if earlier != verdict.path:
        return _refuse(verdict, "doc_id_collision", f"{earlier} is the document {verdict.doc_id!r} in this run too")
    return verdict


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


def _signer_changed_detail(doc: LiveDocument | None) -> str:
    assert doc is not None
    name = doc.entry.get("signer_name") or "another signer"
    owner = owner_of(doc) or ""
    return (
        f"admitted under {name} (key {owner[:16]}…){' and removed since' if doc.removed else ''}; pass "
        "--allow-signer-change to let another signer replace it"
    )


def _placeholder(verdict: Verdict, pending: Pending) -> LiveDocument:
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
