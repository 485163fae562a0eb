"""Curator keys and the trust files that say which keys may vouch for text, and until when.

A trust entry names its key by the SHA-256 of the raw public key; merging several trust files never
loosens (revocation, the earliest expiry and the latest not-before win), and revocation is recorded,
never undone.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import re
from datetime import UTC, datetime
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ingest.files import FileRefusedError, read_regular, write_atomic
from rag.errors import KeyFileError, NotFoundError, TrustStoreError


def utc_now() -> str:
    return datetime.now(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def parse_time(value: str) -> datetime:
    """An RFC 3339 / ISO 8601 time; one without a zone is taken as UTC. Raises ValueError."""
    moment = datetime.fromisoformat(value.strip().replace("Z", "+00:00").replace("z", "+00:00"))
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


# --- keys -----------------------------------------------------------------------------------


def public_key_bytes(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def key_id(key: Ed25519PublicKey) -> str:
    """Hex sha256 of the raw 32-byte public key."""
    return hashlib.sha256(public_key_bytes(key)).hexdigest()


KEY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
MAX_KEY_FILE_BYTES = 64 * 1024
MAX_TRUST_FILE_BYTES = 16 << 20


def write_key_pair(name: str, out_dir: Path) -> tuple[Path, Ed25519PublicKey]:
    """Create an Ed25519 pair as `NAME.key` (PKCS#8 PEM, mode 0600) and `NAME.pub`; never overwrite."""
    if not KEY_NAME.fullmatch(name):
        raise KeyFileError(
            f"{name!r} cannot name a key: use letters, digits, '.', '_' and '-' (up to 64, not starting with '.').",
            code="invalid_key_name",
        )
    if os.path.lexists(out_dir) and not out_dir.is_dir():
        raise KeyFileError(f"{out_dir} is not a folder; --out takes the folder for the key pair.", code="not_a_folder")
    private_path, public_path = out_dir / f"{name}.key", out_dir / f"{name}.pub"
    private = Ed25519PrivateKey.generate()
    pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        # O_EXCL: an existing key is never replaced, and the mode is set before any byte is written.
        fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except FileExistsError as exc:
        raise KeyFileError(f"{private_path} already exists; keys are never overwritten.", code="key_exists") from exc
    except OSError as exc:
        raise KeyFileError(f"Cannot write {private_path}: {exc.strerror}.", code="write_failed") from exc
    with os.fdopen(fd, "wb") as handle:
        handle.write(pem)
    public = private.public_key()
    write_atomic(public_path, public_key_pem(public), what="public key")
    return private_path, public


def public_key_pem(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def _key_bytes(path: Path, what: str) -> bytes:
    """A key file's bytes (a link to one is followed: the path is the curator's own choice); KeyFileError."""
    try:
        return read_regular(path, max_bytes=MAX_KEY_FILE_BYTES, follow_symlinks=True, what=what)
    except FileRefusedError as exc:
        code = {"path_not_found": "key_not_found", "unreadable": "key_unreadable"}.get(exc.code, "key_invalid")
        raise KeyFileError(exc.message, code=code) from exc


def load_public_key(path: Path) -> Ed25519PublicKey:
    """An Ed25519 public key from a PEM file (`NAME.pub`, as `write_key_pair` writes it)."""
    try:
        key = serialization.load_pem_public_key(_key_bytes(path, "public key file"))
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise KeyFileError(f"{path} is not a PEM public key.", code="key_invalid") from exc
    if not isinstance(key, Ed25519PublicKey):
        raise KeyFileError(f"{path} is not an Ed25519 key.", code="key_invalid")
    return key


def load_private_key(path: Path) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(_key_bytes(path, "key file"), password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise KeyFileError(f"{path} is not an unencrypted PEM private key.", code="key_invalid") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError(f"{path} is not an Ed25519 key.", code="key_invalid")
    return key


# --- trust store ----------------------------------------------------------------------------


class TrustedKey(BaseModel):
    """One trust entry; the key id is checked to be the SHA-256 of the key, and every time parses."""

    model_config = ConfigDict(extra="forbid")

    keyid: str
    name: str
    public_key: str = Field(description="base64 of the raw 32-byte Ed25519 public key")
    added: str | None = None
    not_before: str | None = None
    expires: str | None = None
    revoked: bool = False
    revoked_at: str | None = None
    revoked_reason: str | None = None
    note: str | None = None

    @field_validator("added", "not_before", "expires", "revoked_at")
    @classmethod
    def _is_a_time(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                parse_time(value)
            except ValueError:
                raise ValueError(f"{value!r} is not an RFC 3339 time") from None
        return value

    @model_validator(mode="after")
    def _keyid_names_the_key(self) -> TrustedKey:
        try:
            raw = base64.b64decode(self.public_key, validate=True)
        except (binascii.Error, ValueError):
            raise ValueError("public_key is not base64") from None
        if len(raw) != 32:
            raise ValueError("public_key is not a raw 32-byte Ed25519 key")
        if hashlib.sha256(raw).hexdigest() != self.keyid:
            # The key id in a DSSE signature is not signed: an entry must not give a key a second name.
            raise ValueError(f"key id {self.keyid[:16]}… is not the SHA-256 of its public key (lowercase hex)")
        return self

    def ed25519(self) -> Ed25519PublicKey:
        return Ed25519PublicKey.from_public_bytes(base64.b64decode(self.public_key))


class TrustStoreFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: int = 1
    keys: list[TrustedKey] = Field(default_factory=list)


class TrustStore:
    """Curator public keys by key id, merged from one or more trust files.

    Merging never loosens: a key revoked in any file is revoked, the earliest expiry and the latest
    not-before win, so a local file cannot un-revoke or extend a key the committed file restricts.
    """

    def __init__(self, keys: dict[str, TrustedKey]) -> None:
        self.keys = keys

    @classmethod
    def load(cls, *paths: Path) -> TrustStore:
        keys: dict[str, TrustedKey] = {}
        for path in paths:
            if not path.exists():
                continue
            for entry in read_trust_file(path).keys:
                earlier = keys.get(entry.keyid)
                keys[entry.keyid] = entry if earlier is None else _stricter(earlier, entry)
        return cls(keys)

    def get(self, keyid: str) -> TrustedKey | None:
        return self.keys.get(keyid)

    def with_revoked(self, keyids: set[str], reason: str = "revoked in the ledger") -> TrustStore:
        """This store with `keyids` revoked too (the ledger's `revoke` entries: they hold whatever the files say)."""
        if not any(k in self.keys and not self.keys[k].revoked for k in keyids):
            return self
        update = {"revoked": True, "revoked_reason": reason}
        return TrustStore(
            {k: v.model_copy(update=update) if k in keyids and not v.revoked else v for k, v in self.keys.items()}
        )

    def usable(self, keyid: str, at: datetime | None = None) -> str | None:
        """None when the key may vouch for text at `at` (default now), else the reason code why not."""
        entry = self.keys.get(keyid)
        if entry is None:
            return "unknown_signer"
        return key_problem(entry, at or datetime.now(UTC))

    def resolve(self, keyid: str) -> TrustedKey:
        """The entry whose key id is `keyid` or starts with it (at least 8 hex digits, unambiguous)."""
        wanted = keyid.strip().lower()
        found = [k for k in self.keys.values() if k.keyid == wanted] or (
            [k for k in self.keys.values() if k.keyid.startswith(wanted)] if len(wanted) >= 8 else []
        )
        if len(found) != 1:
            problem = "matches several keys" if found else "is not in the trust store"
            raise NotFoundError(f"Key id {keyid!r} {problem}.", code="unknown_key")
        return found[0]


def key_problem(entry: TrustedKey, at: datetime) -> str | None:
    """The reason code that stops `entry` vouching for text at `at`, or None."""
    if entry.revoked:
        return "revoked_signer"
    if entry.expires and parse_time(entry.expires) <= at:
        return "expired_signer"
    if entry.not_before and parse_time(entry.not_before) > at:
        return "not_yet_valid"
    return None


def _stricter(first: TrustedKey, second: TrustedKey) -> TrustedKey:
    """Merge two entries for one key: revocation, the earliest expiry and the latest not-before win."""

    def pick(a: str | None, b: str | None, latest: bool) -> str | None:
        if a is None or b is None:
            return a or b
        return max(a, b, key=parse_time) if latest else min(a, b, key=parse_time)

    return first.model_copy(
        update={
            "expires": pick(first.expires, second.expires, latest=False),
            "not_before": pick(first.not_before, second.not_before, latest=True),
            "revoked": first.revoked or second.revoked,
            "revoked_at": pick(first.revoked_at, second.revoked_at, latest=False),
            "revoked_reason": first.revoked_reason or second.revoked_reason,
        }
    )


def read_trust_file(path: Path) -> TrustStoreFile:
    """Read and check one trust file; anything wrong is one `trust_store_invalid` line, never a traceback."""
    try:
        store = TrustStoreFile.model_validate_json(
            read_regular(path, max_bytes=MAX_TRUST_FILE_BYTES, follow_symlinks=True, what="trust store")
        )
    except FileRefusedError as exc:
        raise TrustStoreError(exc.message) from exc
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(part) for part in error["loc"]) or "file"
        message = str(error["msg"]).removeprefix("Value error, ").splitlines()[0][:160]
        raise TrustStoreError(f"Trust store {path} is invalid at {where}: {message}.") from None
    seen: dict[str, int] = {}
    for number, entry in enumerate(store.keys):
        if entry.public_key in seen or entry.keyid in seen:
            raise TrustStoreError(
                f"Trust store {path} lists one public key twice (keys.{seen.get(entry.public_key)} and keys.{number})."
            )
        seen[entry.public_key] = seen[entry.keyid] = number
    return store


def write_trust_file(path: Path, store: TrustStoreFile) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, (store.model_dump_json(indent=2, exclude_none=True) + "\n").encode(), what="trust store")
    except FileRefusedError as exc:
        raise TrustStoreError(exc.message, code="write_failed") from exc
    except OSError as exc:
        raise TrustStoreError(f"Trust store {path} cannot be written: {exc.strerror}.", code="write_failed") from exc


def add_trusted_key(path: Path, name: str, public: Ed25519PublicKey, expires: str | None = None) -> TrustedKey:
    store = read_trust_file(path) if path.exists() else TrustStoreFile()
    entry = TrustedKey(
        keyid=key_id(public),
        name=name,
        public_key=base64.b64encode(public_key_bytes(public)).decode(),
        added=utc_now(),
        expires=expires,
    )
    earlier = next((k for k in store.keys if k.keyid == entry.keyid), None)
    if earlier is not None and earlier.revoked:
        raise TrustStoreError(f"Key {entry.keyid[:16]}… is revoked in {path}; a revoked key is not trusted again.")
    store.keys = [k for k in store.keys if k.keyid != entry.keyid] + [entry]
    write_trust_file(path, store)
    return entry


def revoke_key(path: Path, entry: TrustedKey, *, reason: str | None = None, at: str | None = None) -> TrustedKey:
    """Record `entry` as revoked in the trust file at `path` (added there if absent); idempotent."""
    store = read_trust_file(path) if path.exists() else TrustStoreFile()
    current = next((k for k in store.keys if k.keyid == entry.keyid), None)
    if current is not None and current.revoked:
        return current
    base = current or entry.model_copy(update={"added": utc_now(), "note": None})
    revoked = base.model_copy(update={"revoked": True, "revoked_at": at or utc_now(), "revoked_reason": reason})
    store.keys = [revoked if k.keyid == entry.keyid else k for k in store.keys]
    if current is None:
        store.keys.append(revoked)
    write_trust_file(path, store)
    return revoked
