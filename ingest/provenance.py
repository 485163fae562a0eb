"""Signed document provenance: DSSE envelopes around in-toto v1 Statements, Ed25519, RFC 8785.

Verification fails closed: every check must pass, in the order of the design (manifest present,
parsable, signer known and valid, signature, digest, subject), and the first failure names a
stable reason code. The keys and the trust store they are checked against are in `ingest.trust`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import unicodedata
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import rfc8785
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ingest.files import FileRefusedError, printable_path, read_regular, write_atomic
from ingest.trust import TrustStore, key_id, key_problem, utc_now
from rag.errors import InvalidInputError
from rag.settings import IngestSettings

PAYLOAD_TYPE = "application/vnd.in-toto+json"
STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "https://provenance-first-rag.example/document-provenance/v1"
MANIFEST_SUFFIX = ".prov.json"
# A manifest is a few kilobytes; anything far larger is not one, and is not read into memory.
MAX_MANIFEST_BYTES = 1 << 20
DEFAULT_MAX_DOCUMENT_BYTES: int = IngestSettings.model_fields["max_document_bytes"].default

Origin = Literal["human", "human-edited-ai", "ai-generated"]


def normalise_text(text: str) -> str:
    """The form that is hashed and signed: NFC, LF line ends (UTF-8 when encoded)."""
    return unicodedata.normalize("NFC", text.replace("\r\n", "\n").replace("\r", "\n"))


def text_digest(text: str) -> str:
    return hashlib.sha256(normalise_text(text).encode("utf-8")).hexdigest()


def manifest_path(document: Path) -> Path:
    return document.with_name(document.name + MANIFEST_SUFFIX)


def is_blank(text: str) -> bool:
    """True when nothing would be left to read: only whitespace, control and format characters (BOM, ZWSP)."""
    return all(ch.isspace() or unicodedata.category(ch) in ("Cc", "Cf", "Zs", "Zl", "Zp") for ch in text)


def read_document(document: Path, *, max_bytes: int) -> str:
    """The normalised text of a document file, read once; InvalidInputError with a reason code otherwise.

    Codes: `path_not_found`, `not_a_regular_file` (a folder, FIFO, device or symbolic link: links are not
    followed), `too_large`, `unreadable`, `not_utf8`, `empty_document` (nothing but white space)."""
    data = read_regular(document, max_bytes=max_bytes, what="document")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise FileRefusedError(
            document, "document", f"is not UTF-8 text (invalid byte at offset {exc.start})", code="not_utf8"
        ) from exc
    if is_blank(text):
        raise FileRefusedError(document, "document", "is empty or white space only", code="empty_document")
    return normalise_text(text)


# --- manifest -------------------------------------------------------------------------------


class Curator(BaseModel):
    name: str
    reviewed_at: str


class Predicate(BaseModel):
    title: str
    authors: list[str] = Field(min_length=1)
    origin: Origin
    created: str
    source_uri: str | None = None
    license: str
    curator: Curator


class Subject(BaseModel):
    name: str
    digest: dict[str, str]


class Statement(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    type_: Literal["https://in-toto.io/Statement/v1"] = Field(alias="_type")
    subject: list[Subject] = Field(min_length=1, max_length=1)
    predicateType: Literal["https://provenance-first-rag.example/document-provenance/v1"]  # noqa: N815
    predicate: Predicate


class Signature(BaseModel):
    keyid: str
    sig: str


class Envelope(BaseModel):
    payloadType: Literal["application/vnd.in-toto+json"]  # noqa: N815
    payload: str
    signatures: list[Signature] = Field(min_length=1)


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE v1 pre-authentication encoding of type and body."""
    kind = payload_type.encode()
    return b"DSSEv1 %d %s %d %s" % (len(kind), kind, len(payload), payload)


def build_statement(subject_name: str, digest: str, predicate: dict[str, Any]) -> dict[str, Any]:
    return {
        "_type": STATEMENT_TYPE,
        "subject": [{"name": subject_name, "digest": {"sha256": digest}}],
        "predicateType": PREDICATE_TYPE,
        "predicate": predicate,
    }


def sign_statement(statement: dict[str, Any], key: Ed25519PrivateKey) -> dict[str, Any]:
    payload = rfc8785.dumps(statement)
    signature = key.sign(pae(PAYLOAD_TYPE, payload))
    return {
        "payloadType": PAYLOAD_TYPE,
        "payload": base64.b64encode(payload).decode(),
        "signatures": [{"keyid": key_id(key.public_key()), "sig": base64.b64encode(signature).decode()}],
    }


