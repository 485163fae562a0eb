"""The claim's figures on small hand-made records: correctness, precision, coverage, risk–coverage, stability."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from rag.evaluation.claims import Released, accuracy_at_coverage, aurc, correct, mode_claims, risk_coverage
from rag.evaluation.report import write_reports
from rag.evaluation.summary import stability


def record(text: str, abstained: bool = False, logprob: float | None = None) -> dict[str, Any]:
    return {"text": "" if abstained else text, "abstained": abstained, "confidence": {"reader_logprob": logprob}}


@pytest.mark.parametrize(
    ("text", "golds", "expected"),
    [
        ("It was held in Santa Clara, California.", ["Santa Clara"], True),  # contains after normalisation
        ("the Denver Broncos", ["Denver Broncos"], True),
        ("Broncos", ["Denver Broncos"], True),  # F1 2/3 >= 0.5
        ("Denver", ["Denver Broncos Football Club"], False),  # F1 1/3
        ("Clarita", ["Santa Clara"], False),  # a longer word is not the answer
        ("Santa Clarita", ["Santa Clara"], False),  # F1 0.5, but another place
        ("15 million", ["12 million"], False),  # a changed number is wrong, whatever F1 says
        ("March 1995", ["March 1990"], False),
        ("John Smith", ["John Adams"], False),
        ("the 18th century", ["the 19th century"], False),
        ("Broncos of Denver", ["Denver Broncos"], True),  # the gold's words, reordered and more
        ("", ["anything"], False),
        ("1066", ["in 1066", "1066 AD"], True),  # any gold: F1 with "in 1066" is 2/3
    ],
)
def test_correct_is_containment_or_half_f1(text: str, golds: list[str], expected: bool) -> None:
    assert correct(text, golds) is expected


def test_precision_coverage_and_hallucination() -> None:
    golds = [["Paris"], ["1066"], ["Newton"], ["blue"]]
    answerable = [record("Paris"), record("1067"), record("", abstained=True), record("it is blue")]
    withheld = [record("something"), record("", abstained=True), record("", abstained=True), record("x")]
    figures = mode_claims(answerable, withheld, golds)
    assert figures["released_answerable"] == 3
    assert figures["precision"] == pytest.approx(2 / 3, abs=1e-4)
    assert figures["coverage"] == 0.75
    assert figures["hallucination_withheld"] == 0.5


def test_nothing_released_gives_no_precision_rather_than_zero() -> None:
    figures = mode_claims([record("", abstained=True)], [], [["x"]])
    assert figures["precision"] is None and figures["coverage"] == 0.0
    assert figures["aurc"] is None and figures["accuracy_at_half_coverage"] is None
    assert figures["hallucination_withheld"] is None


def test_risk_coverage_ranks_by_confidence_and_unknown_confidence_last() -> None:
    items = [Released(False, -3.0), Released(True, -0.1), Released(True, None), Released(False, -0.5)]
    points = risk_coverage(items, answerable=8)
    assert [c for c, _ in points] == [0.125, 0.25, 0.375, 0.5]
    # order: True(-0.1), False(-0.5), False(-3.0), True(None)
    assert [round(a, 4) for _, a in points] == [1.0, 0.5, 0.3333, 0.5]
    assert aurc(points) == pytest.approx((0 + 0.5 + 2 / 3 + 0.5) / 4, abs=1e-4)
    assert accuracy_at_coverage(points, 0.5) == 0.5
    assert accuracy_at_coverage(points, 0.25) == 0.5
    assert accuracy_at_coverage(points, 0.6) is None  # the curve stops at coverage 0.5


def test_a_confidence_that_separates_right_from_wrong_lowers_aurc() -> None:
    right_first = [Released(True, -0.1), Released(True, -0.2), Released(False, -2.0), Released(False, -3.0)]
    wrong_first = [Released(True, -2.0), Released(True, -3.0), Released(False, -0.1), Released(False, -0.2)]
    good, bad = aurc(risk_coverage(right_first, 4)), aurc(risk_coverage(wrong_first, 4))
    assert good is not None and bad is not None and good < bad
    assert aurc(risk_coverage([Released(True, -1.0)] * 3, 4)) == 0.0  # all right: no risk, whatever the order


def test_claims_use_the_reader_logprob_and_report_other_signals() -> None:
    answerable = [
        {"text": "Paris", "abstained": False, "confidence": {"reader_logprob": -0.1, "support": 0.6}},
        {"text": "Lyon", "abstained": False, "confidence": {"reader_logprob": -0.2, "support": 0.9}},
    ]
    figures = mode_claims(answerable, [], [["Paris"], ["Nice"]])
    assert figures["confidence_signal"] == "reader_logprob"
    assert figures["aurc"] == pytest.approx(0.25)  # right first: risks 0, 0.5
    assert figures["aurc_by_signal"]["support"] == pytest.approx(0.75)  # wrong first: risks 1, 0.5
    assert "retrieval" not in figures["aurc_by_signal"]  # no answer carried it


def test_stability_reports_each_figure_and_its_drop() -> None:
    per = {
        "squad": {"modes": {"grounded": {"precision": 0.8, "f1": 0.5}}, "guardrail": {"false_alarm": 0.05}},
        "news": {"modes": {"grounded": {"precision": 0.6, "f1": None}}, "guardrail": {"false_alarm": 0.1}},
    }
    rows = {row["figure"]: row for row in stability(per)}
    precision = rows["precision, grounded (default)"]
    assert precision["values"] == {"squad": 0.8, "news": 0.6}
    assert precision["drop_from_first"]["news"] == pytest.approx(0.2)  # lower precision: a drop
    assert rows["F1, grounded (default)"]["drop_from_first"]["news"] is None
    assert rows["guardrail false alarms"]["drop_from_first"]["news"] == pytest.approx(0.05)  # more alarms: a drop
    assert "precision, ungrounded" not in rows  # absent everywhere: not a row


def test_aurc_over_the_whole_range_does_not_reward_answering_less() -> None:
    ideal = [Released(True, -0.1 * i) for i in range(7)] + [Released(False, -1 - i) for i in range(3)]
    answers_all = aurc(risk_coverage(ideal, 10), 10)
    top_three = aurc(risk_coverage(ideal[:3], 10), 10)
    one_right = aurc(risk_coverage(ideal[:1], 10), 10)
    assert answers_all is not None and top_three is not None and one_right is not None
    assert answers_all < top_three < one_right  # the unanswered count as errors, ranked last
    assert aurc(risk_coverage(ideal[:1], 10)) == 0.0  # over the released alone it would be perfect


def test_no_confidence_gives_no_curve_rather_than_record_order() -> None:
    answerable = [record("Paris"), record("Lyon")]  # reader_logprob None, as from a remote generator
    figures = mode_claims(answerable, [], [["Paris"], ["Nice"]])
    assert figures["precision"] == 0.5
    assert figures["aurc"] is None and figures["accuracy_at_half_coverage"] is None and not figures["risk_coverage"]


def test_guardrail_only_report_renders_without_answers(tmp_path: Path) -> None:
    guard = {
        "detected": {"negation": 0.95, "role_swap": 0.5},
        "false_alarm": 0.04,
        "supported_pass": {"verbatim": 1.0},
        "items": {"negation": 20, "role_swap": 10, "verbatim": 25},
        "baseline": {"detected": {"negation": 0.0, "role_swap": 0.0}, "false_alarm": 0.0, "supported_pass": {}},
    }
    summary = {
        "config": {"datasets": ["a.json", "b.json"], "dataset": "a.json", "seed": 0},
        "datasets": {"a": {"dataset": "a", "guardrail": guard}, "b": {"dataset": "b", "guardrail": guard}},
        "stability": stability({"a": {"guardrail": guard}, "b": {"guardrail": guard}}),
        "wall_seconds_this_run": 1.0,
        "guardrail": guard,
    }
    write_reports(summary, tmp_path)
    report = (tmp_path / "report.md").read_text()
    assert "The guardrail itself: a" in report and "| role_swap (blocked) | 10 | 0.500 | 0.000 |" in report
    assert "Stability across datasets" in report
    assert "<table>" in (tmp_path / "report.html").read_text()
