"""API keys (issue 13, part 3): made once and shown once, stored as a hash in a 0600 file, revoked by name;
and `rag apikeys new|list|revoke`."""

from __future__ import annotations

import hashlib
import json
import os
import stat
from pathlib import Path

import pytest
from typer.testing import CliRunner

from rag.apikeys import TOKEN_PREFIX, ApiKeyFileError, ApiKeyStore, allows
from rag.cli import app
from rag.errors import ConflictError, InvalidInputError, NotFoundError
from rag.settings import Settings


@pytest.fixture
def keys(settings: Settings) -> ApiKeyStore:
    return ApiKeyStore(settings.api_keys_path)


def test_a_token_has_256_random_bits_and_only_its_hash_is_stored(keys: ApiKeyStore) -> None:
    key, token = keys.new("alice", "curator")
    assert token.startswith(TOKEN_PREFIX) and len(token) - len(TOKEN_PREFIX) == 43  # 32 bytes, base64url
    stored = keys.path.read_text()
    assert token not in stored and token[len(TOKEN_PREFIX) :] not in stored
    assert json.loads(stored)["keys"][0]["sha256"] == hashlib.sha256(token.encode()).hexdigest() == key.sha256
    assert stat.S_IMODE(os.stat(keys.path).st_mode) == 0o600
    assert keys.verify(token) == key and keys.verify(token + "x") is None and keys.verify("") is None
    _, other = keys.new("bob", "reader")
    assert other != token and ApiKeyStore(keys.path).verify(other).name == "bob"  # type: ignore[union-attr]


def test_revoked_keys_stay_listed_and_names_are_never_reused(keys: ApiKeyStore) -> None:
    _, token = keys.new("alice", "admin")
    revoked, now = keys.revoke("alice")
    assert now and not revoked.active and keys.verify(token) == revoked  # found, and known to be revoked
    assert keys.revoke("alice")[1] is False
    assert keys.any_made()  # a server with only revoked keys stays closed
    with pytest.raises(ConflictError) as exists:
        keys.new("alice", "reader")
    assert exists.value.code == "key_exists"
    with pytest.raises(NotFoundError):
        keys.revoke("nobody")


@pytest.mark.parametrize(("name", "role", "code"), [("../x", "reader", "invalid_key_name"), (".hidden", "reader",
    "invalid_key_name"), ("ok", "owner", "invalid_role"), ("", "admin", "invalid_key_name")])  # fmt: skip
def test_bad_names_and_roles_are_refused(keys: ApiKeyStore, name: str, role: str, code: str) -> None:
    with pytest.raises(InvalidInputError) as refused:
        keys.new(name, role)
    assert refused.value.code == code and not keys.path.exists()


def test_roles_are_ordered() -> None:
    assert allows("admin", "curator") and allows("curator", "reader") and allows("reader", "reader")
    assert not allows("reader", "curator") and not allows("curator", "admin")


def test_the_file_is_re_read_when_another_process_changes_it(keys: ApiKeyStore) -> None:
    assert keys.all_keys() == []
    _, token = ApiKeyStore(keys.path).new("carol", "reader")  # e.g. `rag apikeys new` while the server runs
    assert keys.verify(token) is not None
    ApiKeyStore(keys.path).revoke("carol")
    assert not keys.verify(token).active  # type: ignore[union-attr]


DAMAGED = [b"{", b"[]", b'{"format": 1, "keys": [{"name": "x"}]}', b'{"format": 9, "keys": []}']


@pytest.mark.parametrize("content", DAMAGED)
def test_a_damaged_file_lets_nobody_in(keys: ApiKeyStore, content: bytes) -> None:
    keys.path.parent.mkdir(parents=True, exist_ok=True)
    keys.path.write_bytes(content)
    with pytest.raises(ApiKeyFileError):
        keys.verify("rag_anything")


def test_cli_prints_the_token_once_lists_and_revokes(settings: Settings, tmp_path: Path) -> None:
    runner = CliRunner()
    made = runner.invoke(app, ["apikeys", "new", "ci-bot", "--role", "reader"])
    assert made.exit_code == 0, made.output
    token = next(line for line in made.output.splitlines() if line.startswith(TOKEN_PREFIX))
    assert ApiKeyStore(settings.api_keys_path).verify(token) is not None

    listed = runner.invoke(app, ["apikeys", "list", "--json"])
    assert listed.exit_code == 0 and token not in listed.output
    assert [(k["name"], k["role"], k["revoked_at"]) for k in json.loads(listed.stdout)] == [("ci-bot", "reader", None)]
    assert runner.invoke(app, ["apikeys", "revoke", "ci-bot"]).exit_code == 0
    assert json.loads(runner.invoke(app, ["apikeys", "list", "--json"]).stdout)[0]["revoked_at"]

    again = runner.invoke(app, ["apikeys", "new", "ci-bot", "--role", "reader"])
    assert again.exit_code == 2 and "key_exists" in again.output
    wrong = runner.invoke(app, ["apikeys", "new", "x", "--role", "root"])
    assert wrong.exit_code == 2 and "invalid_role" in wrong.output