def sign_document(
    document: Path,
    key: Ed25519PrivateKey,
    *,
    root: Path | None = None,
    title: str | None = None,
    authors: list[str],
    license: str,
    origin: Origin,
    source_uri: str | None = None,
    curator: str,
    created: str | None = None,
    max_bytes: int = DEFAULT_MAX_DOCUMENT_BYTES,
) -> Path:
    """Write `<document>.prov.json`, signing the normalised text as named relative to `root`.

    Refuses (InvalidInputError with a reason code, nothing written) what verification would refuse before the
    manifest: a file outside `root`, not a regular file, unreadable, not UTF-8 or empty."""
    manifest = sign_manifest(
        document,
        key,
        root=root,
        title=title,
        authors=authors,
        license=license,
        origin=origin,
        source_uri=source_uri,
        curator=curator,
        created=created,
        max_bytes=max_bytes,
    )
    return write_manifest(document, manifest)


def sign_manifest(
    document: Path,
    key: Ed25519PrivateKey,
    *,
    root: Path | None = None,
    title: str | None = None,
    authors: list[str],
    license: str,
    origin: Origin,
    source_uri: str | None = None,
    curator: str,
    created: str | None = None,
    max_bytes: int = DEFAULT_MAX_DOCUMENT_BYTES,
) -> dict[str, Any]:
    """The signed envelope for `document` (see `sign_document`), without writing it."""
    root = root or document.parent
    name = document_name(document, root)
    text = read_document(document, max_bytes=max_bytes)
    now = utc_now()
    predicate = Predicate(
        title=title or document.stem,
        authors=authors,
        origin=origin,
        created=created or now,
        source_uri=source_uri,
        license=license,
        curator=Curator(name=curator, reviewed_at=now),
    ).model_dump(exclude_none=True)
    return sign_statement(build_statement(name, text_digest(text), predicate), key)


def write_manifest(document: Path, manifest: dict[str, Any]) -> Path:
    """Write the sidecar atomically: a symbolic link (or anything else) at its name is replaced, never written
    through. FileRefusedError (`write_failed`) if it cannot be written."""
    out = manifest_path(document)
    write_atomic(out, (json.dumps(manifest, indent=2) + "\n").encode("utf-8"), what="manifest")
    return out


def subject_name(document: Path, root: Path) -> str:
    """The document's path relative to the corpus root, NFC: the subject it is signed as and its document id.

    The folders are resolved (a linked folder counts as where it points); the file name itself is not, since
    a linked document is refused. ValueError if the document is outside the root (through `..` or a link)."""
    if document.name in ("", ".", ".."):
        raise ValueError(f"{document} does not name a file")
    parent = Path(os.path.realpath(document.parent))
    relative = (parent / document.name).relative_to(os.path.realpath(root))
    return unicodedata.normalize("NFC", relative.as_posix())


def document_name(document: Path, root: Path) -> str:
    """`subject_name`, or InvalidInputError: `outside_root`, or `invalid_name` for a name that is not UTF-8."""
    try:
        name = subject_name(document, root)
    except ValueError as exc:
        raise InvalidInputError(
            f"{printable_path(document)} is outside the corpus root {printable_path(root)} (through `..` or a "
            "linked folder).",
            code="outside_root",
        ) from exc
    try:
        name.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidInputError(
            f"The file name {printable_path(document)} is not UTF-8; rename it.", code="invalid_name"
        ) from exc
    return name


# --- verification ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Verdict:
    """The outcome of verifying one document; `reason` is a stable code when `ok` is false."""

    path: str
    doc_id: str
    ok: bool
    reason: str | None = None
    detail: str = ""
    sha256: str | None = None
    manifest_sha256: str | None = None
    predicate: Predicate | None = None
    signer_keyid: str | None = None
    signer_name: str | None = None
    text: str | None = None

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "path": self.path,
            "doc_id": self.doc_id,
            "verdict": "verified" if self.ok else "rejected",
            "reason": self.reason,
            "detail": self.detail,
            "sha256": self.sha256,
            "signer": self.signer_name,
        }
        if self.predicate is not None:
            out["origin"] = self.predicate.origin
            out["title"] = self.predicate.title
        return out


