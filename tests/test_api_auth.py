"""API keys with roles over HTTP (issue 13, part 3): every auth outcome on every protected route, the
loopback-open default and the start-up refusal elsewhere, per-key rate limits, CORS only when listed."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from api.server import access, is_loopback
from rag.apikeys import ApiKeyStore
from rag.errors import InvalidInputError
from rag.settings import Settings
from tests.api_curation import WHILE_QUESTION, curation_app

# (method, path, the least role that may call it, a request body)
ROUTES = [
    ("POST", "/v1/answer", "reader", {"question": WHILE_QUESTION}),
    ("POST", "/v1/chat/completions", "reader", {"model": "x", "messages": [{"role": "user", "content": "Hi?"}]}),
    ("GET", "/v1/models", "reader", None),
    ("GET", "/v1/documents", "reader", None),
    ("GET", "/v1/documents/pass.md", "reader", None),
    ("POST", "/v1/documents", "curator", None),
    ("DELETE", "/v1/documents/not-there.md", "curator", None),
    ("GET", "/v1/ledger", "admin", None),
    ("GET", "/v1/ledger/verify", "admin", None),
    ("GET", "/metrics", "admin", None),
    ("GET", "/v1/corpus/report", "admin", None),
]
BELOW = {"reader": None, "curator": "reader", "admin": "curator"}


class Keys:
    """A token per role, one revoked token, and the store they live in."""

    def __init__(self, settings: Settings) -> None:
        self.store = ApiKeyStore(settings.api_keys_path)
        self.tokens = {role: self.store.new(f"{role}-key", role)[1] for role in ("reader", "curator", "admin")}
        self.revoked = self.store.new("gone", "admin")[1]
        self.store.revoke("gone")


@pytest.fixture
def client(settings: Settings, corpus: Path) -> Iterator[TestClient]:
    with TestClient(curation_app(settings, corpus)) as test_client:
        yield test_client


def call(client: TestClient, method: str, path: str, body: object, token: str | None = None) -> tuple[int, dict]:
    headers = {"authorization": f"Bearer {token}"} if token else {}
    response = client.request(method, path, json=body, headers=headers)
    is_json = response.headers.get("content-type", "").startswith("application/json")
    return response.status_code, response.json() if is_json else {}


def test_an_open_server_lets_everyone_do_everything(client: TestClient) -> None:
    """No key made, loopback: the two-command demo works without tokens (a sent token is not looked at)."""
    for method, path, _, body in ROUTES:
        for token in (None, "rag_not-a-key"):
            status, _ = call(client, method, path, body, token)
            assert status not in (401, 403), (method, path)


@pytest.mark.parametrize(("method", "path", "role", "body"), ROUTES)
def test_every_auth_outcome(
    client: TestClient, settings: Settings, method: str, path: str, role: str, body: object
) -> None:
    keys = Keys(settings)  # the first key, made while the server runs, closes it from the next request
    status, error = call(client, method, path, body)
    assert status == 401 and error["error"]["code"] == "missing_api_key"
    response = client.request(method, path, json=body)
    assert response.headers["www-authenticate"] == "Bearer"
    status, error = call(client, method, path, body, "rag_" + "x" * 43)
    assert status == 401 and error["error"]["code"] == "invalid_api_key"
    status, error = call(client, method, path, body, keys.revoked)
    assert status == 401 and error["error"]["code"] == "revoked_api_key"
    below = BELOW[role]
    if below is not None:
        status, error = call(client, method, path, body, keys.tokens[below])
        assert status == 403 and error["error"]["code"] == "insufficient_role" and below in error["error"]["message"]
    for allowed in ("reader", "curator", "admin")[("reader", "curator", "admin").index(role) :]:
        status, _ = call(client, method, path, body, keys.tokens[allowed])
        assert status not in (401, 403, 429), (allowed, status)


def test_malformed_authorization_headers(client: TestClient, settings: Settings) -> None:
    Keys(settings)
    for header in ("Basic dXNlcjpwYXNz", "Bearer", "Bearer   ", "rag_token-without-scheme"):
        response = client.get("/v1/documents", headers={"authorization": header})
        assert response.status_code == 401 and response.json()["error"]["code"] == "invalid_api_key"


def test_health_readiness_and_the_page_need_no_key(client: TestClient, settings: Settings) -> None:
    Keys(settings)
    assert client.get("/healthz").status_code == 200
    assert client.get("/readyz").status_code in (200, 503)
    assert client.get("/").status_code == 200  # the page itself; what it asks for needs the key


def test_a_server_that_may_not_be_open_refuses_everyone_until_a_key_exists(settings: Settings, corpus: Path) -> None:
    with TestClient(curation_app(settings, corpus, anonymous=False)) as client:
        status, error = call(client, "GET", "/v1/documents", None)
        assert status == 401 and "rag apikeys new" in error["error"]["message"]
        token = ApiKeyStore(settings.api_keys_path).new("first", "reader")[1]
        assert call(client, "GET", "/v1/documents", None, token)[0] == 200


def test_revoking_every_key_does_not_open_the_server(client: TestClient, settings: Settings) -> None:
    store = ApiKeyStore(settings.api_keys_path)
    token = store.new("only", "admin")[1]
    assert call(client, "GET", "/v1/ledger", None, token)[0] == 200
    store.revoke("only")
    assert call(client, "GET", "/v1/ledger", None)[0] == 401
    assert call(client, "GET", "/v1/ledger", None, token)[1]["error"]["code"] == "revoked_api_key"


def test_rate_limit_per_key_with_retry_after(settings: Settings, corpus: Path) -> None:
    settings.api.rate_per_s = 0.5
    settings.api.rate_burst = 2
    with TestClient(curation_app(settings, corpus)) as client:
        store = ApiKeyStore(settings.api_keys_path)
        first, second = store.new("one", "reader")[1], store.new("two", "reader")[1]
        assert [call(client, "GET", "/v1/documents", None, first)[0] for _ in range(2)] == [200, 200]
        limited = client.get("/v1/documents", headers={"authorization": f"Bearer {first}"})
        assert limited.status_code == 429 and limited.json()["error"]["code"] == "rate_limited"
        assert limited.headers["retry-after"] == "2"  # one token at 0.5 a second
        assert call(client, "GET", "/v1/documents", None, second)[0] == 200  # its own bucket
        assert client.get("/healthz").status_code == 200  # not counted against anyone


def test_anonymous_clients_are_limited_per_address(settings: Settings, corpus: Path) -> None:
    settings.api.rate_per_s = 0.1
    settings.api.rate_burst = 1
    with TestClient(curation_app(settings, corpus)) as client:
        assert client.get("/v1/documents").status_code == 200
        assert client.get("/v1/documents").status_code == 429


def test_cors_is_off_unless_origins_are_listed(settings: Settings, corpus: Path) -> None:
    preflight = {"origin": "https://chat.example", "access-control-request-method": "POST"}
    with TestClient(curation_app(settings, corpus)) as client:
        response = client.options("/v1/answer", headers=preflight)
        assert "access-control-allow-origin" not in response.headers
        simple = client.get("/v1/documents", headers={"origin": "https://chat.example"})
        assert "access-control-allow-origin" not in simple.headers
    settings.api.cors_origins = ["https://chat.example"]
    with TestClient(curation_app(settings, corpus)) as client:
        allowed = client.options("/v1/answer", headers={**preflight, "access-control-request-headers": "authorization"})
        assert allowed.status_code == 200 and allowed.headers["access-control-allow-origin"] == "https://chat.example"
        other = client.options("/v1/answer", headers={**preflight, "origin": "https://evil.example"})
        assert other.headers.get("access-control-allow-origin") != "https://evil.example"
        simple = client.get("/v1/documents", headers={"origin": "https://chat.example"})
        assert simple.headers["access-control-allow-origin"] == "https://chat.example"


@pytest.mark.parametrize(
    ("host", "local"),
    [("127.0.0.1", True), ("127.0.0.2", True), ("::1", True), ("[::1]", True), ("localhost", True),
     ("0.0.0.0", False), ("::", False), ("192.168.1.10", False), ("no-such-host.invalid", False)],
)  # fmt: skip
def test_loopback_is_recognised(host: str, local: bool) -> None:
    assert is_loopback(host) is local


def test_start_up_decision(settings: Settings) -> None:
    anonymous, line = access(settings, "127.0.0.1")
    assert anonymous and "open" in line and "rag apikeys new" in line
    with pytest.raises(InvalidInputError) as refused:
        access(settings, "0.0.0.0")
    assert refused.value.code == "api_keys_required"
    settings.api.allow_anonymous = True
    anonymous, line = access(settings, "0.0.0.0")
    assert anonymous and "OPEN to anyone" in line
    settings.api.allow_anonymous = False
    ApiKeyStore(settings.api_keys_path).new("ops", "admin")
    anonymous, line = access(settings, "0.0.0.0")
    assert not anonymous and "required" in line and "1 active" in line


def test_rag_serve_refuses_to_start_off_loopback_without_keys(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "RAG_API__ALLOW_ANONYMOUS": "false"}
    rag = str(Path(sys.executable).parent / "rag")
    done = subprocess.run(
        [rag, "serve", "--host", "0.0.0.0", "--port", str(port)], capture_output=True, text=True, env=env, timeout=120
    )
    assert done.returncode == 2 and "api_keys_required" in done.stderr, done.stderr


def test_the_corpus_report_over_http_is_the_cli_report(client: TestClient, settings: Settings) -> None:
    from ingest.corpus_report_view import collect

    status, body = call(client, "GET", "/v1/corpus/report", None)  # no keys made: an open loopback server
    assert status == 200 and body["versions"] and body["versions"][-1]["documents"] >= 1
    assert body == collect(settings)
    assert call(client, "GET", "/v1/corpus/report?gap_s=0", None)[0] == 422
