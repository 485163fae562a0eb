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

from ingest.trust import TrustStore, key_id, key_problem, utc_now

PAYLOAD_TYPE = "application/vnd.in-toto+json"
STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "https://provenance-first-rag.example/document-provenance/v1"
MANIFEST_SUFFIX = ".prov.json"

Origin = Literal["human", "human-edited-ai", "ai-generated"]


def normalise_text(text: str) -> str:
    """The form that is hashed and signed: NFC, LF line ends (UTF-8 when encoded)."""
    return unicodedata.normalize("NFC", text.replace("\r\n", "\n").replace("\r", "\n"))


def text_digest(text: str) -> str:
    return hashlib.sha256(normalise_text(text).encode("utf-8")).hexdigest()


def manifest_path(document: Path) -> Path:
    return document.with_name(document.name + MANIFEST_SUFFIX)


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
) -> Path:
    """Write `<document>.prov.json`, signing the normalised text as named relative to `root`."""
    text = document.read_text(encoding="utf-8")
    root = root or document.parent
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
    statement = build_statement(subject_name(document, root), text_digest(text), predicate)
    out = manifest_path(document)
    out.write_text(json.dumps(sign_statement(statement, key), indent=2) + "\n", encoding="utf-8")
    return out


def subject_name(document: Path, root: Path) -> str:
    """The document's path relative to the corpus root, NFC: the subject it is signed as and its document id.
    ValueError if it resolves outside the root (a symlink pointing elsewhere)."""
    return unicodedata.normalize("NFC", document.resolve().relative_to(root.resolve()).as_posix())


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
    """Verify `document` against its sidecar manifest and the trust store, failing closed."""
    now = now or datetime.now(UTC)
    try:
        name = subject_name(document, root)
    except ValueError:
        where = unicodedata.normalize("NFC", os.path.relpath(document, root))
        return Verdict(
            path=str(document),
            doc_id=where,
            ok=False,
            reason="outside_root",
            detail=f"resolves to {document.resolve()}, outside the corpus root {root}",
        )
    base: dict[str, Any] = {"path": str(document), "doc_id": name}

    def reject(reason: str, detail: str, **extra: Any) -> Verdict:
        return Verdict(ok=False, reason=reason, detail=detail, **base, **extra)

    try:
        size = document.stat().st_size
    except OSError as exc:
        return reject("unreadable", f"cannot stat the file: {exc.strerror}")
    if size > max_bytes:
        return reject("too_large", f"{size} bytes is over the limit of {max_bytes}")
    try:
        text = document.read_bytes().decode("utf-8")
    except OSError as exc:
        return reject("unreadable", f"cannot read the file: {exc.strerror}")
    except UnicodeDecodeError:
        return reject("unreadable", "the file is not valid UTF-8 text")
    text = normalise_text(text)
    sha = hashlib.sha256(text.encode("utf-8")).hexdigest()

    sidecar = manifest_path(document)
    if not sidecar.exists():
        return reject("missing_manifest", f"no {sidecar.name} beside the document", sha256=sha)
    raw = sidecar.read_bytes()
    manifest_sha = hashlib.sha256(raw).hexdigest()
    try:
        envelope = Envelope.model_validate_json(raw)
        payload = base64.b64decode(envelope.payload, validate=True)
        statement = Statement.model_validate_json(payload)
        signature = base64.b64decode(envelope.signatures[0].sig, validate=True)
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


def _first_line(exc: Exception) -> str:
    return str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
