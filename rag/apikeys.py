"""API keys with roles: made once, shown once, stored only as a hash, in the operator's folder beside the
ledger key (outside the data dir: whoever can write the data dir must not be able to make a key).

A token is `rag_` + 32 random bytes (`secrets.token_urlsafe(32)`, 256 bits). The key file keeps its SHA-256,
never the token: a plain hash is enough because the token is random and long. A slow password hash (bcrypt,
scrypt) protects secrets people choose, whose few guessable values an attacker can try; 2^256 values cannot be
tried, whatever the speed of the hash, and a fast hash lets every request be checked in microseconds.

The file (`apikeys.json`, mode 0600) is rewritten whole and renamed into place under a lock, so a reader sees
the old file or the new one and two `rag apikeys` commands never lose each other's key. A revoked key stays
in the file (marked), so its name is never reused and `list` shows what happened. The server re-reads the
file when it changes: a key made or revoked takes effect on the next request, without a restart.
"""

from __future__ import annotations

import fcntl
import hashlib
import hmac
import json
import os
import re
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, cast

from rag.errors import ConflictError, InvalidInputError, NotFoundError, RagError

Role = Literal["reader", "curator", "admin"]
ROLES: tuple[Role, ...] = ("reader", "curator", "admin")  # each role may do what the ones before it may
TOKEN_PREFIX = "rag_"
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
MAX_FILE_BYTES = 4 << 20
FORMAT = 1


class ApiKeyFileError(RagError):
    """The key file cannot be relied on: nobody is let in until the operator repairs it."""

    code = "apikeys_invalid"
    http_status = 500


def allows(role: Role, needed: Role) -> bool:
    """Whether `role` may do what `needed` may (reader < curator < admin)."""
    return ROLES.index(role) >= ROLES.index(needed)


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class ApiKey:
    """One key as stored: its name, role, the SHA-256 of its token, and when it was made or revoked."""

    name: str
    role: Role
    sha256: str
    created: str
    revoked_at: str | None = None

    @property
    def active(self) -> bool:
        return self.revoked_at is None

    def view(self) -> dict[str, Any]:
        """What `rag apikeys list` shows: never the hash (it is not secret, but it is nobody's business)."""
        return {"name": self.name, "role": self.role, "created": self.created, "revoked_at": self.revoked_at}


class ApiKeyStore:
    """The API key file (beside the ledger key): make, list, revoke and check keys."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._cache: tuple[tuple[int, int, int, int] | None, list[ApiKey]] | None = None

    # --- reading -------------------------------------------------------------------------

    def all_keys(self) -> list[ApiKey]:
        """Every key, revoked ones included; re-read only when the file changed (a `stat` per call)."""
        stamp = _stamp(self.path)
        if self._cache is None or self._cache[0] != stamp:
            self._cache = (stamp, self._read())
        return list(self._cache[1])

    def any_made(self) -> bool:
        """Whether a key was ever made here. Then every request needs one, even after all are revoked: revoking
        the last key must not open the server."""
        return bool(self.all_keys())

    def verify(self, token: str) -> ApiKey | None:
        """The key whose token this is (active or revoked), or None. Every stored hash is compared, each in
        constant time, so the time taken does not tell how close a guess came."""
        digest = token_hash(token)
        found: ApiKey | None = None
        for key in self.all_keys():
            if hmac.compare_digest(digest, key.sha256):
                found = key
        return found

    # --- writing -------------------------------------------------------------------------

    def new(self, name: str, role: str) -> tuple[ApiKey, str]:
        """Make a key; (its record, the token). The token is returned once and stored nowhere."""
        if not NAME.fullmatch(name):
            raise InvalidInputError(
                f"{name!r} cannot name an API key: use letters, digits, '.', '_' and '-' (up to 64, not starting "
                "with '.', '_' or '-').",
                code="invalid_key_name",
            )
        if role not in ROLES:
            raise InvalidInputError(f"The role must be one of {', '.join(ROLES)}.", code="invalid_role")
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        with self._locked():
            keys = self._read()
            if any(key.name == name for key in keys):
                raise ConflictError(
                    f"An API key named {name!r} exists (or existed: names of revoked keys are kept); choose another.",
                    code="key_exists",
                )
            key = ApiKey(name=name, role=cast(Role, role), sha256=token_hash(token), created=_now())
            self._write([*keys, key])
        return key, token

    def revoke(self, name: str) -> tuple[ApiKey, bool]:
        """Revoke a key by name; (its record, whether it was revoked just now)."""
        with self._locked():
            keys = self._read()
            for n, key in enumerate(keys):
                if key.name == name:
                    if not key.active:
                        return key, False
                    keys[n] = ApiKey(**{**asdict(key), "revoked_at": _now()})
                    self._write(keys)
                    return keys[n], True
        raise NotFoundError(f"No API key is named {name!r} (see `rag apikeys list`).", code="unknown_api_key")

    # --- the file ------------------------------------------------------------------------

    @contextmanager
    def _locked(self) -> Iterator[None]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.with_name(self.path.name + ".lock").open("w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            yield

    def _read(self) -> list[ApiKey]:
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW)
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise ApiKeyFileError(f"The API key file {self.path} cannot be read: {exc.strerror}.") from exc
        with os.fdopen(fd, "rb") as handle:
            raw = handle.read(MAX_FILE_BYTES + 1)
        try:
            if len(raw) > MAX_FILE_BYTES:
                raise ValueError("too large")
            data = json.loads(raw)
            if not isinstance(data, dict) or data.get("format") != FORMAT or not isinstance(data.get("keys"), list):
                raise ValueError("not an API key file")
            return [_parse(item) for item in data["keys"]]
        except (ValueError, TypeError, KeyError) as exc:
            raise ApiKeyFileError(f"The API key file {self.path} is not valid ({exc}); repair or remove it.") from exc

    def _write(self, keys: list[ApiKey]) -> None:
        """Write the whole file as a new 0600 file, then rename it over the old one (atomic)."""
        data = json.dumps({"format": FORMAT, "keys": [asdict(key) for key in keys]}, indent=2) + "\n"
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, self.path)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise ApiKeyFileError(f"The API key file {self.path} cannot be written: {exc.strerror}.") from exc
        self._cache = None


def _parse(item: Any) -> ApiKey:
    if not isinstance(item, dict):
        raise ValueError("a key is not an object")
    key = ApiKey(
        name=str(item["name"]),
        role=item["role"],
        sha256=str(item["sha256"]),
        created=str(item["created"]),
        revoked_at=item.get("revoked_at"),
    )
    if key.role not in ROLES or not re.fullmatch(r"[0-9a-f]{64}", key.sha256):
        raise ValueError(f"the key {key.name!r} has an unknown role or hash")
    return key


def _stamp(path: Path) -> tuple[int, int, int, int] | None:
    try:
        info = os.stat(path)
    except OSError:
        return None
    return info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
