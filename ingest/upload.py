"""A document sent over HTTP goes through `rag ingest`'s own pipeline: the same verification, policy, loop
guard, chunking, store writes and ledger entries, under the same ingest lock.

The upload is written into a fresh private folder (mode 0700, files created exclusively, so nothing there is
a link or was there before), as `<name>` and `<name>.prov.json`, and that folder is ingested as the corpus
root: the document id is `name`, exactly as if a curator had run `rag ingest` on a folder holding it. The
manifest's signed subject must name it (`subject_mismatch` otherwise), so `name` is the path the document
was signed under, e.g. `guides/intro.md` for one signed with `--root` above `guides/`.
"""

from __future__ import annotations

import os
import tempfile
import unicodedata
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from ingest.decisions import IngestReport
from ingest.loaders import SUPPORTED_SUFFIXES, is_document
from ingest.provenance import MANIFEST_SUFFIX, manifest_path
from rag.errors import InvalidInputError

if TYPE_CHECKING:
    from ingest.pipeline import Ingestor

MAX_NAME_CHARS = 1024


@dataclass(frozen=True)
class UploadOutcome:
    """What became of one uploaded document: `status` is accepted, replaced, skipped_unchanged,
    skipped_duplicate or rejected (then `reason` is the stable code and `detail` says why)."""

    status: str
    doc_id: str
    report: IngestReport
    reason: str | None = None
    detail: str = ""
    duplicate_of: str | None = None

    @property
    def admitted(self) -> bool:
        return self.status in ("accepted", "replaced")


def document_id(name: str) -> str:
    """The id an uploaded document gets: its name, checked to be a plain relative path of a document type
    (no `..`, no absolute path, no empty or hidden folder tricks), NFC as ingest names documents."""
    name = unicodedata.normalize("NFC", name.strip())
    parts = name.split("/")
    bad = (
        not name
        or len(name) > MAX_NAME_CHARS
        or name.startswith("/")
        or any(ch in name for ch in "\\\x00")
        or any(not ch.isprintable() for ch in name)
        or any(part in ("", ".", "..") or len(part.encode("utf-8")) > 255 for part in parts)
        # Its manifest is written beside it as `<name>.prov.json`: that name must fit a file name too.
        or len((parts[-1] + MANIFEST_SUFFIX).encode("utf-8")) > 255
    )
    if bad:
        raise InvalidInputError(
            "The document name must be a relative path such as `notes.md` or `guides/intro.md` (no `..`, no "
            "leading `/`, no backslashes or control characters): the id it was signed under.",
            code="invalid_document_name",
        )
    if not is_document(Path(PurePosixPath(name).name)):
        raise InvalidInputError(
            f"The document must be named like one of {', '.join(SUPPORTED_SUFFIXES)}.", code="unsupported_type"
        )
    return name


def ingest_upload(
    ingestor: Ingestor, name: str, document: bytes, manifest: bytes, *, allow_signer_change: bool = False
) -> UploadOutcome:
    """Ingest one uploaded document and its manifest with `ingestor` (the pipeline `rag ingest` runs)."""
    doc_id = document_id(name)
    with tempfile.TemporaryDirectory(prefix="rag-upload-") as folder:
        root = Path(folder)  # made 0700 by tempfile: no other user can put a link in it
        target = root / doc_id
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            _write_new(target, document)
            _write_new(manifest_path(target), manifest)
        except OSError as exc:  # a name this file system refuses (too long a path, say)
            raise InvalidInputError(
                f"The document {doc_id!r} cannot be stored under that name on this server ({exc.strerror}).",
                code="invalid_document_name",
            ) from exc
        report = ingestor.ingest([], documents=[(target, root)], allow_signer_change=allow_signer_change)
        return _outcome(report, doc_id, str(root))


def _write_new(path: Path, data: bytes) -> None:
    """Create `path` (never an existing file, never through a link) holding `data`."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)


def _outcome(report: IngestReport, doc_id: str, root: str) -> UploadOutcome:
    def mine(items: list[dict[str, Any]]) -> dict[str, Any] | None:
        return next((item for item in items if item.get("doc_id") == doc_id), None)

    for status, items in (
        ("accepted", report.accepted),
        ("replaced", report.replaced),
        ("skipped_unchanged", report.unchanged),
    ):
        if mine(items) is not None:
            return UploadOutcome(status, doc_id, report)
    duplicate = mine(report.duplicates)
    if duplicate is not None:
        return UploadOutcome("skipped_duplicate", doc_id, report, duplicate_of=duplicate.get("duplicate_of"))
    refused = mine(report.rejected) or {"reason": "unreadable", "detail": "the upload was not decided"}
    # The temporary folder is nobody's business: the detail names the document by its id.
    detail = str(refused.get("detail") or "").replace(root + "/", "").replace(root, ".")
    return UploadOutcome("rejected", doc_id, report, reason=str(refused.get("reason")), detail=detail)
