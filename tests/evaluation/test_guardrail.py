"""The guardrail benchmark: each perturbation does what its name says, is seeded, and skips when it cannot."""

from __future__ import annotations

import random

import pytest

from rag.evaluation.guardrail import (
    KINDS,
    SUPPORTED_KINDS,
    UNSUPPORTED_KINDS,
    add_clause,
    answer_kind,
    answer_sentence,
    build_items,
    change_date,
    change_number,
    reorder_clauses,
    run_guardrail,
    swap_entity,
    swap_roles,
    toggle_negation,
)
from rag.evaluation.squad import Question, SquadData
from rag.grounding import GroundednessChecker
from tests.fakes import FakeEmbedder

# Hand-made passages, written for these tests: two of one article, one of another.
MUSEUM = (
    "The Harbour Bridge opened to traffic in 1932. "
    "In 1961, Maria Lopez founded the Riverside Museum with a gift of 3,000 paintings. "
    "The museum is not open on Mondays."
)
MUSEUM_LATER = (
    "The Riverside Museum doubled its galleries in 1990 under the director Paul Weber. "
    "Weber opened a school for young painters beside the museum."
)
GLACIERS = "Glaciers carve deep valleys as they slowly move downhill. Meltwater from them feeds many rivers in spring."
PASSAGES = [MUSEUM, MUSEUM_LATER, GLACIERS]
ARTICLES = [0, 0, 1]
QUESTIONS = [
    Question("q1", "Who founded the Riverside Museum?", ["Maria Lopez"], 0),
    Question("q2", "How many paintings did the founder give?", ["3,000"], 0),
    Question("q3", "Which day is the museum closed?", ["Mondays"], 0),
    Question("q4", "Who directed the museum in 1990?", ["Paul Weber"], 1),
    Question("q5", "What do glaciers carve?", ["deep valleys"], 2),
]
DATA = SquadData(PASSAGES, QUESTIONS)
FOUNDED = "In 1961, Maria Lopez founded the Riverside Museum with a gift of 3,000 paintings."


def test_answer_sentence_is_the_passage_sentence_holding_the_answer() -> None:
    assert answer_sentence(MUSEUM, ["nobody", "Maria Lopez"]) == (FOUNDED, "Maria Lopez")
    assert answer_sentence(MUSEUM, ["Atlantis"]) is None


@pytest.mark.parametrize(
    ("answer", "kind"),
    [("1961", "date"), ("March 1961", "date"), ("3,000", "number"), ("three", "number"), ("Maria Lopez", "name"),
     ("the Bank of England", "name"), ("deep valleys", "other")],
)  # fmt: skip
def test_answer_kind(answer: str, kind: str) -> None:
    assert answer_kind(answer) == kind


def test_reorder_moves_a_leading_or_trailing_phrase_and_keeps_every_word() -> None:
    assert (
        reorder_clauses(FOUNDED) == "Maria Lopez founded the Riverside Museum with a gift of 3,000 paintings in 1961."
    )
    assert reorder_clauses("The Harbour Bridge opened to traffic in 1932.") == (
        "In 1932, the Harbour Bridge opened to traffic."
    )
    assert reorder_clauses("The museum is not open on Mondays.") is None
    # The date could belong to the relative clause: moving it may change the meaning, so no item.
    assert reorder_clauses("The town built a hall that burned down in 1932.") is None


def test_entity_swap_puts_another_name_absent_from_the_passage_in_place_of_the_answer() -> None:
    names = ["Maria Lopez", "Paul Weber", "Riverside", "Anna Berg"]
    swapped = swap_entity(FOUNDED, "Maria Lopez", names, MUSEUM, random.Random(0))
    assert swapped == FOUNDED.replace("Maria Lopez", "Paul Weber") or swapped == FOUNDED.replace(
        "Maria Lopez", "Anna Berg"
    )
    assert swap_entity(FOUNDED, "3,000", names, MUSEUM, random.Random(0)) is None  # not a name
    assert swap_entity(FOUNDED, "Maria Lopez", ["Riverside"], MUSEUM, random.Random(0)) is None  # none absent


def test_number_change_changes_one_number_that_is_not_a_year() -> None:
    changed = change_number(FOUNDED, "3,000", random.Random(0))
    assert changed is not None and changed != FOUNDED
    assert "1961" in changed and "3,000" not in changed
    assert changed.replace(changed.split("of ")[-1].split()[0], "3,000") == FOUNDED
    assert change_number("Three ships sailed.", "Three", random.Random(0)) not in {None, "Three ships sailed."}
    assert change_number("The Harbour Bridge opened in 1932.", "1932", random.Random(0)) is None


def test_date_change_changes_a_year_or_a_month() -> None:
    changed = change_date(FOUNDED, "Maria Lopez", random.Random(0))
    assert changed is not None and "1961" not in changed and changed.replace(changed[3:7], "1961") == FOUNDED
    month = change_date("It opened in March.", "March", random.Random(0))
    assert month is not None and "March" not in month and month.startswith("It opened in ")
    assert change_date("The museum is not open on Mondays.", "Mondays", random.Random(0)) is None


