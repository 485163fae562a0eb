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
from rag.answering import ANSWER_MODES, AnswerService
from rag.settings import Settings
from rag.wiring import build_answer_service, build_embedder, build_ingestor
from tests.conftest import Curator

pytestmark = pytest.mark.slow

# (question, facts a right answer states (| = any of them), the document it must cite (| = either, when
# the same reference text sits in a topic page and in the chapter that contains it)). Asked with the
# defaults a user gets: no mode is chosen per question.
IN_SCOPE = [
    ("What does the pass statement do when it is executed?", "nothing happens|placeholder|null operation", "pass.md"),
    ("What happens when a break statement runs inside a loop?", "terminates", "break.md|while.md|compound.md"),
    (
        "What does the continue statement do?",
        "next cycle|skips the rest of the suite",
        "continue.md|while.md|compound.md",
    ),
    ("What does the return statement leave?", '"None" is substituted|current function call', "return.md"),
    ("What does the global statement declare?", "global variable|declaration which holds", "global.md"),
    ("What are lambda expressions used to create?", "anonymous functions", "lambda.md"),
    ("What exception is raised when an assert statement fails?", "AssertionError", "assert.md"),
    ("What does the del statement do?", "removes the binding|unbind", "del.md|execmodel.md"),
    ("What does the try statement specify?", "handler", "try.md|compound.md"),
    ("What does the while statement do?", "if it is true|repeatedly tests|repeated execution", "while.md|compound.md"),
]
# Of the 10, answered with a right fact and the right citation: the level measured with the defaults (extract
# mode), a floor against regressions. The goal is 8; README "The extractive reader" lists the misses.
MIN_RIGHT = 5
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


def test_in_scope_questions_are_answered_right_and_cited_with_the_defaults(
    world: tuple[Settings, AnswerService, Curator],
) -> None:
    """The answers a user sees, default mode: most are right and rightly cited; none is unchecked or unlabelled;
    an extractive answer reads word for word in the chunk it cites."""
    _, service, _ = world
    right, seen = 0, []
    for question, facts, doc_ids in IN_SCOPE:
        result = service.answer(question)
        seen.append((question, result.reason, result.answer))
        if result.abstained:
            continue
        assert result.citations and all(f"[{c.n}]" in result.answer for c in result.citations), seen[-1]
        assert result.label["corpus_ledger_head"] and result.answer_mode == service.settings.answer_mode
        if result.answer_mode == "extract":
            assert result.label["extractive"] is True and result.label["watermark"] is None
            quoted = " ".join(result.label["quotation"]["text"].split())
            cited = result.passage_texts[result.label["quotation"]["passage"] - 1]
            assert quoted in " ".join(cited.split()), seen[-1]
        else:
            assert all(s.supported for s in result.released)
            assert result.label["watermark"]["scheme"] == "kgw-lefthash-1"
        fact = any(f.lower() in result.answer.lower() for f in facts.split("|"))
        cited_right = set(doc_ids.split("|")) & {c.doc_id for c in result.citations}
        right += bool(fact and cited_right)
    assert right >= MIN_RIGHT, json.dumps(seen, indent=1)


@pytest.mark.parametrize("question", OUT_OF_SCOPE)
def test_out_of_scope_questions_abstain(world: tuple[Settings, AnswerService, Curator], question: str) -> None:
    _, service, _ = world
    for mode in ANSWER_MODES:
        result = service.answer(question, mode=mode)
        assert result.abstained and result.citations == [], (question, mode, result.answer)


def test_openai_client_round_trip(world: tuple[Settings, AnswerService, Curator]) -> None:
    from openai import OpenAI
    from openai.types.chat import ChatCompletionMessageParam

    settings, service, _ = world
    with TestClient(create_app(settings, service)) as http:
        client = OpenAI(base_url="http://testserver/v1", api_key="unused", http_client=http)
        question = "What happens when a break statement runs inside a loop?"
        messages: list[ChatCompletionMessageParam] = [{"role": "user", "content": question}]
        completion = client.chat.completions.create(model="provenance-rag", messages=messages)
        text = completion.choices[0].message.content or ""
        assert "terminates" in text
        extra = completion.model_extra or {}
        assert extra["rag"]["citations"][0]["doc_id"] in ("break.md", "while.md", "compound.md")
        assert extra["rag"]["label"]["ai_generated"] is (extra["rag"]["answer_mode"] != "extract")
        streamed = client.chat.completions.create(model="provenance-rag", messages=messages, stream=True)
        parts = [chunk.choices[0].delta.content or "" for chunk in streamed if chunk.choices]
        assert "".join(parts) == text


def test_loop_guard_refuses_our_own_answers_signed_as_human(
    world: tuple[Settings, AnswerService, Curator], tmp_path: Path
) -> None:
    """What a user would launder: released generated answers, citation marks removed, in one file. Free mode
    is the mode that generates text (extract mode releases quotations of the signed corpus, human text)."""
    settings, service, curator = world
    released = [service.answer(q, mode="free") for q, *_ in IN_SCOPE]
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
