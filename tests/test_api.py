"""HTTP contract with fakes behind the service: error codes, OpenAI shapes, SSE, back-pressure."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from api.app import conversation_query, create_app
from rag.settings import Settings
from rag.types import AnswerMode
from tests.fakes import FakeGenerator, InMemoryStore
from tests.test_answering import QUESTION, TRUE_SENTENCE, make_service


@pytest.fixture
def client(settings: Settings, corpus: Path) -> Iterator[TestClient]:
    from ingest.pipeline import Ingestor
    from tests.fakes import FakeEmbedder

    settings.answer.relevance_threshold = 0.05
    store = InMemoryStore()
    Ingestor(settings, store, FakeEmbedder()).ingest([corpus])
    service = make_service(settings, store, FakeGenerator(f"{TRUE_SENTENCE} It was invented in 1066."))
    with TestClient(create_app(settings, service)) as test_client:
        yield test_client


def test_answer_returns_checked_cited_labelled_text(client: TestClient) -> None:
    response = client.post("/v1/answer", json={"question": QUESTION, "top_k": 3})
    assert response.status_code == 200
    body = response.json()
    assert body["abstained"] is False and "1066" not in body["answer"]
    assert body["citations"][0]["doc_id"] == "pass.md"
    assert body["label"]["ai_generated"] is True and body["timings"]["total_ms"] > 0
    assert [s["supported"] for s in body["support"]] == [True]  # the rejected sentence only as a count
    assert body["rejected"] == {"count": 1, "reasons": {"missing_terms": 1}} and "1066" not in response.text


@pytest.mark.parametrize(
    ("payload", "status", "code"),
    [
        ({"question": "  "}, 422, "empty_question"),
        ({"question": "x" * 2001}, 422, "question_too_long"),
        ({"question": "ok?", "filters": {"colour": "red"}}, 422, "unknown_filter"),
        ({"question": "ok?", "top_k": "three"}, 422, "invalid_request"),
        ({"question": 42}, 422, "invalid_request"),
        ({"top_k": 3}, 422, "invalid_request"),
        ({"question": "ok?", "surprise": True}, 422, "unknown_field"),
    ],
)
def test_bad_requests_get_a_code_and_a_sentence(
    client: TestClient, payload: dict[str, object], status: int, code: str
) -> None:
    response = client.post("/v1/answer", json=payload)
    assert response.status_code == status
    error = response.json()["error"]
    assert error["code"] == code and error["message"].endswith(".")


def test_invalid_json_is_a_400(client: TestClient) -> None:
    response = client.post("/v1/answer", content=b"{not json", headers={"content-type": "application/json"})
    assert response.status_code == 400 and response.json()["error"]["code"] == "invalid_json"


def test_documents_and_unknown_document(client: TestClient) -> None:
    listing = client.get("/v1/documents").json()
    assert listing["count"] == 3 and {d["doc_id"] for d in listing["documents"]} == {"assert.md", "pass.md", "del.md"}
    one = client.get("/v1/documents/pass.md")
    assert one.status_code == 200 and one.json()["signer_name"] == "test-curator"
    missing = client.get("/v1/documents/nope.md")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "unknown_document"


def test_health_and_readiness(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    for _ in range(50):
        ready = client.get("/readyz")
        if ready.status_code == 200:
            break
        threading.Event().wait(0.05)
    assert ready.status_code == 200 and ready.json()["generator"] == "fake-generator"


def test_chat_completion_shape(client: TestClient) -> None:
    body = {"model": "provenance-rag", "messages": [{"role": "user", "content": QUESTION}]}
    response = client.post("/v1/chat/completions", json=body)
    assert response.status_code == 200
    data = response.json()
    assert data["object"] == "chat.completion"
    assert data["choices"][0]["message"]["content"].startswith("When it is executed, nothing happens [")
    assert data["rag"]["citations"][0]["doc_id"] == "pass.md"


def test_chat_stream_sends_checked_sentences_then_done(client: TestClient) -> None:
    body = {"messages": [{"role": "user", "content": QUESTION}], "stream": True}
    with client.stream("POST", "/v1/chat/completions", json=body) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in response.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"
    chunks = [json.loads(line[6:]) for line in lines[:-1]]
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    assert text.startswith("When it is executed") and "1066" not in text
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop" and chunks[-1]["rag"]["abstained"] is False


class BlockingGenerator(FakeGenerator):
    def __init__(self) -> None:
        super().__init__(TRUE_SENTENCE)
        self.release = threading.Event()
        self.started = threading.Event()

    def stream(
        self,
        question: str,
        passages: Sequence[str] | None,
        *,
        mode: AnswerMode = "free",
        max_new_tokens: int | None = None,
    ) -> Iterator[str]:
        self.started.set()
        self.release.wait(10)
        yield from super().stream(question, passages, mode=mode)


def test_full_queue_answers_503_with_retry_after(settings: Settings, corpus: Path) -> None:
    from ingest.pipeline import Ingestor
    from tests.fakes import FakeEmbedder

    settings.answer.relevance_threshold = 0.05
    settings.answer.queue_size = 1
    store = InMemoryStore()
    Ingestor(settings, store, FakeEmbedder()).ingest([corpus])
    generator = BlockingGenerator()
    with TestClient(create_app(settings, make_service(settings, store, generator))) as client:
        first: dict[str, int] = {}
        worker = threading.Thread(
            target=lambda: first.update(status=client.post("/v1/answer", json={"question": QUESTION}).status_code)
        )
        worker.start()
        assert generator.started.wait(10)
        busy = client.post("/v1/answer", json={"question": QUESTION})
        generator.release.set()
        worker.join(10)
    assert busy.status_code == 503 and busy.headers["Retry-After"] == "5"
    assert busy.json()["error"]["code"] == "busy"
    assert first["status"] == 200


def test_conversation_query_uses_the_last_user_turn() -> None:
    messages = [("system", "be brief"), ("user", "What does the del statement do?"), ("assistant", "It deletes.")]
    assert conversation_query([*messages, ("user", "What does the pass statement do?")]).startswith(
        "What does the pass"
    )
    assert (
        conversation_query([*messages, ("user", "and for lists?")]) == "What does the del statement do? and for lists?"
    )


class FailingGenerator(FakeGenerator):
    def stream(
        self,
        question: str,
        passages: Sequence[str] | None,
        *,
        mode: AnswerMode = "free",
        max_new_tokens: int | None = None,
    ) -> Iterator[str]:
        from rag.generation import GeneratorError

        raise GeneratorError("Generation failed: out of memory.")
        yield ""


def test_generator_failure_is_a_503_never_an_ungrounded_answer(settings: Settings, corpus: Path) -> None:
    from ingest.pipeline import Ingestor
    from tests.fakes import FakeEmbedder

    settings.answer.relevance_threshold = 0.05
    store = InMemoryStore()
    Ingestor(settings, store, FakeEmbedder()).ingest([corpus])
    with TestClient(create_app(settings, make_service(settings, store, FailingGenerator("")))) as client:
        response = client.post("/v1/answer", json={"question": QUESTION})
    assert response.status_code == 503 and response.json()["error"]["code"] == "generator_failed"
