"""What a question asks for: rarity-weighted focus, the kind of answer, and how `choose` uses them."""

from __future__ import annotations

import math

import pytest

from rag.reader.asked import DATE, NUMBER, Rarity, expected_kind, fits, focus
from rag.reader.checks import choose
from rag.reader.spans import Span


def test_rarity_weighs_a_word_few_chunks_hold_more_than_a_common_one() -> None:
    rarity = Rarity.from_counts(100, [("statement", 60), ("Tesla", 2), ("tesla", 1), ("running", 5)])
    assert rarity.weight("tesla") == pytest.approx(math.log(101 / 2.5))  # forms that meet keep the larger count
    assert rarity.weight("tesla") > rarity.weight("statement")
    assert rarity.weight("runn") == pytest.approx(math.log(101 / 5.5))  # counted in content_words' (stemmed) form
    assert rarity.weight("unheard") == pytest.approx(math.log(101 / 0.5))  # in no chunk: weighs most
    # a word the counts split is as rare as its rarest part
    assert Rarity.from_counts(10, [("os", 9), ("path", 3)]).weight("os.path") == pytest.approx(math.log(11 / 3.5))
    assert Rarity().weight("anything") == 1.0  # no counts: every word the same


def test_focus_weighs_the_question_s_words_by_rarity_and_ignores_how_it_asks() -> None:
    question = "What happens when Tesla works in a statement?"  # happen: how it asks, not what about
    rarity = Rarity.from_counts(100, [("statement", 90), ("tesla", 1), ("works", 50)])
    about_tesla = "Tesla was alone."
    about_statements = "A statement works."
    assert focus(question, about_tesla) == pytest.approx(1 / 3)  # unweighted: 1 of tesla, work, statement
    assert focus(question, about_tesla, rarity) > 0.6 > focus(question, about_statements, rarity)
    assert focus("What?", "Anything.", rarity) == 0.0


@pytest.mark.parametrize(
    ("question", "kind"),
    [
        ("How many Pro Bowlers were on the offense?", NUMBER),
        ("How much did the CM weigh in kgs?", NUMBER),
        ("What percentage of the vote did he get?", NUMBER),
        ("When did the plague reach England?", DATE),
        ("In what year was the treaty signed?", DATE),
        ("Which century saw the change?", DATE),
        ("Who arranged the demonstration?", None),
        ("What does the pass statement do?", None),
    ],
)
def test_the_kind_of_answer_a_question_asks_for(question: str, kind: str | None) -> None:
    assert expected_kind(question) == kind


def test_a_span_fits_the_kind_asked_for() -> None:
    assert fits("six", NUMBER) and fits("1,200 kg", NUMBER) and fits("a dozen", NUMBER)
    assert not fits("the longest", NUMBER) and not fits("kg", NUMBER)
    assert fits("spring of 1349", DATE) and fits("during the war", DATE) and fits("in June", DATE)
    assert not fits("around", DATE) and not fits("the Commercial Club", DATE)
    assert fits("anything at all", None)


PASSAGES = ["The Rams scored 500 points that season. Six Panthers were picked for the Pro Bowl on offense."]


def test_choose_skips_a_span_of_the_wrong_kind_for_one_that_fits() -> None:
    question = "How many Panthers were picked for the Pro Bowl on offense?"
    texts = ["The Rams scored", "Six"]
    spans = [Span(1, 0, 1, -0.5), Span(1, 5, 6, -2.0)]
    chosen = choose(spans, texts, [-9.0, -9.0], question, PASSAGES, PASSAGES, min_gain=1.0, min_focus=0.0)
    assert chosen.text == "Six"
    only_wrong = choose(spans[:1], texts[:1], [-9.0], question, PASSAGES, PASSAGES, min_gain=1.0, min_focus=0.0)
    assert only_wrong.span is None and only_wrong.reason == "does_not_answer"


def test_focus_ranks_the_span_in_the_sentence_about_the_question_first() -> None:
    question = "Which team were the Pro Bowl picks on offense from?"
    texts = ["The Rams", "Panthers"]
    # The likelier span stands in the sentence about something else; the focus weight turns the order round.
    spans = [Span(1, 0, 1, -1.0), Span(1, 5, 6, -2.0)]
    args = (spans, texts, [-9.0, -9.0], question, PASSAGES, PASSAGES)
    assert choose(*args, min_gain=1.0, min_focus=0.0).text == "The Rams"
    assert choose(*args, min_gain=1.0, min_focus=0.0, focus_weight=20.0).text == "Panthers"


def test_a_sentence_the_embedder_finds_unlike_the_question_does_not_answer() -> None:
    question = "Which team were the Pro Bowl picks on offense from?"
    spans, texts = [Span(1, 5, 6, -2.0)], ["Panthers"]
    seen: list[tuple[str, str]] = []

    def similarity(asked: str, sentence: str) -> float:
        seen.append((asked, sentence))
        return 0.3

    args = (spans, texts, [-9.0], question, PASSAGES, PASSAGES)
    refused = choose(*args, min_gain=1.0, min_focus=0.0, similarity=similarity, min_similarity=0.45)
    assert refused.span is None and refused.reason == "does_not_answer"
    assert seen == [(question, "Six Panthers were picked for the Pro Bowl on offense.")]
    kept = choose(*args, min_gain=1.0, min_focus=0.0, similarity=lambda a, s: 0.6, min_similarity=0.45)
    assert kept.text == "Panthers"
