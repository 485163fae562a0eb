"""The answering service end to end: real Chroma, real MiniLM, real Gemma 3 270M, the real default corpus."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from ingest.provenance import sign_document
from ingest.pydoc_import import import_pydoc
from rag.answering import AnswerService
from rag.settings import Settings
from rag.wiring import build_answer_service, build_embedder, build_ingestor
from tests.conftest import Curator

pytestmark = pytest.mark.slow

# (question, answer mode, a fact the answer must contain, the document it must cite; | = either, when
# the same reference text sits in a topic page and in the chapter that contains it)
IN_SCOPE = [
    ("What does the pass statement do when it is executed?", "quote", "placeholder", "pass.md"),
    (
        "What happens when a break statement runs inside a loop?",
        "quote",
        "terminates the nearest enclosing loop",
        "break.md",
    ),
    ("What does the continue statement do?", "quote", "next cycle", "continue.md"),
    ("What does the return statement leave?", "quote", '"None" is substituted', "return.md"),
    ("What does the global statement declare?", "quote", "global variable", "global.md"),
    ("What are lambda expressions used to create?", "free", "anonymous functions", "lambda.md"),
    ("What exception is raised when an assert statement fails?", "free", "AssertionError", "assert.md"),
    ("What does the del statement do?", "free", "removes the binding", "del.md"),
    ("What does the try statement specify?", "free", "handler", "try.md"),
    ("What does the while statement do?", "free", "if it is true", "while.md|compound.md"),
]
OUT_OF_SCOPE = [
    "Who won the 2018 FIFA World Cup?",
    "What is the capital of Australia?",
    "How many legs does a spider have?",
    "Who painted the Mona Lisa?",
    "What is the boiling point of water at sea level?",
    "Which planet is closest to the sun?",
]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Settings, AnswerService, Curator]]:
    root = tmp_path_factory.mktemp("answering")
    settings = Settings(data_dir=root / "data", trust_path=root / "trust.json")
    curator = Curator(root, settings.trust_path)
    corpus = root / "pydoc"
    import_pydoc(corpus, curator.key_path)
    embedder = build_embedder(settings)
    report = build_ingestor(settings, embedder).ingest([corpus])
    # Every human-written doc passes the watermark check (one topic duplicates another: a skip, not a refusal).
    assert len(report.accepted) + len(report.duplicates) == 79 and not report.rejected
    yield settings, build_answer_service(settings, embedder=embedder), curator


@pytest.mark.parametrize(("question", "mode", "fact", "doc_id"), IN_SCOPE)
def test_in_scope_questions_are_answered_and_cited(
    world: tuple[Settings, AnswerService, Curator], question: str, mode: str, fact: str, doc_id: str
) -> None:
    _, service, _ = world
    result = service.answer(question, mode=mode)  # type: ignore[arg-type]
    assert not result.abstained, (question, result.reason, result.raw)
    assert fact.lower() in result.answer.lower(), (question, result.answer)
    assert set(doc_id.split("|")) & {c.doc_id for c in result.citations}, (question, result.citations)
    assert all(f"[{c.n}]" in result.answer for c in result.citations)
    assert all(s.supported for s in result.support if s.sentence in result.text)
    assert result.label["watermark"]["scheme"] == "kgw-lefthash-1" and result.label["corpus_ledger_head"]


@pytest.mark.parametrize("question", OUT_OF_SCOPE)
def test_out_of_scope_questions_abstain(world: tuple[Settings, AnswerService, Curator], question: str) -> None:
    _, service, _ = world
    for mode in ("free", "quote"):
        result = service.answer(question, mode=mode)  # type: ignore[arg-type]
        assert result.abstained and result.citations == [], (question, mode, result.answer)


def test_openai_client_round_trip(world: tuple[Settings, AnswerService, Curator]) -> None:
    from openai import OpenAI
    from openai.types.chat import ChatCompletionMessageParam

    settings, service, _ = world
    with TestClient(create_app(settings, service)) as http:
        client = OpenAI(base_url="http://testserver/v1", api_key="unused", http_client=http)
        question = "What happens when a break statement runs inside a loop?"
        messages: list[ChatCompletionMessageParam] = [{"role": "user", "content": question}]
        completion = client.chat.completions.create(
            model="default", messages=messages, extra_body={"answer_mode": "quote"}
        )
        text = completion.choices[0].message.content or ""
        assert "terminates the nearest enclosing loop" in text
        extra = completion.model_extra or {}
        assert extra["rag"]["citations"][0]["doc_id"] == "break.md"
        assert extra["rag"]["label"]["ai_generated"] is True
        streamed = client.chat.completions.create(
            model="default",
            messages=messages,
            stream=True,
            extra_body={"answer_mode": "quote"},
        )
        parts = [chunk.choices[0].delta.content or "" for chunk in streamed if chunk.choices]
        assert "".join(parts) == text


def test_loop_guard_refuses_our_own_answers_signed_as_human(
    world: tuple[Settings, AnswerService, Curator], tmp_path: Path
) -> None:
    """What a user would launder: the released answers (default mode), citation marks removed, in one file."""
    settings, service, curator = world
    released = [service.answer(q) for q, *_ in IN_SCOPE]
    answers = [re.sub(r"\s*\[\d+\]", "", a.answer) for a in released if not a.abstained]
    laundered = tmp_path / "laundered"
    laundered.mkdir()
    doc = laundered / "faq.md"
    doc.write_text("# Frequently asked questions\n\n" + "\n\n".join(answers) + "\n")
    sign_document(doc, curator.key, origin="human", curator=curator.name, authors=["Someone"], license="CC0-1.0")
    report = build_ingestor(settings, service.retriever.embedder).ingest([laundered])
    reasons = [r["reason"] for r in report.rejected]
    assert reasons in (["own_output_detected"], ["watermark_detected"]), json.dumps(report.as_dict())
    assert (
        "sentences match answers this service released" in report.rejected[0]["detail"]
        or "z=" in (report.rejected[0]["detail"])
    )
