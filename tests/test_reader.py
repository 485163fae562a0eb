"""The extractive reader's logic on hand-made cases: candidate spans, their scores, the checks."""

from __future__ import annotations

import math

import pytest

from rag.reader.asked import focus
from rag.reader.checks import asks_for_a_statement, choose, degenerate, quotation, read_sentence
from rag.reader.evidence import prose_sentences
from rag.reader.extractive import _common_prefix, extractive_prompt, passage_regions
from rag.reader.spans import Span, answers_something, best_spans, can_end_after, is_word_start, span_scores


def test_word_starts_carry_the_space_the_answer_starts_with() -> None:
    assert is_word_start(" Rhine") and is_word_start(' "None"') and is_word_start(" 1997")
    assert not is_word_start("ine") and not is_word_start(" ") and not is_word_start(" ,")


def test_a_span_ends_only_where_its_word_ends_and_never_on_a_separator() -> None:
    assert can_end_after(" North", " Sea") and can_end_after(" Sea", ".") and can_end_after(" Sea", None)
    assert not can_end_after(" Rot", "terdam")  # mid-word
    assert not can_end_after(" Sea,", " near") and not can_end_after(" (", "see")
    assert can_end_after(' "None"', " is")


def test_span_scores_add_each_token_and_the_end_of_the_answer() -> None:
    # tokens: a b c; first log P(a) = -1; P(b|a) = -0.5, P(c|ab) = -0.25; end after a: -3, after b: -0.1, after c: -2
    scores = span_scores(-1.0, [-0.5, -0.25], [-3.0, -0.1, -2.0], [True, True, True])
    assert scores == [(1, -4.0), (2, -1.6), (3, -3.75)]
    assert max(scores, key=lambda item: item[1])[0] == 2  # "a b" is the likeliest whole answer
    assert span_scores(-1.0, [-0.5, -0.25], [-3.0, -0.1, -2.0], [True, False, True]) == [(1, -4.0), (3, -3.75)]
    with pytest.raises(ValueError):
        span_scores(-1.0, [], [-1.0, -1.0], [True])


def test_best_spans_keep_one_place_per_phrase_best_first() -> None:
    ids = [7, 8, 9, 7, 8]
    spans = [Span(1, 0, 2, -2.0), Span(2, 3, 5, -1.0), Span(1, 2, 3, -0.5), Span(1, 0, 1, -3.0)]
    assert best_spans(spans, 5, ids) == [Span(1, 2, 3, -0.5), Span(2, 3, 5, -1.0), Span(1, 0, 1, -3.0)]
    assert best_spans(spans, 1, ids) == [Span(1, 2, 3, -0.5)]


def test_a_span_of_the_question_s_own_words_answers_nothing() -> None:
    assert not answers_something('the "pass" statement', "What does the pass statement do?")
    assert not answers_something("the", "Who wrote it?")
    assert answers_something("a null operation", "What does the pass statement do?")
    assert answers_something("1997", "When was it founded?")


def test_choose_skips_non_answers_and_abstains_when_the_question_adds_nothing() -> None:
    passages = ['"pass" is a null operation; when it is executed, nothing happens.']
    spans = [Span(1, 0, 1, -0.5), Span(1, 2, 4, -1.0)]
    texts = ['"pass"', "a null operation"]
    question = "What does the pass statement do?"
    chosen = choose(spans, texts, [-3.0, -4.0], question, passages, passages, min_gain=1.0, min_focus=0.0)
    assert chosen.span == spans[1] and chosen.text == "a null operation" and chosen.reason is None
    assert math.isclose(chosen.probability, math.exp(-1.0))
    # the same span is as likely when nothing is asked: it is not an answer to this question
    refused = choose(spans, texts, [-3.0, -1.2], question, passages, passages, min_gain=1.0, min_focus=0.0)
    assert refused.span is None and refused.reason == "does_not_answer"
    assert choose(spans[:1], texts[:1], [-3.0], question, passages, passages, min_gain=1.0, min_focus=0.0).reason == (
        "does_not_answer"
    )


def test_choose_refuses_a_span_that_is_not_verbatim_in_its_passage() -> None:
    passages = ["pass is a null op"]
    chosen = choose(
        [Span(1, 0, 2, -0.1)], ["a nil operation"], [-5.0], "What is pass?", passages, passages, min_gain=0, min_focus=0
    )
    assert chosen.span is None and chosen.reason == "unsupported_answer"