def verify_document(
    document: Path,
    root: Path,
    trust: TrustStore,
    *,
    max_bytes: int,
    now: datetime | None = None,
) -> Verdict:
    """Verify `document` against its sidecar manifest and the trust store, failing closed.

    The file is read once, through one descriptor: the text whose digest is checked is the text the verdict
    carries, the only text that is chunked and embedded, whatever happens to the file afterwards. Symbolic
    links are not followed (`outside_root` when one points out of the root, else `not_a_regular_file`)."""
    now = now or datetime.now(UTC)
    path = printable_path(document)
    try:
        name = document_name(document, root)
    except InvalidInputError as exc:
        where = unicodedata.normalize("NFC", printable_path(os.path.relpath(document, root)))
        return Verdict(path=path, doc_id=where, ok=False, reason=exc.code, detail=exc.message)
    base: dict[str, Any] = {"path": path, "doc_id": name}

    def reject(reason: str, detail: str, **extra: Any) -> Verdict:
        return Verdict(ok=False, reason=reason, detail=detail, **base, **extra)

    if document.is_symlink():
        target = os.path.realpath(document)
        if not _within(target, root):
            return reject("outside_root", f"a symbolic link to {printable_path(target)}, outside the corpus root")
        return reject(
            "not_a_regular_file",
            f"a symbolic link to {printable_path(target)}; links are not followed, ingest the file it points to",
        )
    try:
        text = read_document(document, max_bytes=max_bytes)
    except InvalidInputError as exc:
        if exc.code == "not_a_regular_file" and document.is_dir() and not os.access(document, os.R_OK | os.X_OK):
            return reject("unreadable", "a folder that cannot be listed: the documents in it were not seen")
        return reject("unreadable" if exc.code == "path_not_found" else exc.code, _detail(exc))
    sha = hashlib.sha256(text.encode("utf-8")).hexdigest()

    sidecar = manifest_path(document)
    try:
        raw = read_regular(sidecar, max_bytes=MAX_MANIFEST_BYTES, what="manifest")
    except InvalidInputError as exc:
        if exc.code == "path_not_found":
            return reject("missing_manifest", f"no {sidecar.name} beside the document", sha256=sha)
        reason = "unreadable" if exc.code == "unreadable" else "malformed_manifest"
        return reject(reason, _detail(exc), sha256=sha)
    manifest_sha = hashlib.sha256(raw).hexdigest()
    try:
        envelope = Envelope.model_validate_json(raw)
        payload = _base64(envelope.payload)
        statement = Statement.model_validate_json(payload)
        signature = _base64(envelope.signatures[0].sig)
    except (ValidationError, binascii.Error, ValueError) as exc:
        return reject("malformed_manifest", _first_line(exc), sha256=sha, manifest_sha256=manifest_sha)
    keyid = envelope.signatures[0].keyid
    common: dict[str, Any] = {
        "sha256": sha,
        "manifest_sha256": manifest_sha,
        "predicate": statement.predicate,
        "signer_keyid": keyid,
    }

    trusted = trust.get(keyid)
    if trusted is None:
        return reject("unknown_signer", f"key {keyid[:16]}… is not in the trust store", **common)
    common["signer_name"] = trusted.name
    problem = key_problem(trusted, now)
    if problem is not None:
        detail = {
            "revoked_signer": f"key of {trusted.name} was revoked",
            "expired_signer": f"key of {trusted.name} expired at {trusted.expires}",
            "not_yet_valid": f"key of {trusted.name} is not valid before {trusted.not_before}",
        }[problem]
        return reject(problem, detail, **common)
    try:
        trusted.ed25519().verify(signature, pae(envelope.payloadType, payload))
    except (InvalidSignature, ValueError):
        return reject("bad_signature", "the signature does not match the manifest payload", **common)
    subject = statement.subject[0]
    if subject.digest.get("sha256") != sha:
        return reject("digest_mismatch", "the text differs from what was signed", **common)
    if unicodedata.normalize("NFC", subject.name) != name:
        return reject("subject_mismatch", f"manifest names {subject.name!r}, file is {name!r}", **common)
    return Verdict(ok=True, text=text, **base, **common)


def _base64(value: str) -> bytes:
    """Strict base64: the alphabet, padding, and the one canonical spelling (spare bits zero), so that no two
    manifests differing in a byte decode to the same payload or signature."""
    raw = base64.b64decode(value, validate=True)
    if base64.b64encode(raw).decode("ascii") != value:
        raise ValueError("base64 that is not in canonical form")
    return raw


def _within(target: str, root: Path) -> bool:
    base = os.path.realpath(root)
    return os.path.commonpath([base, target]) == base


def _detail(exc: InvalidInputError) -> str:
    return exc.detail if isinstance(exc, FileRefusedError) else exc.message


def _first_line(exc: Exception) -> str:
    return str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
