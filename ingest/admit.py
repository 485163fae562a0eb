"""A curator admits a document the synthetic-text detector held (`synthetic_suspected`, policy `quarantine`).

The decision is recorded in the ledger first, as an `admit` entry naming the document and the digest of the
very text that was held; the document is then ingested again, and the detector lets that digest through
(still marked as flagged, with `admitted_by_curator`). A changed text is a new decision: its digest differs.
A crash between the two steps leaves the entry without the ingest; running `rag admit` again ingests it.
"""

from __future__ import annotations

import os
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ingest.decisions import IngestReport
from ingest.files import printable_path, read_json_object
from ingest.ledger import Ledger
from ingest.provenance import read_document, text_digest
from rag.errors import InvalidInputError, NotFoundError
from rag.guardrails.detector import REASON
from rag.settings import Settings


class AdmittedDigests:
    """(document id, text digest) pairs a curator admitted (ledger `admit` entries), re-read only when the
    ledger file changes. An admission is of one text under one id: the same text under another id is not."""

    def __init__(self, ledger_path: Path) -> None:
        self.ledger_path = ledger_path
        self._seen: tuple[int, int] | None = None
        self._digests: set[tuple[str, str]] = set()

    def __call__(self) -> set[tuple[str, str]]:
        try:
            stat = os.stat(self.ledger_path)
        except FileNotFoundError:
            return set()
        if self._seen != (stat.st_size, stat.st_mtime_ns):
            self._digests = {
                (str(entry["doc_id"]), str(entry["sha256"]))
                for entry in Ledger(self.ledger_path).entries()
                if entry.get("action") == "admit" and entry.get("sha256") and entry.get("doc_id")
            }
            self._seen = (stat.st_size, stat.st_mtime_ns)
        return self._digests


@dataclass
class Admission:
    doc_id: str
    sha256: str
    path: str
    recorded: bool  # False when the ledger already held this admission (a rerun after a crash)
    report: IngestReport = field(default_factory=IngestReport)


def held_documents(settings: Settings) -> list[dict[str, Any]]:
    """Documents the quarantine report holds for a curator (reason `synthetic_suspected`)."""
    report = read_json_object(settings.quarantine_path)
    return [item for item in report.values() if isinstance(item, dict) and item.get("reason") == REASON]


def admit(ingestor: Any, doc_id: str, *, curator: str, path: Path | None = None) -> Admission:
    """Record a curator's admission of the held `doc_id` in the ledger, then ingest it."""
    settings: Settings = ingestor.settings
    held = next((item for item in held_documents(settings) if item.get("doc_id") == doc_id), None)
    if held is None:
        raise NotFoundError(
            f"No document {doc_id!r} is held by the synthetic-text detector (see `rag documents`).", code="not_held"
        )
    document = Path(path or held["path"]).absolute()
    if not os.path.lexists(document):
        raise InvalidInputError(
            f"The held document is no longer at {printable_path(document)}; pass its path: rag admit {doc_id} PATH.",
            code="path_not_found",
        )
    # The corpus root is what the document id is relative to (a nested id was ingested with its folder).
    parts = Path(doc_id).parts
    if tuple(unicodedata.normalize("NFC", part) for part in document.parts[-len(parts) :]) != parts or (
        len(document.parts) <= len(parts)
    ):
        raise InvalidInputError(
            f"{printable_path(document)} is not the document {doc_id!r}: its path must end with the document id.",
            code="path_mismatch",
        )
    root = document.parents[len(parts) - 1]
    # The digest admitted is that of the file being admitted, not what the quarantine report (a plain file) says.
    sha256 = text_digest(read_document(document, max_bytes=settings.ingest.max_document_bytes))
    if held.get("sha256") and sha256 != held["sha256"]:
        raise InvalidInputError(
            f"{document} is not the text that was held (digest {sha256[:12]}, held {str(held['sha256'])[:12]}); "
            f"ingest it to have it decided again.",
            code="changed_since_held",
        )
    with ingestor._locked():  # the ledger is written under the ingest lock, after it verifies
        ledger: Ledger = ingestor.ledger
        known = any(
            e.get("action") == "admit" and e.get("doc_id") == doc_id and e.get("sha256") == sha256
            for e in ledger.entries()
        )
        if not known:
            ledger.append(
                {
                    "action": "admit",
                    "doc_id": doc_id,
                    "sha256": sha256,
                    "overrides": REASON,
                    "detail": held.get("detail"),
                    "curator": curator,
                }
            )
    report = ingestor.ingest([], documents=[(document, root)])
    return Admission(doc_id, sha256, str(document), not known, report)


def held_views(settings: Settings) -> list[dict[str, Any]]:
    """Held documents in the shape of `Ledger.documents()` views, with status `held`."""
    return [
        {
            "doc_id": item.get("doc_id"),
            "sha256": item.get("sha256") or "",
            "chunks": 0,
            "status": "held",
            "held_reason": item.get("reason"),
            "detail": item.get("detail"),
            "held_at": item.get("time"),
            "path": item.get("path"),
            "title": item.get("title"),
            "origin": item.get("origin"),
            "license": item.get("license"),
            "signer_name": item.get("signer"),
        }
        for item in held_documents(settings)
    ]


def synthetic_cell(note: dict[str, Any] | None) -> str:
    """The synthetic-text score as `rag documents` shows it: the score, marked when above the threshold."""
    if not note:
        return "-"
    if "error" in note:
        return "error"
    mark = " flagged" if note.get("flagged") else ""
    admitted = ", admitted" if note.get("admitted_by_curator") else ""
    return f"{note.get('score', 0.0):+.2f}{mark}{admitted}"