@pytest.mark.parametrize(
    "text",
    [
        "raise expression1, expression2, assert expression1, assert expression2, assert expression1, assert "
        "expression2, assert expression1, assert expression2",
        "the the the the the the the the the the the the",
        "yes and no and yes and no and yes and no and yes and no",
    ],
)
def test_looping_text_is_degenerate(text: str) -> None:
    assert degenerate(text)


@pytest.mark.parametrize(
    "text",
    [
        "The break statement terminates the nearest enclosing loop.",
        "It is useful as a placeholder when a statement is required syntactically, but no code needs to be executed.",
        "the North Sea",
    ],
)
def test_ordinary_sentences_are_not_degenerate(text: str) -> None:
    assert not degenerate(text)


def test_passage_regions_locate_each_numbered_passage_after_the_examples() -> None:
    passages = ["Alpha beta.", "", "Gamma delta."]
    prompt = extractive_prompt("Which?", passages)
    assert prompt.count("[1] ") == 3  # two worked examples and the real first passage
    # character offsets of a tokenizer that splits on spaces, keeping the space with the word
    offsets, position = [], 0
    for piece in prompt.replace("\n", " ").split(" "):
        offsets.append((max(position - 1, 0), position + len(piece)))
        position += len(piece) + 1
    regions = passage_regions(prompt, offsets, passages)
    assert [n for n, _, _ in regions] == [1, 3]
    for _, start, end in regions:
        text = prompt[offsets[start][0] : offsets[end - 1][1]].strip()
        assert text in ("Alpha beta.", "Gamma delta.")


def test_common_prefix() -> None:
    assert _common_prefix([1, 2, 3], [1, 2, 4, 5]) == 2 and _common_prefix([], [1]) == 0


@pytest.mark.parametrize(
    ("question", "statement"),
    [
        ("What does the pass statement do?", True),
        ("What happens when a break statement runs inside a loop?", True),
        ("How does the yield expression work?", True),
        ("Why did the empire fall?", True),
        ("How many legs does a spider have?", False),
        ("What year was it founded?", False),
        ("Who wrote the letter?", False),
        ("What does the return statement leave?", True),
        ("What did Luther refuse to do?", True),
        ("What did Tesla build in 1888?", False),
    ],
)
def test_questions_asking_for_a_statement_are_told_apart_from_factoid_ones(question: str, statement: bool) -> None:
    assert asks_for_a_statement(question) is statement


def test_a_statement_question_gets_the_whole_verbatim_sentence_a_factoid_one_the_span() -> None:
    passage = '"pass" is a null operation; when it is executed, nothing happens. It is useful as a placeholder.'
    evidence = passage
    asked = "What does the pass statement do?"
    assert quotation(asked, "nothing happens", evidence, passage) == (
        '"pass" is a null operation; when it is executed, nothing happens.'
    )
    assert quotation("What is pass useful as?", "a placeholder", evidence, passage) == "a placeholder"
    # a sentence that is not verbatim in the passage is never released in the span's place
    assert quotation(asked, "nothing happens", "Then nothing happens here.", passage) == "nothing happens"


def test_a_span_from_a_sentence_about_something_else_does_not_answer() -> None:
    passages = ["Three players were chosen for the Pro Bowl. The Panthers scored 500 points that season."]
    question = "How many Panthers players were Pro Bowl picks?"
    spans, texts = [Span(1, 0, 1, -1.0)], ["500 points"]
    read = read_sentence("500 points", passages[0], passages[0])
    assert focus(question, read) == pytest.approx(1 / 6)  # panther, of 6 words asked
    refused = choose(spans, texts, [-9.0], question, passages, passages, min_gain=1.0, min_focus=0.4)
    assert refused.span is None and refused.reason == "does_not_answer"
    kept = choose([Span(1, 0, 1, -1.0)], ["Three"], [-9.0], question, passages, passages, min_gain=1.0, min_focus=0.4)
    assert kept.span is not None
    assert focus(question, read_sentence("Three", passages[0], passages[0])) == pytest.approx(3 / 6)


DOC_CHUNK = """# The "global" statement

   global_stmt ::= "global" identifier ("," identifier)*

The "global" statement is a declaration which holds for the entire
current code block.  It means that the listed identifiers are to be
interpreted as globals.

   def f():
       global x
"""


def test_evidence_is_prose_headings_and_indented_blocks_left_out() -> None:
    assert prose_sentences(DOC_CHUNK) == [
        'The "global" statement is a declaration which holds for the entire current code block.',
        "It means that the listed identifiers are to be interpreted as globals.",
    ]
    assert prose_sentences("One paragraph. Two sentences.") == ["One paragraph.", "Two sentences."]