@pytest.mark.parametrize(
    ("sentence", "toggled"),
    [
        ("The museum is not open on Mondays.", "The museum is open on Mondays."),
        ("The museum isn't open.", "The museum is open."),
        ("She never painted.", "She painted."),
        ("The bridge was built in 1932.", "The bridge was not built in 1932."),
        ("Maria Lopez founded the museum.", "Maria Lopez never founded the museum."),
        ("Glaciers carve deep valleys.", None),
    ],
)
def test_negation_is_removed_where_present_else_inserted(sentence: str, toggled: str | None) -> None:
    assert toggle_negation(sentence) == toggled


def test_role_swap_swaps_two_names_but_not_items_of_a_list() -> None:
    swapped = swap_roles(FOUNDED, random.Random(0))
    assert swapped == "In 1961, Riverside Museum founded the Maria Lopez with a gift of 3,000 paintings."
    assert swap_roles("The club signed Anna Berg, Carl Dahl and Eva Lund.", random.Random(0)) is None
    assert swap_roles("Glaciers carve deep valleys.", random.Random(0)) is None
    assert (
        swap_roles("It rose from 12 metres to 40 metres.", random.Random(0)) == "It rose from 40 metres to 12 metres."
    )


def test_added_clause_appends_the_fact() -> None:
    assert add_clause("Glaciers carve valleys.", "The museum is not open on Mondays.") == (
        "Glaciers carve valleys, and the museum is not open on Mondays."
    )


def test_build_items_is_seeded_and_uses_the_right_passages() -> None:
    names = ["Anna Berg"]
    items = {i.kind: i for i in build_items(QUESTIONS[0], DATA, ARTICLES, names, random.Random(3))}
    again = {i.kind: i for i in build_items(QUESTIONS[0], DATA, ARTICLES, names, random.Random(3))}
    assert items == again
    assert set(items) == set(KINDS)
    assert items["verbatim"].sentence == FOUNDED and items["span"].sentence == "Maria Lopez"
    assert items["entity_swap"].sentence == FOUNDED.replace("Maria Lopez", "Anna Berg")
    assert items["other_passage"].sentence in MUSEUM_LATER  # same article, another passage
    fact = items["added_clause"].sentence.removeprefix(FOUNDED[:-1] + ", and ")
    assert fact[0].upper() + fact[1:] in GLACIERS  # another article
    assert all(i.passage == 0 and i.expected_supported == (i.kind in SUPPORTED_KINDS) for i in items.values())


def test_build_items_skips_kinds_it_cannot_build() -> None:
    kinds = {i.kind for i in build_items(QUESTIONS[4], DATA, ARTICLES, ["Anna Berg"], random.Random(0))}
    # "Glaciers carve deep valleys as they slowly move downhill.": no name, number, date, phrase to move,
    # auxiliary or past-tense verb to negate, and no other passage in its article.
    assert kinds == {"verbatim", "span", "added_clause"}
    assert build_items(Question("q9", "?", ["Atlantis"], 0), DATA, ARTICLES, [], random.Random(0)) == []


def test_run_guardrail_scores_checker_and_baseline() -> None:
    checker = GroundednessChecker(FakeEmbedder(), threshold=0.55)
    result = run_guardrail(QUESTIONS, DATA, checker, articles=ARTICLES, seed=0)
    summary = result.summary
    assert set(summary["detected"]) == set(UNSUPPORTED_KINDS) and set(summary["supported_pass"]) == set(SUPPORTED_KINDS)
    assert sum(summary["items"].values()) == len(result.records)
    assert summary["items"]["verbatim"] == len(QUESTIONS)
    by_kind = {k: [r for r in result.records if r["kind"] == k] for k in KINDS}
    # Negations and role swaps keep every word: coverage alone passes them, the checker blocks them.
    for kind in ("negation", "role_swap"):
        assert by_kind[kind] and summary["detected"][kind] == 1.0 and summary["baseline"]["detected"][kind] == 0.0
    assert summary["false_alarm"] == 0.0 and summary["supported_pass"]["verbatim"] == 1.0
    record = by_kind["negation"][0]
    assert {"kind", "sentence", "passage", "question_id", "supported", "baseline_supported"} <= set(record)
    assert record["reason"] == "negation" and not record["supported"] and record["baseline_supported"]
    # Same seed, same items; another seed may draw other substitutes but the same kinds.
    assert run_guardrail(QUESTIONS, DATA, checker, articles=ARTICLES, seed=0).records == result.records


def test_an_answer_that_only_restates_the_question_is_never_counted_as_passed() -> None:
    question = Question("q6", "Who founded the Riverside Museum with a gift of paintings?", ["Riverside Museum"], 0)
    checker = GroundednessChecker(FakeEmbedder(), threshold=0.55)
    result = run_guardrail([question], DATA, checker, articles=ARTICLES, seed=0)
    (span,) = [r for r in result.records if r["kind"] == "span"]
    assert span["restates_question"] and not span["supported"] and not span["baseline_supported"]
