"""The guardrail logic with fakes: gate, sentence removal, fail-closed checker, citations, streaming."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import pytest

from ingest.ledger import Ledger
from rag.answering import ABSTAIN_MESSAGE, UNCHECKED_LABEL, Answer, AnswerService, Delta
from rag.errors import InvalidInputError
from rag.grounding import GroundednessChecker, SentenceSupport, content_words, key_terms, split_sentences
from rag.retrieval import HybridRetriever, LexicalIndex
from rag.settings import Settings
from rag.types import AnswerMode
from rag.wiring import build_gate
from tests.fakes import FakeEmbedder, FakeGenerator, InMemoryStore


class BrokenChecker(GroundednessChecker):
    def check(self, sentences: Sequence[str], passages: Sequence[str]) -> list[SentenceSupport]:
        raise RuntimeError("checker crashed")


def make_service(settings: Settings, store: InMemoryStore, generator: FakeGenerator, **kw: object) -> AnswerService:
    embedder = FakeEmbedder()
    lexical = LexicalIndex(settings.lexical_path)
    ledger = Ledger(settings.ledger_path)
    if store.count():
        lexical.rebuild(store, ledger.head())
    checker = kw.pop("checker", None) or GroundednessChecker(embedder, threshold=settings.answer.support_threshold)
    return AnswerService(
        settings.answer,
        HybridRetriever(store, embedder, lexical),
        generator,
        checker,  # type: ignore[arg-type]
        watermark=settings.watermark,
        ledger_head=ledger.head,
        gate=(gate := build_gate(settings)),
        refresh=gate.follow,
    )


QUESTION = "What does the pass statement do when it is executed?"
TRUE_SENTENCE = "When it is executed, nothing happens."


def test_supported_answer_is_cited_to_its_passage(lenient: Settings, store: InMemoryStore) -> None:
    generator = FakeGenerator(f"{TRUE_SENTENCE} The pass statement was added in Python 9.")
    result = make_service(lenient, store, generator).answer(QUESTION)
    assert not result.abstained
    assert result.answer.startswith("When it is executed, nothing happens [")
    assert "Python 9" not in result.answer  # the invented number is removed
    kept, dropped = result.support
    assert kept.supported and not dropped.supported and "9" in dropped.missing_terms
    (citation,) = result.citations
    assert citation.doc_id == "pass.md" and f"[{citation.n}]" in result.answer
    assert citation.chunk_sha256 and citation.signer_name == "test-curator" and citation.license == "PSF-2.0"
    assert "nothing happens" in citation.excerpt
    assert result.label["ai_generated"] is True and result.label["watermark"]["scheme"] == "kgw-lefthash-1"
    assert result.label["corpus_ledger_head"] == Ledger(lenient.ledger_path).head()


def test_reader_gets_the_top_passages_and_the_checker_all_of_them(lenient: Settings, store: InMemoryStore) -> None:
    lenient.answer.reader_passages, lenient.answer.evidence_sentences = 1, 0
    generator = FakeGenerator(TRUE_SENTENCE)
    result = make_service(lenient, store, generator).answer(QUESTION, top_k=3)
    ((_, given, _),) = generator.calls
    assert len(result.retrieved) == 3 and given is not None and len(given) == 1
    assert given == result.passage_texts[:1]  # the best-ranked passage, whole
    lenient.answer.reader_passages, lenient.answer.evidence_sentences = 2, 1
    generator = FakeGenerator(TRUE_SENTENCE)
    make_service(lenient, store, generator).answer(QUESTION, top_k=3)
    ((_, given, _),) = generator.calls
    assert given is not None and len(given) == 2 and sum(bool(text) for text in given) == 1  # one sentence in all
    assert given[0].count(".") <= 1


def test_unsupported_answer_abstains(lenient: Settings, store: InMemoryStore) -> None:
    result = make_service(lenient, store, FakeGenerator("Bananas grow on Mars in 1850.")).answer(QUESTION)
    assert result.abstained and result.reason == "unsupported_answer" and result.answer == ABSTAIN_MESSAGE
    assert result.citations == [] and result.support and not result.support[0].supported


class ScriptedGenerator(FakeGenerator):
    """A different scripted answer on each call."""

    def __init__(self, *texts: str) -> None:
        super().__init__(texts[0])
        self.texts = list(texts)

    def stream(
        self,
        question: str,
        passages: Sequence[str] | None,
        *,
        mode: AnswerMode = "free",
        max_new_tokens: int | None = None,
    ) -> Iterator[str]:
        self.text = self.texts[min(len(self.calls), len(self.texts) - 1)]
        return super().stream(question, passages, mode=mode, max_new_tokens=max_new_tokens)


ECHO = "The pass statement is executed."  # no content word the question does not already have


def test_an_answer_that_only_restates_the_question_is_retried_on_the_two_best_passages(
    lenient: Settings, store: InMemoryStore
) -> None:
    generator = ScriptedGenerator(ECHO, TRUE_SENTENCE)
    result = make_service(lenient, store, generator).answer(QUESTION, top_k=4)
    assert not result.abstained and result.answer.startswith("When it is executed, nothing happens [")
    (_, first, _), (_, second, _) = generator.calls
    assert first is not None and second is not None and len(first) == len(result.retrieved) > len(second) == 2
    echo, answer = result.support
    assert echo.restates_question and not echo.supported and answer.supported and not answer.restates_question
    assert result.timings["retries"] == 1

    # Restated twice: abstain. With the reader on two passages already, there is nothing narrower to try.
    twice = ScriptedGenerator(ECHO, ECHO)
    result = make_service(lenient, store, twice).answer(QUESTION, top_k=4)
    assert result.abstained and result.reason == "unsupported_answer" and len(twice.calls) == 2
    lenient.answer.reader_passages = 2
    once = ScriptedGenerator(ECHO, TRUE_SENTENCE)
    result = make_service(lenient, store, once).answer(QUESTION, top_k=4)
    assert result.abstained and len(once.calls) == 1
    # An unsupported answer that says something new is not retried either.
    lenient.answer.reader_passages = 4
    other = ScriptedGenerator("Bananas grow on Mars.", TRUE_SENTENCE)
    assert make_service(lenient, store, other).answer(QUESTION, top_k=4).abstained and len(other.calls) == 1


def test_relevance_gate_abstains_without_calling_the_generator(settings: Settings, store: InMemoryStore) -> None:
    settings.answer.relevance_threshold = 0.99
    generator = FakeGenerator(TRUE_SENTENCE)
    result = make_service(settings, store, generator).answer("Who won the football world cup in 2018?")
    assert result.abstained and result.reason == "no_relevant_passage"
    assert generator.calls == []


def test_empty_store_abstains_with_its_own_reason(settings: Settings) -> None:
    generator = FakeGenerator(TRUE_SENTENCE)
    result = make_service(settings, InMemoryStore(), generator).answer(QUESTION)
    assert result.abstained and result.reason == "empty_knowledge_base" and generator.calls == []


def test_checker_failure_withholds_the_answer(lenient: Settings, store: InMemoryStore) -> None:
    service = make_service(lenient, store, FakeGenerator(TRUE_SENTENCE), checker=BrokenChecker(FakeEmbedder()))
    result = service.answer(QUESTION)
    assert result.abstained and result.reason == "grounding_check_failed"
    assert TRUE_SENTENCE not in result.answer


def test_tampered_passage_is_dropped(lenient: Settings, store: InMemoryStore) -> None:
    for chunk_id, (chunk, emb) in list(store.rows.items()):
        if chunk.doc_id == "pass.md":
            tampered = type(chunk)(**{**chunk.__dict__, "text": chunk.text.replace("nothing happens", "all is lost")})
            store.rows[chunk_id] = (tampered, emb)
    result = make_service(lenient, store, FakeGenerator(TRUE_SENTENCE)).answer(QUESTION)
    assert all(r["doc_id"] != "pass.md" for r in result.retrieved)
    assert all(c.doc_id != "pass.md" for c in result.citations)


def test_stream_releases_only_checked_sentences(lenient: Settings, store: InMemoryStore) -> None:
    generator = FakeGenerator(f"The moon is made of cheese. {TRUE_SENTENCE}")
    events = list(make_service(lenient, store, generator).events(QUESTION))
    deltas = [e.text for e in events if isinstance(e, Delta)]
    final = events[-1]
    assert isinstance(final, Answer) and not final.abstained
    assert len(deltas) == 1 and deltas[0].startswith("When it is executed, nothing happens [")
    assert "cheese" not in "".join(deltas) and "cheese" not in final.answer


def test_ungrounded_mode_is_labelled(settings: Settings, store: InMemoryStore) -> None:
    generator = FakeGenerator("Anything at all")
    result = make_service(settings, store, generator).answer(QUESTION, grounded=False)
    assert not result.abstained and result.answer == f"{UNCHECKED_LABEL} Anything at all" and result.citations == []
    assert result.text == result.raw == "Anything at all"  # what evaluation scores carries no label
    assert result.label["grounded"] is False and result.label["corpus_ledger_head"] is None
    assert generator.calls[0][1] is None


@pytest.mark.parametrize(
    ("question", "kwargs", "code"),
    [
        ("   ", {}, "empty_question"),
        ("x" * 2001, {}, "question_too_long"),
        ("ok?", {"top_k": 0}, "invalid_top_k"),
        ("ok?", {"filters": {"colour": "red"}}, "unknown_filter"),
        ("ok?", {"mode": "poem"}, "invalid_answer_mode"),
    ],
)
def test_bad_input_is_refused_with_a_code(
    settings: Settings, store: InMemoryStore, question: str, kwargs: dict[str, object], code: str
) -> None:
    generator = FakeGenerator(TRUE_SENTENCE)
    with pytest.raises(InvalidInputError) as err:
        make_service(settings, store, generator).answer(question, **kwargs)  # type: ignore[arg-type]
    assert err.value.code == code and generator.calls == []


def test_sentence_and_term_helpers() -> None:
    assert split_sentences("It is 3.5 cm. Then it grows! Done") == ["It is 3.5 cm.", "Then it grows!", "Done"]
    assert split_sentences("the North Sea") == ["the North Sea"]
    assert "1850" in key_terms("Bananas grew on Mars in 1850.") and "mar" not in content_words("the of a")
    assert key_terms("It uses sys.exit and __debug__") == ["sys.exit", "__debug__"]
