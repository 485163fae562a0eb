"""The own-output registry: released answers are found again, exactly or lightly edited; human text is not."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ingest.ledger import Ledger
from ingest.pipeline import Ingestor
from ingest.registry_guard import corpus_quotable
from rag.guardrails.registry import HEADER, RECORD, OutputRegistry, OwnOutputCheck, normalise
from rag.settings import Settings
from rag.wiring import build_output_registry, content_checks
from tests.conftest import Curator, pydoc_text
from tests.fakes import FakeEmbedder, FakeGenerator, InMemoryStore
from tests.test_answering import QUESTION, TRUE_SENTENCE, make_service

ANSWER = [
    "The del statement removes the binding of a name from the namespace it lives in.",
    "Lambda expressions create small anonymous functions that return the value of one expression.",
    "A while loop keeps running its body for as long as the condition stays true.",
]
PASSAGE = "Deletion of a name removes the binding of that name from the local or global namespace."


@pytest.fixture
def registry(tmp_path: Path) -> OutputRegistry:
    return OutputRegistry(tmp_path / "outputs.reg")


def test_released_answer_is_found_exactly_with_when(registry: OutputRegistry) -> None:
    assert registry.record(ANSWER) == 4  # three sentences and the whole answer
    assert registry.record(ANSWER) == 0  # already there: the first release time is kept
    laundered = "# FAQ\n\n" + " ".join(s.replace(".", " [1].") for s in ANSWER)
    found = registry.matches(laundered)
    assert len(found) == 3 and all(m.similarity == 1.0 for m in found)
    refused = OwnOutputCheck(registry).check(laundered)
    assert refused is not None and refused[0] == "own_output_detected"
    assert refused[1].startswith("3 of 3 sentences match") and "released 20" in refused[1]


def test_light_edits_and_reordering_are_still_found(registry: OutputRegistry) -> None:
    registry.record(ANSWER)
    edited = [
        "A while loop keeps running its body for as long as the condition remains true.",
        "Lambda expressions create tiny anonymous functions that return the value of one expression.",
        "The del statement deletes the binding of a name from the namespace it lives in.",
    ]
    found = registry.matches("\n\n".join(edited))
    assert len(found) == 3 and all(0.5 <= m.similarity < 1.0 for m in found)
    assert OwnOutputCheck(registry).check("\n\n".join(edited)) is not None


def test_a_reordered_answer_in_one_paragraph_is_found_as_a_whole(registry: OutputRegistry) -> None:
    registry.record(ANSWER)
    reordered = " ".join(reversed(ANSWER)).replace("small", "tiny").replace("keeps", "goes on")
    assert len(registry.matches(reordered)) == 3


def test_human_text_and_unrelated_sentences_are_not_matched(registry: OutputRegistry) -> None:
    registry.record(ANSWER)
    for topic in ("del", "lambda", "while", "assert"):
        assert OwnOutputCheck(registry).check(pydoc_text(topic)) is None, topic
    one_match = "\n\n".join([ANSWER[0], *(pydoc_text("while").split("\n\n")[:6])])
    assert len(registry.matches(one_match)) == 1


def test_one_long_released_sentence_in_a_long_human_document_is_refused(registry: OutputRegistry) -> None:
    registry.record(ANSWER)
    human = pydoc_text("while").split("\n\n")[:6]
    for sentence in ANSWER:  # 14-15 words each: one is enough, whatever the share
        refused = OwnOutputCheck(registry).check("\n\n".join([*human[:3], sentence, *human[3:]]))
        assert refused is not None and refused[1].startswith("1 of ") and "the longest has 1" in refused[1], sentence
    short = "The del statement unbinds a name."
    registry.record([short])
    assert len(registry.matches("\n\n".join([*human, short]))) == 1
    assert OwnOutputCheck(registry).check("\n\n".join([*human, short])) is None  # one short sentence in six
    assert OwnOutputCheck(registry).check(f"{human[1]}\n\n{short}") is not None  # but half of a short document


SHORT_ANSWER = [
    "The assert statement raises AssertionError when its test is false.",
    "A return statement leaves the current function call with a value.",
    "The break statement ends the nearest enclosing loop right away.",
]


def test_two_words_changed_in_every_sentence_are_still_found(registry: OutputRegistry) -> None:
    registry.record(SHORT_ANSWER)
    edited = [  # 10-11 words, two changed: a bigram Jaccard of ~0.4, under the threshold
        "The assert statement throws AssertionError when its check is false.",
        "A return statement exits the current function call with a result.",
        "The break statement stops the nearest surrounding loop right away.",
    ]
    found = registry.matches("\n\n".join(edited))
    assert len(found) == 3 and "words" in {m.how for m in found}, found
    bigrams_only = OutputRegistry(registry.path, word_min_words=10**6)  # the rule before word sets
    assert len(bigrams_only.matches("\n\n".join(edited))) < 3
    assert OwnOutputCheck(registry).check("\n\n".join(reversed(edited))) is not None
    for sentence in edited:
        assert OwnOutputCheck(registry).check(sentence) is not None, sentence
    registry.record(ANSWER)
    edited_long = "The del statement erases the binding of a name from the scope it lives in."
    for_doc = pydoc_text("for").split("\n\n")[:5]
    assert OwnOutputCheck(registry).check("\n\n".join([*for_doc, edited_long])) is not None


def test_any_two_changed_words_in_a_sentence_of_eight_different_words_or_more_are_found(
    registry: OutputRegistry,
) -> None:
    registry.record([*ANSWER, *SHORT_ANSWER])
    for sentence in [*ANSWER, *SHORT_ANSWER]:
        words = sentence.rstrip(".").split()
        for i, j in itertools.combinations(range(len(words)), 2):
            edited = [f"other{k}" if k in (i, j) else w for k, w in enumerate(words)]
            assert registry.matches(" ".join(edited) + "."), (sentence, i, j)
        for i in range(len(words) + 1):  # or two words put in
            assert registry.matches(" ".join([*words[:i], "quite", "simply", *words[i:]]) + ".")


def test_quotations_of_the_answers_passages_are_not_registered(registry: OutputRegistry) -> None:
    quote = "Deletion of a name removes the binding of that name."
    near_quote = "Deletion of a name removes the binding of that name from the global namespace."
    assert registry.record([quote, near_quote], [PASSAGE]) == 0
    assert registry.record([quote, ANSWER[1]], [PASSAGE]) == 1  # only the service's own sentence
    assert len(registry) == 1 and registry.matches(PASSAGE) == []


def test_an_extractive_span_of_a_passage_is_a_quotation_whatever_its_length(registry: OutputRegistry) -> None:
    passage = pydoc_text("pass")
    span = "a null operation — when it is executed, nothing happens"
    assert span.split(" — ")[0] in passage.replace("\n", " ")
    assert registry.own_sentences([span, "It is useful as a placeholder."], [passage]) == []
    assert registry.record([span], [passage]) == 0 and len(registry) == 0


def test_short_sentences_are_neither_registered_nor_looked_up(registry: OutputRegistry) -> None:
    assert registry.record(["AssertionError.", "It does nothing."]) == 0


def test_a_torn_append_leaves_the_registry_readable(registry: OutputRegistry, tmp_path: Path) -> None:
    registry.record(ANSWER[:1])
    path = registry.path
    with path.open("ab") as handle:  # a crash in the middle of the next append
        handle.write(b"\x01" * (RECORD.itemsize // 2))
    reader = OutputRegistry(path)
    assert len(reader) == 1 and len(reader.matches(ANSWER[0])) == 1
    assert reader.record(ANSWER[1:2]) == 1  # the torn tail is cut off first
    assert path.stat().st_size == len(HEADER) + 2 * RECORD.itemsize
    assert len(OutputRegistry(path)) == 2


def test_a_damaged_record_is_skipped(registry: OutputRegistry) -> None:
    registry.record(ANSWER[:2])
    data = bytearray(registry.path.read_bytes())
    data[len(HEADER) + 20] ^= 0xFF  # inside the first record
    registry.path.write_bytes(bytes(data))
    reader = OutputRegistry(registry.path)
    assert len(reader) == 2 and reader.damaged == 1  # of three: two sentences and the whole answer


def test_a_reader_sees_what_another_process_appended(registry: OutputRegistry) -> None:
    reader = OutputRegistry(registry.path)
    assert reader.matches(ANSWER[0]) == []
    registry.record(ANSWER[:1])
    assert len(reader.matches(ANSWER[0])) == 1  # a cheap reload: only the new records are read


ECHO = (  # a sentence of the del topic, verbatim
    "Deletion of a name removes the binding of that name from the local or global namespace, depending on whether "
    'the name occurs in a "global" statement in the same code block.'
)


def test_the_service_registers_what_it_releases_but_not_quotations_nor_echoes_of_the_corpus(
    settings: Settings, corpus: Path
) -> None:
    settings.answer.relevance_threshold = 0.05
    store = InMemoryStore()
    Ingestor(settings, store, FakeEmbedder()).ingest([corpus])
    own = "It is useful as a placeholder in a function that does nothing yet."
    service = make_service(settings, store, FakeGenerator(f"{TRUE_SENTENCE} {own}"))
    quotable = corpus_quotable(store, service.retriever.lexical, service.gate, service.refresh)
    registry = build_output_registry(settings, quotable)  # as `build_answer_service` wires it
    assert registry is not None
    service.record_output = registry.record
    released = [s.sentence for s in service.answer(QUESTION).released]
    assert released == [TRUE_SENTENCE, own]  # the first a verbatim quotation of the pass topic: human text
    assert [m.sentence for m in registry.matches(" ".join(released))] == [own]
    # Ungrounded (no passages): its own text is registered, an echo of a committed passage is not.
    ungrounded = "Spiders have eight legs and most of them spin silk to build their webs."
    service.generator = FakeGenerator(f"{ungrounded} {ECHO}")
    service.answer("How many legs does a spider have, and what does del do?", grounded=False)
    assert [m.sentence for m in registry.matches(f"{ungrounded}\n\n{ECHO}")] == [ungrounded]
    assert OwnOutputCheck(registry).check(pydoc_text("del")) is None
    # Nor is an answer that only repeats the question (the user's words, not ours).
    question = "Which of the spiders in the garden spin silk to build their webs and catch insects"
    service.generator = FakeGenerator("The spiders in the garden spin silk to build their webs and catch insects.")
    service.answer(f"{question}?", grounded=False)
    assert not registry.matches(f"The notes: {question}. Nothing else.")
    service.generator = FakeGenerator("Orb weavers in the garden spin silk to build their webs and catch insects.")
    service.answer(f"{question}?", grounded=False)
    assert registry.matches("Orb weavers in the garden spin silk to build their webs and catch insects.")


def test_a_new_manifest_for_admitted_text_is_not_refused_for_what_our_answers_echoed(
    settings: Settings, curator: Curator, tmp_path: Path
) -> None:
    settings.watermark.detect = False
    root = tmp_path / "kb"
    root.mkdir()
    doc = root / "del.md"
    doc.write_text(pydoc_text("del"))
    curator.sign(doc, root=root, title="del")
    store = InMemoryStore()
    assert Ingestor(settings, store, FakeEmbedder(), checks=content_checks(settings)).ingest([root]).accepted
    registry = build_output_registry(settings)  # an echo registered before echoes were filtered (or not found)
    assert registry is not None
    assert registry.record([ECHO, "Deletion of a target list recursively deletes each target."]) == 3
    assert OwnOutputCheck(registry).check(pydoc_text("del")) is not None  # the text, were it new
    curator.sign(doc, root=root, title="The del statement")  # a new manifest, the same text
    report = Ingestor(settings, store, FakeEmbedder(), checks=content_checks(settings)).ingest([root])
    assert not report.withdrawn and not report.rejected, report.as_dict()
    assert [r["doc_id"] for r in report.replaced] == ["del.md"]
    assert Ledger(settings.ledger_path).live()["del.md"].entry["title"] == "The del statement"


def test_ingest_refuses_released_answers_signed_as_human(settings: Settings, curator: Curator, tmp_path: Path) -> None:
    settings.watermark.detect = False  # the registry alone
    registry = build_output_registry(settings)
    assert registry is not None
    registry.record(ANSWER)
    root = tmp_path / "incoming"
    root.mkdir()
    (root / "faq.md").write_text("# Frequently asked questions\n\n" + "\n\n".join(ANSWER) + "\n")
    (root / "del.md").write_text(pydoc_text("del"))
    for doc in root.iterdir():
        curator.sign(doc, root=root)
    report = Ingestor(settings, InMemoryStore(), FakeEmbedder(), checks=content_checks(settings)).ingest([root])
    assert [r["doc_id"] for r in report.accepted] == ["del.md"]
    (rejected,) = report.rejected
    assert rejected["doc_id"] == "faq.md" and rejected["reason"] == "own_output_detected"
    assert "3 of 3 sentences" in rejected["detail"]


@pytest.mark.parametrize(
    "launder",
    [
        lambda t: t.translate(str.maketrans({"o": "\u043e", "e": "\u0435", "a": "\u0430"})),  # Cyrillic о е а
        lambda t: t.translate(str.maketrans({"o": "\u03bf", "i": "\u03b9"})),  # Greek ο ι
        lambda t: t.replace("T", "\u03a4").replace("A", "\u0391"),  # Greek capitals Τ Α
        lambda t: t.replace("e", "e\u200b"),  # zero-width space
        lambda t: t.replace("in", "i\u00adn").replace("s", "s\u200d"),  # soft hyphen, zero-width joiner
        lambda t: "\u200f" + t.replace(" ", " \u202a") + "\u2069",  # bidi marks
    ],
)
def test_format_characters_and_look_alike_letters_do_not_hide_a_released_answer(
    registry: OutputRegistry, launder: Any
) -> None:
    registry.record(ANSWER)
    laundered = "\n\n".join(launder(s) for s in ANSWER)
    assert laundered != "\n\n".join(ANSWER)
    found = registry.matches(laundered)
    assert len(found) == 3 and all(m.similarity == 1.0 for m in found)
    assert normalise(launder(ANSWER[0])) == normalise(ANSWER[0])


def test_recording_neither_copies_the_digests_nor_joins_the_records(
    registry: OutputRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    registry.record(ANSWER[:1])
    assert registry.matches(ANSWER[0])  # joined once, for the lookup
    joins: list[int] = []
    real = np.concatenate

    def counted(*args: Any, **kwargs: Any) -> Any:
        if args and isinstance(args[0], list) and any(getattr(a, "dtype", None) == RECORD for a in args[0]):
            joins.append(1)  # records joined (other arrays are concatenated by lookups too)
        return real(*args, **kwargs)

    monkeypatch.setattr(np, "concatenate", counted)
    for i in range(5):
        assert registry.record([f"This is released sentence number {i} of the test run today."]) == 1
    assert joins == [] and len(registry) == 6
    assert len(registry.matches("This is released sentence number 3 of the test run today.")) == 1  # by digest
    assert joins == []
    (near,) = registry.matches("This is the released sentence number 3 of the test run today.")
    assert near.similarity < 1.0 and joins == [1]  # the new records are joined when a lookup needs them, once
