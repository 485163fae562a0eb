"""Issue 15, items 1 and 2: only checked text leaves over HTTP, and no client can switch the check off.

Every response body and every streamed chunk is scanned for the text of the sentences the check
rejected and for the generator's unchecked output, with a generator scripted to say one supported
and one unsupported sentence, and one that says only unsupported ones (an abstention).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from api.app import create_app
from ingest.pipeline import Ingestor
from rag.answering import UNCHECKED_LABEL
from rag.grounding import GroundednessChecker, SentenceSupport
from rag.settings import Settings
from tests.fakes import FakeEmbedder, FakeGenerator, InMemoryStore
from tests.test_answering import QUESTION, TRUE_SENTENCE, BrokenChecker, make_service

REJECTED = "It was invented in 1066."  # no passage says it: the check drops it
MARS = "Bananas grow on Mars in 1850."  # nothing supported at all: the answer abstains
# Words of the rejected sentences that neither the question, the abstention message nor any passage has.
SECRETS = ("1066", "invented", "Bananas", "Mars", "1850")
REASONS = {"missing_terms", "low_score", "negation", "order", "restates_question", "withheld", "unsupported"}


@pytest.fixture
def store(settings: Settings, corpus: Path) -> InMemoryStore:
    settings.answer.relevance_threshold = 0.05  # the hashing fake embedder gives low cosines
    store = InMemoryStore()
    Ingestor(settings, store, FakeEmbedder()).ingest([corpus])
    return store


def serve(settings: Settings, store: InMemoryStore, generator: FakeGenerator, **kw: object) -> TestClient:
    return TestClient(create_app(settings, make_service(settings, store, generator, **kw)))


def chat_body(stream: bool, **extra: object) -> dict[str, Any]:
    return {"model": "provenance-rag", "messages": [{"role": "user", "content": QUESTION}], "stream": stream, **extra}


def every_response(client: TestClient, **extra: object) -> Iterator[tuple[str, str]]:
    """(what, text) of every response body: /v1/answer, chat, and each streamed chunk on its own."""
    yield "answer", client.post("/v1/answer", json={"question": QUESTION, **extra}).text
    yield "chat", client.post("/v1/chat/completions", json=chat_body(False, **extra)).text
    with client.stream("POST", "/v1/chat/completions", json=chat_body(True, **extra)) as response:
        for n, line in enumerate(response.iter_lines()):
            yield f"chunk {n}", line


def assert_nothing_rejected_leaves(client: TestClient) -> None:
    seen = 0
    for what, text in every_response(client):
        seen += 1
        leaked = [secret for secret in SECRETS if secret.lower() in text.lower()]
        assert not leaked, (what, leaked, text)
        assert '"raw"' not in text, (what, text)
    assert seen > 4  # the stream was read, chunk by chunk


@pytest.mark.parametrize("script", [f"{TRUE_SENTENCE} {REJECTED}", f"{REJECTED} {TRUE_SENTENCE}"])
def test_a_partly_supported_answer_carries_only_its_kept_sentence(
    settings: Settings, store: InMemoryStore, script: str
) -> None:
    with serve(settings, store, FakeGenerator(script)) as client:
        assert_nothing_rejected_leaves(client)
        body = client.post("/v1/answer", json={"question": QUESTION}).json()
        chat = client.post("/v1/chat/completions", json=chat_body(False)).json()
    assert body["abstained"] is False and body["answer"].startswith("When it is executed, nothing happens [")
    ((kept,),) = [body["support"]]
    assert kept["supported"] is True and kept["sentence"] == TRUE_SENTENCE
    assert body["rejected"]["count"] == 1 and sum(body["rejected"]["reasons"].values()) == 1
    assert set(body["rejected"]["reasons"]) <= REASONS
    assert chat["rag"]["support"] == body["support"] and chat["rag"]["rejected"] == body["rejected"]


def test_an_abstention_carries_no_checked_text(settings: Settings, store: InMemoryStore) -> None:
    with serve(settings, store, FakeGenerator(f"{MARS} {REJECTED}")) as client:
        assert_nothing_rejected_leaves(client)
        body = client.post("/v1/answer", json={"question": QUESTION}).json()
    assert body["abstained"] is True and body["reason"] == "unsupported_answer"
    assert body["support"] == [] and body["rejected"]["count"] == 2
    assert set(body["rejected"]["reasons"]) <= REASONS


class SecondCallFails(GroundednessChecker):
    """Checks the first sentence (and rejects it), then crashes: the answer is withheld mid-way."""

    def __init__(self) -> None:
        super().__init__(FakeEmbedder())
        self.calls = 0

    def check(self, sentences: Sequence[str], passages: Sequence[str]) -> list[SentenceSupport]:
        self.calls += 1
        if self.calls % 2 == 0:
            raise RuntimeError("checker crashed")
        return super().check(sentences, passages)


@pytest.mark.parametrize("checker", [BrokenChecker, SecondCallFails])
def test_a_failed_check_carries_no_generated_text(
    settings: Settings, store: InMemoryStore, checker: type[GroundednessChecker]
) -> None:
    make = (lambda: BrokenChecker(FakeEmbedder())) if checker is BrokenChecker else SecondCallFails
    with serve(settings, store, FakeGenerator(f"{REJECTED} {MARS}"), checker=make()) as client:
        assert_nothing_rejected_leaves(client)
        body = client.post("/v1/answer", json={"question": QUESTION}).json()
    assert body["abstained"] is True and body["reason"] == "grounding_check_failed" and body["support"] == []


@pytest.mark.parametrize("grounded", [False, True])
def test_grounding_cannot_be_switched_off_over_http(settings: Settings, store: InMemoryStore, grounded: bool) -> None:
    generator = FakeGenerator(f"{MARS} Anything at all.")
    with serve(settings, store, generator) as client:
        responses = [
            client.post("/v1/answer", json={"question": QUESTION, "grounded": grounded}),
            client.post("/v1/chat/completions", json=chat_body(False, grounded=grounded)),
            client.post("/v1/chat/completions", json=chat_body(True, grounded=grounded)),
        ]
    for response in responses:
        assert response.status_code == 422, response.text
        assert response.headers["content-type"].startswith("application/json")
        error = response.json()["error"]
        assert error["code"] == "grounding_required" and error["message"].endswith(".")
        assert "Mars" not in response.text
    assert generator.calls == []


def test_an_operator_may_allow_ungrounded_answers_and_they_say_so(settings: Settings, store: InMemoryStore) -> None:
    settings.answer.allow_ungrounded = True
    generator = FakeGenerator(MARS)
    with serve(settings, store, generator) as client:
        body = client.post("/v1/answer", json={"question": QUESTION, "grounded": False}).json()
        chat = client.post("/v1/chat/completions", json=chat_body(False, grounded=False)).json()
        with client.stream("POST", "/v1/chat/completions", json=chat_body(True, grounded=False)) as response:
            chunks = [json.loads(line[6:]) for line in response.iter_lines() if line.startswith("data: {")]
        checked = client.post("/v1/answer", json={"question": QUESTION, "grounded": True}).json()
    assert body["answer"] == f"{UNCHECKED_LABEL} {MARS}" and body["grounded"] is False
    assert body["label"]["grounded"] is False and body["citations"] == []
    assert chat["choices"][0]["message"]["content"] == body["answer"]
    streamed = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    assert streamed.startswith(UNCHECKED_LABEL) and streamed == body["answer"]
    assert checked["abstained"] is True and "Mars" not in json.dumps(checked)  # grounded: still checked
    assert all(passages is None for _, passages, _ in generator.calls[:3])


def test_the_library_keeps_the_full_diagnostics_in_process(settings: Settings, store: InMemoryStore) -> None:
    result = make_service(settings, store, FakeGenerator(f"{TRUE_SENTENCE} {REJECTED}")).answer(QUESTION)
    assert [s.supported for s in result.support] == [True, False] and result.raw.endswith(REJECTED)
    full = result.as_diagnostic_dict()
    assert [s["sentence"] for s in full["support"]] == [TRUE_SENTENCE, REJECTED] and full["raw"] == result.raw
    assert "1066" not in json.dumps(result.as_dict())
    ungrounded = make_service(settings, store, FakeGenerator(MARS)).answer(QUESTION, grounded=False)
    assert ungrounded.answer == f"{UNCHECKED_LABEL} {MARS}" and ungrounded.text == MARS  # evaluation scores the text


def test_rag_ask_explain_shows_rejected_sentences_locally(
    settings: Settings, store: InMemoryStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    import rag.wiring
    from rag.cli import app

    service = make_service(settings, store, FakeGenerator(f"{TRUE_SENTENCE} {REJECTED}"))
    monkeypatch.setattr(rag.wiring, "build_answer_service", lambda *_, **__: service)
    monkeypatch.setenv("RAG_ANSWER__RELEVANCE_THRESHOLD", "0.05")
    monkeypatch.setenv("COLUMNS", "200")
    runner = CliRunner()
    plain = runner.invoke(app, ["ask", QUESTION])
    explained = runner.invoke(app, ["ask", QUESTION, "--explain"])
    as_json = runner.invoke(app, ["ask", QUESTION, "--json"])
    explained_json = runner.invoke(app, ["ask", QUESTION, "--json", "--explain"])
    assert plain.exit_code == explained.exit_code == as_json.exit_code == explained_json.exit_code == 0
    assert "nothing happens" in plain.stdout and "1066" not in plain.stdout
    assert REJECTED in explained.stdout and "missing_terms" in explained.stdout
    assert "1066" not in as_json.stdout and json.loads(as_json.stdout)["rejected"]["count"] == 1
    assert json.loads(explained_json.stdout)["support"][1]["sentence"] == REJECTED
