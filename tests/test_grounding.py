"""The groundedness checker on hand-made passages: what it must let through and what it must block."""

from __future__ import annotations

import pytest

from rag.grounding import GroundednessChecker, SentenceSupport, key_terms, restates_question
from tests.fakes import FakeEmbedder

# Written for these tests.
PASSAGE = (
    "The Harbour Bridge opened to traffic in 1932. "
    "In 1961, Maria Lopez founded the Riverside Museum with a gift of 3,000 paintings. "
    "The museum is not open on Mondays. "
    "Visitors praise the garden, the cafe and the library, which holds rare maps of the coast."
)


def check(sentence: str, passages: list[str] | None = None) -> SentenceSupport:
    checker = GroundednessChecker(FakeEmbedder(), threshold=0.55)
    (support,) = checker.check([sentence], passages or [PASSAGE])
    return support


@pytest.mark.parametrize(
    "sentence",
    [
        "In 1961, Maria Lopez founded the Riverside Museum with a gift of 3,000 paintings.",  # verbatim
        "Maria Lopez",  # the answer span alone
        "Maria Lopez founded the Riverside Museum with a gift of 3,000 paintings in 1961.",  # clause moved
        "The museum is not open on Mondays.",  # a negation the passage has
    ],
)
def test_what_the_passage_says_is_supported(sentence: str) -> None:
    support = check(sentence)
    assert support.supported and support.reason is None and support.passage == 1, support


@pytest.mark.parametrize(
    ("sentence", "reason"),
    [
        ("In 1961, Maria Lopez did not found the Riverside Museum with a gift of 3,000 paintings.", "negation"),
        ("In 1961, Maria Lopez never founded the Riverside Museum with a gift of 3,000 paintings.", "negation"),
        ("The museum is open on Mondays.", "negation"),  # the passage's negation removed
        ("In 1961, Riverside Museum founded the Maria Lopez with a gift of 3,000 paintings.", "order"),
        ("The Riverside Museum founded Maria Lopez in 1961.", "order"),
        ("In 1961, Maria Lopez founded the Riverside Museum with a gift of 4,000 paintings.", "missing_terms"),
        ("In 1961, Anna Berg founded the Riverside Museum with a gift of 3,000 paintings.", "missing_terms"),
        ("In 1961, Maria Lopez founded the Riverside Museum with a gift of three paintings.", "missing_terms"),
    ],
)
def test_false_sentences_made_of_the_passage_words_are_blocked(sentence: str, reason: str) -> None:
    support = check(sentence)
    assert not support.supported and support.reason == reason, support


def test_words_spread_over_the_passage_are_not_a_statement_of_it() -> None:
    # Every content word occurs in PASSAGE, but in different sentences: the old whole-passage
    # coverage was 1.0 here.
    support = check("The garden opened in 1932 with rare paintings.")
    assert not support.supported and support.reason in {"low_score", "missing_terms"}, support


def test_a_sentence_taken_from_two_adjacent_passage_sentences_is_supported() -> None:
    support = check("The Harbour Bridge opened in 1932 and Maria Lopez founded the Riverside Museum in 1961.")
    assert support.supported, support


def test_the_best_passage_is_cited() -> None:
    other = "Tides along the coast rise twice a day."
    checker = GroundednessChecker(FakeEmbedder(), threshold=0.55)
    supports = checker.check(["Tides along the coast rise twice a day.", "The museum is not open on Mondays."],
                             [PASSAGE, other])  # fmt: skip
    assert [s.passage for s in supports] == [2, 1] and all(s.supported for s in supports)


def test_no_passage_supports_nothing() -> None:
    (support,) = GroundednessChecker(FakeEmbedder()).check(["Anything at all."], [])
    assert not support.supported and support.passage is None


def test_numbers_in_words_and_with_thousands_separators_are_key_terms() -> None:
    assert key_terms("It held 3,000 paintings and three maps.") == ["3,000", "three"]


def test_restates_question() -> None:
    assert restates_question("The Riverside Museum was founded.", "Who founded the Riverside Museum?")
    assert not restates_question("Maria Lopez founded it.", "Who founded the Riverside Museum?")
