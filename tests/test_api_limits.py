"""Issue 17, hostile clients: body and message limits, unknown fields, slow and many connections, no
internal detail in any response. In-process (TestClient) where the app decides, a real uvicorn server on
loopback where the server does (chunked bodies, slow clients, connection limits)."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from rag.generation import OpenAICompatibleGenerator
from rag.settings import Settings
from tests.api_server import live_server, raw_connection, raw_request, read_until_closed, serving_app
from tests.fakes import FakeGenerator, InMemoryStore
from tests.test_answering import QUESTION, TRUE_SENTENCE, make_service

UPSTREAM = "http://llm.internal.example:8000/v1"


def chat(content: str = QUESTION, **extra: object) -> dict[str, object]:
    return {"model": "provenance-rag", "messages": [{"role": "user", "content": content}], **extra}


@pytest.fixture
def app_client(settings: Settings, corpus: Path) -> Iterator[TestClient]:
    with TestClient(serving_app(settings, corpus, FakeGenerator(TRUE_SENTENCE))) as client:
        yield client


def assert_error(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code and error["message"].endswith("."), error


# --- request body, messages, unknown fields ---------------------------------------------------------


def test_a_body_over_the_limit_is_refused_from_its_content_length_unread(settings: Settings, corpus: Path) -> None:
    settings.server.max_body_bytes = 4096
    with TestClient(serving_app(settings, corpus, FakeGenerator(TRUE_SENTENCE))) as client:
        big = json.dumps(chat("x" * 10_000)).encode()
        response = client.post("/v1/chat/completions", content=big, headers={"content-type": "application/json"})
        assert_error(response, 413, "request_too_large")
        assert response.headers["connection"] == "close"
        answer = client.post("/v1/answer", content=b"{" + b" " * 5000 + b"}")
        assert_error(answer, 413, "request_too_large")
        assert client.post("/v1/answer", json={"question": QUESTION}).status_code == 200  # under it: served


def test_a_bad_content_length_is_a_400(app_client: TestClient) -> None:
    response = app_client.post("/v1/answer", content=b"{}", headers={"content-length": "-5"})
    assert_error(response, 400, "invalid_content_length")


def test_chat_messages_are_capped_in_number_and_size(settings: Settings, corpus: Path) -> None:
    settings.server.max_messages = 3
    settings.server.max_message_chars = 500
    with TestClient(serving_app(settings, corpus, FakeGenerator(TRUE_SENTENCE))) as client:
        many = {"messages": [{"role": "user", "content": QUESTION}] * 4}
        assert_error(client.post("/v1/chat/completions", json=many), 422, "too_many_messages")
        long = {"messages": [{"role": "system", "content": "x" * 501}, {"role": "user", "content": QUESTION}]}
        assert_error(client.post("/v1/chat/completions", json=long), 422, "message_too_long")
        ok = {"messages": [{"role": "system", "content": "x" * 500}] + [{"role": "user", "content": QUESTION}] * 2}
        assert client.post("/v1/chat/completions", json=ok).status_code == 200
        schema = client.get("/openapi.json").json()["components"]["schemas"]
    assert schema["ChatCompletionRequest"]["properties"]["messages"]["maxItems"] == 3
    assert {"type": "string", "maxLength": 500} in schema["ChatMessage"]["properties"]["content"]["anyOf"]
    assert schema["AnswerRequest"]["properties"]["question"]["maxLength"] == settings.answer.max_question_chars


def test_openai_fields_are_ignored_and_unknown_ones_refused(app_client: TestClient) -> None:
    openai_extras = {
        "tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}],
        "tool_choice": "auto",
        "n": 1,  # more choices are refused (tests/test_chat_clients.py)
        "user": "u-1",
        "stream_options": {"include_usage": True},
        "response_format": {"type": "text"},
        "seed": 7,
        "stop": ["\n"],
        "top_p": 0.5,
        "presence_penalty": 0,
        "max_completion_tokens": 20,
    }
    body = chat(**openai_extras)
    body["messages"] = [{"role": "system", "content": "Be brief.", "name": "sys"}, *body["messages"]]  # type: ignore[list-item]
    response = app_client.post("/v1/chat/completions", json=body)
    assert response.status_code == 200 and response.json()["choices"][0]["message"]["content"]
    misspelt = app_client.post("/v1/chat/completions", json=chat(filter={"license": "MIT"}))
    assert_error(misspelt, 422, "unknown_field")
    assert "`filter`" in misspelt.json()["error"]["message"]
    in_message = app_client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "q", "x": 1}]})
    assert_error(in_message, 422, "unknown_field")
    assert_error(app_client.post("/v1/answer", json={"question": QUESTION, "tools": []}), 422, "unknown_field")


def test_the_openai_client_with_its_own_options_is_served(app_client: TestClient) -> None:
    from openai import OpenAI

    client = OpenAI(base_url="http://testserver/v1", api_key="unused", http_client=app_client)
    options: dict[str, object] = {
        "temperature": 0.2,
        "top_p": 0.9,
        "max_completion_tokens": 40,
        "n": 1,
        "seed": 3,
        "stop": ["\n\n"],
        "user": "someone",
        "tools": [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}],
        "tool_choice": "none",
        "parallel_tool_calls": False,
        "response_format": {"type": "text"},
        "logprobs": False,
        "metadata": {"k": "v"},
    }
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": QUESTION}]
    completion = client.chat.completions.create(model="provenance-rag", messages=messages, **options)  # type: ignore[call-overload]
    assert (completion.choices[0].message.content or "").startswith("When it is executed")
    streamed = client.chat.completions.create(
        model="provenance-rag", messages=messages, stream=True, stream_options={"include_usage": True}, **options
    )  # type: ignore[call-overload]
    assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices).startswith("When it is")
    (model,) = client.models.list().data
    assert model.id == "provenance-rag" and (model.model_extra or {})["generator"] == "fake-generator"


def test_every_error_has_the_one_shape(app_client: TestClient) -> None:
    assert_error(app_client.get("/nowhere"), 404, "not_found")
    assert_error(app_client.delete("/v1/answer"), 405, "method_not_allowed")
    broken = app_client.post("/v1/answer", content=b"[1, 2", headers={"content-type": "application/json"})
    assert_error(broken, 400, "invalid_json")
    text_body = app_client.post("/v1/answer", content=b"question", headers={"content-type": "text/plain"})
    assert text_body.status_code in (400, 422) and "error" in text_body.json()


# --- no internal detail -----------------------------------------------------------------------------


def remote_generator(settings: Settings, handler: object) -> OpenAICompatibleGenerator:
    settings.generator.base_url = UPSTREAM
    settings.generator.remote_model = "m"
    return OpenAICompatibleGenerator(settings.generator, transport=httpx.MockTransport(handler))  # type: ignore[arg-type]


def reply(request: httpx.Request) -> httpx.Response:
    return httpx.Response(200, json={"choices": [{"message": {"content": TRUE_SENTENCE}}], "usage": {}})


def refuse(request: httpx.Request) -> httpx.Response:
    raise httpx.ConnectError(f"cannot reach {UPSTREAM} from /srv/secret/path")


def leaks(text: str, settings: Settings) -> list[str]:
    marks = ["llm.internal.example", UPSTREAM, str(settings.data_dir), str(Path.home()), "Traceback", "/srv/secret"]
    return [mark for mark in marks if mark in text]


@pytest.mark.parametrize("handler", [reply, refuse])
def test_no_upstream_address_in_any_response(settings: Settings, store: InMemoryStore, handler: object) -> None:
    settings.answer.relevance_threshold = 0.05
    generator = remote_generator(settings, handler)
    with TestClient(create_app(settings, make_service(settings, store, generator))) as client:  # type: ignore[arg-type]
        seen = [client.get("/v1/models"), client.get("/readyz")]
        seen.append(client.post("/v1/answer", json={"question": QUESTION}))
        seen.append(client.post("/v1/chat/completions", json=chat()))
        with client.stream("POST", "/v1/chat/completions", json=chat(stream=True)) as streamed:
            seen.append(streamed.read())  # type: ignore[arg-type]
    texts = [r if isinstance(r, bytes) else r.content for r in seen]
    for text in texts:
        assert not leaks(text.decode(), settings), text
    answer = seen[2]
    if handler is refuse:
        assert_error(answer, 503, "generator_failed")  # type: ignore[arg-type]
        assert b"generator_failed" in texts[-1]
    else:
        assert answer.json()["label"]["generator"] == "openai-compatible:m@[generator server]"  # type: ignore[union-attr]
        assert seen[0].json()["data"][0]["generator"] == "openai-compatible:m@[generator server]"  # type: ignore[union-attr]


class BrokenWarmUp(FakeGenerator):
    def warm_up(self) -> None:
        from rag.errors import BackendUnavailableError

        raise BackendUnavailableError(
            "Model file not found: /root/.cache/provenance-first-rag/models/x.gguf.", code="model_missing"
        )


class CrashingWarmUp(FakeGenerator):
    def warm_up(self) -> None:
        raise RuntimeError("CUDA error at /opt/torch/lib/libtorch.so: device lost")


@pytest.mark.parametrize(
    ("generator", "code"), [(BrokenWarmUp(""), "model_missing"), (CrashingWarmUp(""), "warm_up_failed")]
)
def test_readyz_reports_a_failed_warm_up_as_a_code_only(
    settings: Settings, store: InMemoryStore, generator: FakeGenerator, code: str
) -> None:
    with TestClient(create_app(settings, make_service(settings, store, generator))) as client:
        for _ in range(100):
            ready = client.get("/readyz")
            if ready.json()["status"] != "warming":
                break
            time.sleep(0.02)
    assert ready.status_code == 503 and ready.json()["status"] == "failed"
    assert ready.json()["error"]["code"] == code
    assert "/root" not in ready.text and "/opt" not in ready.text and "CUDA" not in ready.text


def test_a_server_side_error_says_nothing_of_its_cause(settings: Settings, store: InMemoryStore) -> None:
    from rag.errors import LedgerError

    class CorruptLedger(FakeGenerator):
        def stream(self, *args: object, **kwargs: object) -> Iterator[str]:
            raise LedgerError(f"ledger at {settings.data_dir}/ledger.jsonl: entry 3 is torn")

    class Crash(FakeGenerator):
        def stream(self, *args: object, **kwargs: object) -> Iterator[str]:
            raise KeyError(f"{settings.data_dir}/bm25/index")

    settings.answer.relevance_threshold = 0.05
    for generator, status, code in ((CorruptLedger(""), 500, "ledger_corrupt"), (Crash(""), 500, "internal_error")):
        app = create_app(settings, make_service(settings, store, generator))
        with TestClient(app, raise_server_exceptions=False) as client:
            response = client.post("/v1/answer", json={"question": QUESTION})
            with client.stream("POST", "/v1/chat/completions", json=chat(stream=True)) as streamed:
                events = streamed.read().decode()
        assert_error(response, status, code)
        assert not leaks(response.text, settings) and not leaks(events, settings)
        assert str(settings.data_dir) not in events and "[DONE]" in events


# --- the real server: chunked bodies, slow clients, many connections ----------------------------------


@pytest.fixture
def server(settings: Settings, corpus: Path) -> Iterator[str]:
    settings.server.max_body_bytes = 4096
    settings.server.header_timeout_s = 0.5
    settings.server.body_timeout_s = 0.5
    with live_server(serving_app(settings, corpus, FakeGenerator(TRUE_SENTENCE)), settings) as url:
        yield url


@pytest.mark.slow  # starts a server
def test_a_chunked_body_is_cut_off_at_the_limit(settings: Settings, corpus: Path) -> None:
    settings.server.max_body_bytes = 4096
    app = serving_app(settings, corpus, FakeGenerator(TRUE_SENTENCE))
    read = {"bytes": 0}

    async def counting(scope: Any, receive: Any, send: Any) -> None:  # what the server hands the app
        async def counted() -> Any:
            message = await receive()
            read["bytes"] += len(message.get("body", b""))
            return message

        await app(scope, counted, send)

    def chunks() -> Iterator[bytes]:
        for _ in range(8000):  # 8 MB offered, without a Content-Length
            yield b" " * 1024

    with live_server(counting, settings) as url, httpx.Client(base_url=url, timeout=10) as client:  # type: ignore[arg-type]
        try:
            response = client.post("/v1/answer", content=chunks(), headers={"content-type": "application/json"})
        except httpx.TransportError:  # the server may close before the client has finished writing
            response = None
    if response is not None:
        assert_error(response, 413, "request_too_large")
    # Read up to the limit and what uvicorn had buffered ahead (64 KiB and one socket read), no further.
    assert read["bytes"] < 1_000_000


@pytest.mark.slow  # starts a server
def test_a_body_sent_too_slowly_gets_a_408(server: str) -> None:
    with raw_connection(server) as sock:
        sock.sendall(
            raw_request("POST", "/v1/answer", b'{"quest', {"Content-Length": 100, "Content-Type": "application/json"})
        )
        reply_bytes = read_until_closed(sock)
    assert reply_bytes.startswith(b"HTTP/1.1 408") and b'"body_timeout"' in reply_bytes


@pytest.mark.slow  # starts a server
@pytest.mark.parametrize("partial", [b"", b"GET /healthz HTTP/1.1\r\nHost: x\r\n"])
def test_a_connection_that_does_not_finish_its_headers_is_closed(server: str, partial: bytes) -> None:
    with raw_connection(server) as sock:
        sock.sendall(partial)
        started = time.monotonic()
        assert read_until_closed(sock, limit=5) == b""
    assert time.monotonic() - started < 3


@pytest.mark.slow  # starts a server
@pytest.mark.parametrize("size", [20_000, 200_000])
def test_oversized_headers_are_refused(server: str, size: int) -> None:
    with raw_connection(server) as sock:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # refused before it was all sent
            sock.sendall(raw_request("GET", "/healthz", headers={"X-Filler": "a" * size}))
        reply_bytes = read_until_closed(sock)
    if size < 65536:  # arrives in one read, past h11's incomplete-event bound: the app's check refuses it
        assert reply_bytes.startswith(b"HTTP/1.1 431") and b'"headers_too_large"' in reply_bytes
    else:  # h11 refuses it while it is still incomplete (uvicorn's own plain 400), or the connection is cut
        assert reply_bytes.startswith(b"HTTP/1.1 400") or reply_bytes == b""


@pytest.fixture
def crowded_server(settings: Settings, corpus: Path) -> Iterator[str]:
    settings.server.limit_concurrency = 4
    with live_server(serving_app(settings, corpus, FakeGenerator(TRUE_SENTENCE)), settings) as url:
        yield url


@pytest.mark.slow  # starts a server
def test_connections_beyond_the_concurrency_limit_get_503(crowded_server: str) -> None:
    server = crowded_server
    idle = [raw_connection(server) for _ in range(4)]
    try:
        time.sleep(0.1)
        response = httpx.get(f"{server}/healthz", timeout=5)
    finally:
        for sock in idle:
            sock.close()
    assert response.status_code == 503
    time.sleep(0.2)
    assert httpx.get(f"{server}/healthz", timeout=5).status_code == 200


@pytest.mark.slow  # starts a server
def test_a_kept_alive_connection_serves_several_requests(server: str) -> None:
    with httpx.Client(base_url=server, timeout=5) as client:
        for _ in range(3):
            assert client.post("/v1/answer", json={"question": QUESTION}).status_code == 200
