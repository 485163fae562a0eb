"""Attacks on the HTTP layer found by an adversarial review of the chat-client, upload, key and metrics work;
each test pins what now stops one (fakes for the models, real servers on loopback where the wire matters)."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
from fastapi.testclient import TestClient

from api.chat.sources import _plain
from api.chat.tasks import title_from, unwrap_question
from api.server import uvicorn_config
from rag.apikeys import ApiKeyStore
from rag.settings import Settings
from tests.api_curation import curation_app
from tests.api_server import live_server, raw_connection, raw_request, read_until_closed


def test_an_unclosed_user_query_tag_costs_nothing() -> None:
    """A lazy pattern around whitespace took minutes of the event loop for one 16,000-character message."""
    text = "### Task: x\n<user_query>" + " " * 16_000
    started = time.perf_counter()
    assert unwrap_question(text) == text
    assert time.perf_counter() - started < 0.05
    assert unwrap_question("### Task: x\n<user_query>  What does pass do?  </user_query> tail") == "What does pass do?"


def test_lone_surrogates_are_refused_as_invalid_requests(settings: Settings, corpus: Path) -> None:
    bodies = {
        "/v1/answer": '{"question": "What does pass do \\ud800?"}',
        "/v1/chat/completions": '{"messages": [{"role": "user", "content": "### Task: title \\udc00"}]}',
    }
    with TestClient(curation_app(settings, corpus), raise_server_exceptions=False) as client:
        for path, body in bodies.items():
            reply = client.post(path, content=body, headers={"content-type": "application/json"})
            assert reply.status_code == 422 and reply.json()["error"]["code"] == "invalid_request", reply.text
        filtered = '{"question": "What does pass do?", "filters": {"title\\ud800": "x"}}'
        reply = client.post("/v1/answer", content=filtered, headers={"content-type": "application/json"})
        assert reply.status_code == 422


def test_made_up_methods_share_one_metrics_label(settings: Settings, corpus: Path) -> None:
    app = curation_app(settings, corpus)
    with live_server(app, settings) as base:
        for n in range(20):
            sock = raw_connection(base)
            sock.sendall(raw_request(f"M{n:04d}XYZ", "/healthz", headers={"Connection": "close"}))
            read_until_closed(sock, 5)
            sock.close()
        scraped = httpx.get(f"{base}/metrics").text
    methods = {line.split('method="')[1].split('"')[0] for line in scraped.splitlines() if 'method="' in line}
    assert "other" in methods and not any(m.startswith("M00") for m in methods)


def test_a_body_without_a_key_is_refused_before_it_is_read(settings: Settings, corpus: Path) -> None:
    """Once keys exist, a client without one cannot make the server read (or wait for) megabytes."""
    app = curation_app(settings, corpus, anonymous=False)
    ApiKeyStore(settings.api_keys_path).new("ops", "admin")
    with live_server(app, settings) as base:
        sock = raw_connection(base)
        headers = {"Content-Type": "application/json", "Content-Length": str(3_900_000)}
        started = time.monotonic()
        sock.sendall(raw_request("POST", "/v1/answer", b'{"question": "', headers))  # the rest never comes
        sock.settimeout(5)
        reply = sock.recv(65536)
        sock.close()
    assert reply.startswith(b"HTTP/1.1 401") and b"missing_api_key" in reply
    assert time.monotonic() - started < 3  # not the body timeout


def test_client_addresses_are_the_sockets_not_forwarded_headers(settings: Settings) -> None:
    assert uvicorn_config(object(), settings, host="127.0.0.1", port=0).proxy_headers is False


def test_titles_in_the_sources_block_cannot_become_links() -> None:
    plain = _plain("Official fix https://evil.example/login, www.evil.example or ops@evil.example [x](javascript:y)")
    assert "https://" not in plain and "www.evil" not in plain and "ops@" not in plain and "](" not in plain
    assert title_from("What [2] does the pass [ 3 ] statement do?") == "What does the pass statement do"
