"""The ledger's signed head: the ledger key, the DSSE envelope over {index, hash}, and the heads it signed.

The key lives outside the data dir (a setting). Beside it, `.heads.json` records the last head it signed
for each ledger, so a ledger cut back to an older signed head, or deleted, is caught without an outside
copy; a head kept elsewhere by the operator (`rag ledger head`) is checked with `check_extends`.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import rfc8785

from ingest.files import FileRefusedError, read_regular
from ingest.trust import key_id, load_private_key, load_public_key, public_key_pem, utc_now, write_key_pair
from rag.errors import InvalidInputError, KeyFileError, LedgerError

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

log = logging.getLogger(__name__)

HEAD_PAYLOAD_TYPE = "application/vnd.provenance-first-rag.ledger-head+json"


def public_key_path(private: Path) -> Path:
    """Where the public half of a ledger key is written beside it (`ledger.key` → `ledger.pub`)."""
    return private.with_suffix(".pub")


class LedgerKey:
    """The Ed25519 key that signs the ledger head; it lives outside the data dir (a setting).

    Its public half is written beside it (`ledger.pub`) when it is made: the serving process checks heads
    with that file alone (`open_head`) and never needs the private key."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.public_path = public_key_path(path)
        self._private: Ed25519PrivateKey | None = None

    def exists(self) -> bool:
        return self.path.exists()

    def create(self) -> None:
        write_key_pair(self.path.stem, self.path.parent)
        if self.path.parent / f"{self.path.stem}.key" != self.path:  # a key path not ending in .key
            (self.path.parent / f"{self.path.stem}.key").rename(self.path)
        self.ensure_public_file()
        log.warning("made a new ledger key at %s: keep it outside the data dir, and back it up", self.path)

    def ensure_public_file(self) -> None:
        """Write the public half beside the key if it is missing; LedgerError if the one there is another key's."""
        mine = public_key_pem(self.public())
        if not self.public_path.exists():
            self.public_path.write_bytes(mine)
        elif key_id(load_public_key(self.public_path)) != key_id(self.public()):
            raise LedgerError(f"{self.public_path} is not the public half of the ledger key {self.path}.")

    def private(self) -> Ed25519PrivateKey:
        if self._private is None:
            self._private = load_private_key(self.path)
        return self._private

    def public(self) -> Ed25519PublicKey:
        return self.private().public_key()

    def sign(self, index: int, head: str) -> dict[str, Any]:
        """A DSSE envelope over {ledger head index, hash, time}."""
        payload: dict[str, Any] = {"index": index, "hash": head, "entries": index + 1, "signed_at": utc_now()}
        return self.sign_payload(payload, HEAD_PAYLOAD_TYPE)

    def sign_payload(self, payload: dict[str, Any], payload_type: str) -> dict[str, Any]:
        """A DSSE envelope over the canonical JSON of `payload` (a head, or another record this key pins)."""
        from securesystemslib.dsse import Envelope
        from securesystemslib.signer import CryptoSigner, SSlibKey

        public = SSlibKey.from_crypto(self.public(), keyid=key_id(self.public()))
        envelope = Envelope(rfc8785.dumps(payload), payload_type, {})
        envelope.sign(CryptoSigner(self.private(), public))
        return dict(envelope.to_dict())

    @property
    def _heads_path(self) -> Path:
        return heads_path(self.path)

    def remember(self, ledger: Path, index: int | None, head: str | None) -> None:
        """Record beside the key (outside the data dir) the last head it signed for `ledger`: a ledger cut
        back to an older signed head, or deleted, is then caught without an outside copy. None forgets it."""
        with (self.path.parent / (self.path.name + ".lock")).open("w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            heads = self._heads()
            if index is None:
                heads.pop(ledger_name(ledger), None)
                log.warning("starting a new ledger at %s, where the ledger key signed heads before", ledger)
            else:
                heads[ledger_name(ledger)] = {"index": index, "hash": head}
            tmp = self._heads_path.with_name(self._heads_path.name + ".tmp")
            tmp.write_text(json.dumps(heads, indent=1, sort_keys=True) + "\n")
            os.replace(tmp, self._heads_path)

    def remembered(self, ledger: Path) -> dict[str, Any] | None:
        found = self._heads().get(ledger_name(ledger))
        return found if isinstance(found, dict) else None

    def _heads(self) -> dict[str, Any]:
        return _read_heads(self._heads_path)

    def open(self, signed: dict[str, Any]) -> dict[str, Any]:
        """The payload of a signed head, if this key signed it; LedgerError otherwise."""
        return open_head(self.public(), signed)


def ledger_name(ledger: Path) -> str:
    """The name a ledger's heads are remembered under: its folder resolved, its own name as configured. A link
    put where the ledger file was does not change the name (following it would find a ledger never signed
    for, whose rollback would then go unseen); and a linked ledger file is refused anyway (`refuse_links`)."""
    return str(ledger.parent.resolve() / ledger.name)


def refuse_links(*paths: Path) -> None:
    """LedgerError if the ledger or its head is a symbolic link: it must be the file the key signed for."""
    for path in paths:
        if path.is_symlink():
            raise LedgerError(f"{path} is a symbolic link; the ledger and its head must be regular files.")


def heads_path(key_path: Path) -> Path:
    """Where the last head a ledger key signed for each ledger is recorded: beside the key."""
    return key_path.with_name(key_path.name + ".heads.json")


def _read_heads(path: Path) -> dict[str, Any]:
    try:
        heads = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return heads if isinstance(heads, dict) else {}


def remembered_head(path: Path, ledger: Path) -> tuple[int, str] | None:
    """(index, hash) of the last head the key beside `path` signed for `ledger`; None if it signed none (or
    the record is unreadable: then only the signed head file and the chain are checked)."""
    found = _read_heads(path).get(ledger_name(ledger))
    if not isinstance(found, dict):
        return None
    index, head = found.get("index"), found.get("hash")
    return (index, head) if isinstance(index, int) and isinstance(head, str) else None


def open_head(public: Ed25519PublicKey, signed: dict[str, Any]) -> dict[str, Any]:
    """The payload ({index, hash, ...}) of a signed head, if `public` signed it; LedgerError otherwise."""
    return open_payload(public, signed, HEAD_PAYLOAD_TYPE, what="head", kind="ledger head")


def open_payload(
    public: Ed25519PublicKey, signed: dict[str, Any], payload_type: str, *, what: str, kind: str
) -> dict[str, Any]:
    """The payload of a DSSE envelope of `payload_type` (`kind`), if `public` signed it; LedgerError otherwise."""
    from securesystemslib.dsse import Envelope
    from securesystemslib.exceptions import VerificationError
    from securesystemslib.signer import SSlibKey

    try:
        envelope = Envelope.from_dict(dict(signed))
        envelope.verify([SSlibKey.from_crypto(public, keyid=key_id(public))], 1)
        payload = json.loads(envelope.payload)
    except (VerificationError, KeyError, TypeError, ValueError) as exc:
        raise LedgerError(f"the {what} is not signed by this ledger's key") from exc
    if envelope.payload_type != payload_type or not isinstance(payload, dict):
        raise LedgerError(f"the signed envelope is not a {kind}")
    return payload


def verified_head(public_path: Path, record: dict[str, Any]) -> tuple[int, str]:
    """(index, hash) of a head record whose signature the public key at `public_path` checks; LedgerError if
    the key cannot be read, the record is unsigned, or the signed head differs from the record."""
    try:
        public = load_public_key(public_path)
    except KeyFileError as exc:
        raise LedgerError(f"the ledger public key cannot be read ({exc.message})") from exc
    signed = record.get("signed")
    if not isinstance(signed, dict):
        raise LedgerError("the ledger head is not signed")
    payload = open_head(public, signed)
    index, head = payload.get("index"), payload.get("hash")
    if not isinstance(index, int) or not isinstance(head, str):
        raise LedgerError("the signed head has no index and hash")
    if (record.get("index"), record.get("hash")) != (index, head):
        raise LedgerError("the signed head does not match the head file (rewritten)")
    return index, head


def hash_at(hashes: list[str], index: int) -> str | None:
    """The hash of entry `index` of a chain (the genesis hash for -1, an empty ledger's head); None if absent."""
    if index == -1:
        return "0" * 64
    return hashes[index] if 0 <= index < len(hashes) else None


def parse_expected_head(value: str) -> dict[str, Any]:
    """A signed head as `rag ledger head` prints it, given as the JSON text or a file holding it."""
    wrong = InvalidInputError(
        "--expect takes the signed head printed by `rag ledger head` (the JSON, or a file holding it).",
        code="invalid_expected_head",
    )
    text = value
    try:
        named_file = not value.lstrip().startswith("{") and Path(value).is_file()
    except OSError:  # a name too long to be a file: then it is meant as the JSON
        named_file = False
    if named_file:
        try:
            text = read_regular(Path(value), max_bytes=1 << 20, follow_symlinks=True, what="head file").decode()
        except (FileRefusedError, UnicodeDecodeError) as exc:
            raise wrong from exc
    try:
        parsed = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise wrong from exc
    signed = parsed.get("signed", parsed) if isinstance(parsed, dict) else None
    if not isinstance(signed, dict) or not _envelope_shaped(signed):
        raise wrong
    return dict(signed)


def _envelope_shaped(value: dict[str, Any]) -> bool:
    """A DSSE envelope's fields with their types (what they say is for the signature check to decide)."""
    signatures = value.get("signatures")
    return (
        isinstance(value.get("payload"), str)
        and isinstance(value.get("payloadType"), str)
        and isinstance(signatures, list)
        and all(
            isinstance(s, dict) and isinstance(s.get("keyid"), str) and isinstance(s.get("sig"), str)
            for s in signatures
        )
    )


def check_signature(key: LedgerKey | None, head: dict[str, Any]) -> list[str]:
    """Problems with the signature of a head record (none without a ledger key to check it)."""
    if key is None:
        return []
    signed = head.get("signed")
    if not key.exists():
        return [f"the ledger key {key.path} is missing, so the head cannot be checked"]
    if not isinstance(signed, dict):
        return ["the ledger head is not signed (rewritten by something without the ledger key?)"]
    try:
        payload = key.open(signed)
    except LedgerError as exc:
        return [str(exc)]
    if payload.get("index") != head.get("index") or payload.get("hash") != head.get("hash"):
        return ["the signed head does not match the head file (rewritten)"]
    return []


def check_extends(key: LedgerKey | None, expect: dict[str, Any], hashes: list[str]) -> list[str]:
    """Problems if the chain `hashes` does not extend `expect`, a signed head kept elsewhere."""
    if key is None or not key.exists():
        return ["the ledger key is missing, so the expected head's signature cannot be checked"]
    try:
        payload = key.open(expect)
    except LedgerError as exc:
        return [f"expected head: {exc}"]
    index = payload.get("index")
    if not isinstance(index, int) or hash_at(hashes, index) is None:
        return [f"the ledger has {len(hashes)} entries but the expected head is entry {index} (cut)"]
    if hash_at(hashes, index) != payload.get("hash"):
        return [f"entry {index + 1} differs from the expected head (history rewritten)"]
    return []
