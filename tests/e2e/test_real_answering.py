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
# mode), a floor against regressions: 7 measured on an Intel Xeon (AMX), one spared for another CPU's rounding.
# The goal is 8; README "The extractive reader" lists the misses.
MIN_RIGHT = 6
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


def test_a_chat_client_sending_content_parts_gets_a_checked_cited_answer_with_its_sources(
    world: tuple[Settings, AnswerService, Curator],
) -> None:
    """Issue 18: the official `openai` client against a real server, the question in text parts, the real reader.
    The text itself carries the answer, the [n] of each citation and a sources block that names and links each
    cited document; streamed, the same text arrives, the block after the last checked sentence."""
    from urllib.parse import quote

    import httpx
    from openai import OpenAI

    from tests.api_server import live_server

    settings, service, _ = world
    parts = [
        {"type": "text", "text": "What does the pass statement do"},
        {"type": "text", "text": "when it is executed?"},
    ]
    messages = [{"role": "system", "content": "You are a helpful assistant."}, {"role": "user", "content": parts}]
    deadline, settings.answer.deadline_s = settings.answer.deadline_s, 300.0  # a shared, busy CPU reads slowly
    try:
        with live_server(create_app(settings, service), settings) as url:
            client = OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=300)
            completion = client.chat.completions.create(model="provenance-rag", messages=messages)  # type: ignore[arg-type]
            stream = client.chat.completions.create(
                model="provenance-rag",
                messages=messages,
                stream=True,
                stream_options={"include_usage": True},  # type: ignore[arg-type]
            )
            chunks = list(stream)
            text = completion.choices[0].message.content or ""
            rag = (completion.model_extra or {})["rag"]
            links = re.findall(r"<(http://127\.0\.0\.1:\d+/v1/documents/[^>]+)>", text)
            documents = [httpx.get(link, timeout=30) for link in links]
    finally:
        settings.answer.deadline_s = deadline
    assert not rag["abstained"] and "pass.md" in {c["doc_id"] for c in rag["citations"]}, text
    answer, _, block = text.partition("\n\n**Sources**\n\n")
    assert any(fact in answer.lower() for fact in ("nothing happens", "null operation", "placeholder")), text
    for citation in rag["citations"]:
        assert f"[{citation['n']}]" in answer
        link = f"<{url}/v1/documents/{quote(citation['doc_id'], safe='/')}>, signed by {citation['signer_name']}"
        assert f"- [{citation['n']}] " in block and link in block and f"licence {citation['license']}." in block
    if rag["answer_mode"] == "extract":  # a quotation, labelled as one, that reads word for word in its source
        assert "a quotation of the signed human-written source" in block and "AI-generated" not in block
        unmarked = re.sub(r"\s*\[\d+\]", "", answer)  # the [n] marks are ours
        assert " ".join(rag["label"]["quotation"]["text"].split()) in " ".join(unmarked.split())
    else:
        assert "AI-generated from the signed sources above" in block
    assert links and all(d.status_code == 200 for d in documents)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == text
    assert chunks[-1].choices == [] and chunks[-1].usage is not None and chunks[-1].usage.prompt_tokens > 0


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
