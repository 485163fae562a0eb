"""The own-output registry: released answers are found again, exactly or lightly edited; human text is not."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ingest.pipeline import Ingestor
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
    assert OwnOutputCheck(registry, min_matches=2).check(one_match) is None  # one sentence in a long document


def test_quotations_of_the_answers_passages_are_not_registered(registry: OutputRegistry) -> None:
    quote = "Deletion of a name removes the binding of that name."
    near_quote = "Deletion of a name removes the binding of that name from the global namespace."
    assert registry.record([quote, near_quote], [PASSAGE]) == 0
    assert registry.record([quote, ANSWER[1]], [PASSAGE]) == 1  # only the service's own sentence
    assert len(registry) == 1 and registry.matches(PASSAGE) == []


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


def test_the_service_registers_what_it_releases_but_not_quotations(settings: Settings, corpus: Path) -> None:
    settings.answer.relevance_threshold = 0.05
    store = InMemoryStore()
    Ingestor(settings, store, FakeEmbedder()).ingest([corpus])
    registry = build_output_registry(settings)
    assert registry is not None
    own = "The pass statement is a null operation, so nothing happens when it is executed."
    service = make_service(settings, store, FakeGenerator(f"{TRUE_SENTENCE} {own}"))
    service.record_output = registry.record
    result = service.answer(QUESTION)
    released = [s.sentence for s in result.released]
    assert TRUE_SENTENCE in released  # a verbatim quotation of the pass topic: human text, not registered
    assert [m.sentence for m in registry.matches(" ".join(released))] == ([own] if own in released else [])
    ungrounded = "Spiders have eight legs and most of them spin silk to build their webs."
    service.generator = FakeGenerator(ungrounded)
    service.answer("How many legs does a spider have?", grounded=False)
    assert len(registry.matches(ungrounded)) == 1


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
        joins.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(np, "concatenate", counted)
    for i in range(5):
        assert registry.record([f"This is released sentence number {i} of the test run today."]) == 1
    assert joins == [] and len(registry) == 6
    assert len(registry.matches("This is released sentence number 3 of the test run today.")) == 1  # by digest
    assert joins == []
    (near,) = registry.matches("This is the released sentence number 3 of the test run today.")
    assert near.similarity < 1.0 and joins == [1]  # the new records are joined when a lookup needs them, once
