"""Extract mode through the answering service, with a fake reader: labels, quotation, abstentions, fallback."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from rag.errors import InvalidInputError
from rag.reader.extractive import Reading
from rag.reader.spans import Span
from rag.settings import Settings
from tests.fakes import FakeGenerator, InMemoryStore
from tests.test_answering import make_service


class FakeReader:
    """Proposes fixed spans (text, log P given the question, log P given a question that asks nothing)."""

    def __init__(self, proposals: list[tuple[str, float, float]]) -> None:
        self.proposals = proposals
        self.asked: list[Sequence[str]] = []

    def read(self, question: str, passages: Sequence[str], *, limit: int = 5) -> Reading:
        self.asked.append(passages)
        spans, texts, baselines = [], [], []
        for text, logprob, baseline in self.proposals:
            n = next((i for i, p in enumerate(passages, start=1) if text in p), 1)
            spans.append(Span(n, 0, 1, logprob))
            texts.append(text)
            baselines.append(baseline)
        return Reading(spans, texts, baselines, 100, 0.01)


def service_with(settings: Settings, store: InMemoryStore, reader: FakeReader | None, generator: FakeGenerator):  # type: ignore[no-untyped-def]
    service = make_service(settings, store, generator)
    service.reader = reader  # type: ignore[assignment]
    recorded: list[list[str]] = []
    service.record_output = lambda released, passages: recorded.append(released)
    return service, recorded


def test_a_statement_question_gets_the_verbatim_sentence_labelled_as_a_quotation(
    lenient: Settings, store: InMemoryStore
) -> None:
    reader = FakeReader([("pass", -0.5, -0.6), ("nothing happens", -1.0, -6.0)])
    service, recorded = service_with(lenient, store, reader, FakeGenerator("never called"))
    result = service.answer("What does the pass statement do when it is executed?")
    assert not result.abstained and result.answer_mode == "extract", result.reason
    assert "nothing happens" in result.answer and result.answer.endswith("].")
    (citation,) = result.citations
    assert citation.doc_id == "pass.md"
    quoted = result.label["quotation"]
    assert quoted["span"] == "nothing happens" and quoted["chunk_sha256"] == citation.chunk_sha256
    assert " ".join(quoted["text"].split()) in " ".join(result.passage_texts[quoted["passage"] - 1].split())
    assert result.label["extractive"] is True and result.label["ai_generated"] is False
    assert result.label["watermark"] is None and result.label["generator"] is None
    assert recorded == []  # a quotation of human text is not registered as our output
    assert result.confidence["answer_gain"] == pytest.approx(5.0)


def test_a_span_the_question_does_not_call_for_is_not_released(lenient: Settings, store: InMemoryStore) -> None:
    reader = FakeReader([("nothing happens", -1.0, -1.3)])  # as likely when nothing is asked
    service, _ = service_with(lenient, store, reader, FakeGenerator("never called"))
    result = service.answer("What does the pass statement do when it is executed?")
    assert result.abstained and result.reason == "does_not_answer" and result.citations == []
    assert "nothing happens" not in str(result.as_dict())  # what it would have quoted does not leave


def test_a_span_not_in_the_passage_is_never_released(lenient: Settings, store: InMemoryStore) -> None:
    reader = FakeReader([("a nil operation happens", -0.1, -9.0)])
    service, _ = service_with(lenient, store, reader, FakeGenerator("never called"))
    result = service.answer("What does the pass statement do when it is executed?")
    assert result.abstained and result.reason == "unsupported_answer"


def test_without_a_local_reader_the_default_is_free_and_extract_is_refused(
    lenient: Settings, store: InMemoryStore
) -> None:
    service, _ = service_with(lenient, store, None, FakeGenerator("When it is executed, nothing happens."))
    assert service.settings.answer_mode == "extract"
    assert service.answer("What does the pass statement do when it is executed?").answer_mode == "free"
    with pytest.raises(InvalidInputError) as raised:
        service.answer("What does the pass statement do?", mode="extract")
    assert raised.value.code == "extract_unsupported"
    with pytest.raises(InvalidInputError):
        service.answer("What does the pass statement do?", mode="extract", grounded=False)


def test_free_mode_refuses_a_looping_answer(lenient: Settings, store: InMemoryStore) -> None:
    looping = "When it is executed, nothing happens, nothing happens, nothing happens, nothing happens."
    service, _ = service_with(lenient, store, None, FakeGenerator(looping))
    result = service.answer("What does the pass statement do when it is executed?", mode="free")
    assert result.abstained and result.reason == "degenerate_answer"


def test_an_ungrounded_answer_without_a_mode_is_generated_and_labelled(lenient: Settings, store: InMemoryStore) -> None:
    service, _ = service_with(lenient, store, FakeReader([]), FakeGenerator("Tokyo"))
    result = service.answer("What is the capital of Japan?", grounded=False)
    assert result.answer_mode == "free" and result.answer.startswith("[unchecked, not grounded]")
    with pytest.raises(InvalidInputError):
        service.answer("What is the capital of Japan?", grounded=False, mode="extract")
