"""Evaluation: metrics against hand-checked cases, input checks, and a real end-to-end run.

The SQuAD-format fixture is built here: its passages are paragraphs of the Python Language Reference
(human-written, shipped with CPython), so signing them `human` is honest; the questions and answer
spans were written for these tests.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from rag.errors import InvalidInputError
from rag.evaluation.metrics import best_over_gold, contains_answer, exact_match, normalize_answer, token_f1
from rag.evaluation.run import check_limit, plan
from rag.evaluation.squad import SquadData
from tests.conftest import REPO

# (topic, a sentence that starts the paragraph, question, answer span inside that paragraph)
QA = [
    ("pass", '"pass" is a null operation', "What kind of operation is pass?", "a null operation"),
    ("break", "It terminates the nearest", "What does break terminate?", "the nearest enclosing loop"),
    ("continue", '"continue" may only occur', "What does continue continue with?", "the next cycle"),
    ("return", '"return" leaves the current', "What does return leave?", "the current function call"),
    (
        "global",
        'The "global" statement is',
        "How are the identifiers listed in a global statement interpreted?",
        "as globals",
    ),
    (
        "assert",
        "Assignments to",
        "When is the value of the built-in variable __debug__ determined?",
        "when the interpreter starts",
    ),
    ("lambda", "Lambda expressions", "What are lambda expressions used to create?", "anonymous functions"),
    ("del", "Deletion of a name removes", "Which exception is raised if a deleted name is unbound?", "NameError"),
    (
        "nonlocal",
        'The "nonlocal" statement causes',
        "What does the nonlocal statement exclude from the nearest enclosing scope?",
        "globals",
    ),
    ("while", "This repeatedly tests", "What does the while statement repeatedly test?", "the expression"),
]
DISTRACTOR_TOPICS = ("if", "import", "raise", "try", "with", "yield", "for", "class", "function", "assignment")


def paragraphs(topic: str) -> list[str]:
    from pydoc_data.topics import topics

    return [" ".join(p.split()) for p in str(topics[topic]).split("\n\n") if len(p) > 80 and not p.startswith("   ")]


def write_fixture(path: Path) -> Path:
    articles = []
    for topic, start, question, answer in QA:
        (context,) = [p for p in paragraphs(topic) if p.startswith(start)]
        assert answer in context
        qa = {
            "id": f"t-{topic}",
            "question": question,
            "answers": [{"text": answer, "answer_start": context.index(answer)}],
        }
        articles.append({"title": topic, "paragraphs": [{"context": context, "qas": [qa]}]})
    for topic in DISTRACTOR_TOPICS:
        articles.append({"title": topic, "paragraphs": [{"context": p, "qas": []} for p in paragraphs(topic)[:3]]})
    path.write_text(json.dumps({"version": "test", "data": articles}))
    return path


@pytest.mark.parametrize(
    ("prediction", "gold", "em", "f1"),
    [
        ("The Denver Broncos", "Denver Broncos", 1.0, 1.0),  # article dropped
        ("denver broncos!", "Denver Broncos.", 1.0, 1.0),  # punctuation and case
        ("Broncos", "Denver Broncos", 0.0, 2 / 3),  # P=1, R=1/2
        ("in the year 1066 AD", "1066", 0.0, 0.4),  # 4 tokens once "the" goes: P=1/4, R=1
        ("theatre", "the atre", 0.0, 0.0),  # "the" inside a word is not an article
        ("", "anything", 0.0, 0.0),
        ("a an the", "the", 1.0, 0.0),  # both normalise to empty: EM 1, F1 0 (the official script's quirk)
    ],
)
def test_squad_metrics_match_the_official_normalisation(prediction: str, gold: str, em: float, f1: float) -> None:
    assert exact_match(prediction, gold) == em
    assert token_f1(prediction, gold) == pytest.approx(f1)


def test_normalisation_and_best_over_gold() -> None:
    assert normalize_answer("  The  U.S.  Army's  ") == "us armys"
    assert best_over_gold(token_f1, "Santa Clara", ["Levi's Stadium", "Santa Clara, California"]) == pytest.approx(0.8)
    assert contains_answer("It was held in Santa Clara, California.", "Santa Clara") == 1.0
    assert contains_answer("Santa Clarita", "Santa Clara") == 0.0


def test_dataset_checks(tmp_path: Path) -> None:
    cases = {
        "missing.json": ("dataset_missing", None),
        "bad.json": ("dataset_not_json", "{oops"),
        "shape.json": ("dataset_not_squad", json.dumps({"data": [{"nope": 1}]})),
        "empty.json": ("dataset_empty", json.dumps({"data": [{"paragraphs": [{"context": "x", "qas": []}]}]})),
    }
    for name, (code, content) in cases.items():
        if content is not None:
            (tmp_path / name).write_text(content)
        with pytest.raises(InvalidInputError) as err:
            SquadData.load(tmp_path / name)
        assert err.value.code == code
    data = SquadData.load(write_fixture(tmp_path / "mini.json"))
    with pytest.raises(InvalidInputError) as err:
        check_limit(0, data)
    assert err.value.code == "limit_out_of_range"
    with pytest.raises(InvalidInputError):
        check_limit(len(data.questions) + 1, data)


def test_plan_is_seeded_and_withholds_every_passage_with_the_answer(tmp_path: Path) -> None:
    data = SquadData.load(write_fixture(tmp_path / "mini.json"))
    first, again = plan(data, 10, seed=3), plan(data, 10, seed=3)
    assert first == again and len(first.withheld) >= 2
    for question in first.withheld:
        for index, text in enumerate(data.passages):
            if any(f" {normalize_answer(a)} " in f" {normalize_answer(text)} " for a in question.answers):
                assert index in first.withheld_passages


def rag(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", "from rag.cli import main; main()", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, "COLUMNS": "200", **env},
        timeout=1800,
    )


def test_bad_eval_input_fails_before_any_work(tmp_path: Path) -> None:
    env = {"RAG_DATA_DIR": str(tmp_path / "data")}
    missing = rag("eval", "--dataset", str(tmp_path / "nope.json"), "--out", str(tmp_path / "o"), env=env)
    assert missing.returncode == 2 and "dataset_missing" in missing.stderr
    fixture = write_fixture(tmp_path / "mini.json")
    too_many = rag("eval", "--dataset", str(fixture), "--limit", "999", "--out", str(tmp_path / "o"), env=env)
    assert too_many.returncode == 2 and "limit_out_of_range" in too_many.stderr
    assert not (tmp_path / "o").exists()


def test_duplicate_dataset_names_are_refused_before_any_work(tmp_path: Path) -> None:
    env = {"RAG_DATA_DIR": str(tmp_path / "data")}
    (tmp_path / "x").mkdir()
    first, second = write_fixture(tmp_path / "mini.json"), write_fixture(tmp_path / "x" / "mini.json")
    done = rag("eval", "--dataset", str(first), "--dataset", str(second), "--out", str(tmp_path / "o"), env=env)
    assert done.returncode == 2 and "duplicate_dataset" in done.stderr
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_end_to_end_eval_with_real_models(tmp_path: Path) -> None:
    fixture = write_fixture(tmp_path / "mini.json")
    out = tmp_path / "out"
    env = {"RAG_DATA_DIR": str(tmp_path / "data")}
    args = (
        "eval",
        "--dataset",
        str(fixture),
        "--limit",
        "10",
        "--seed",
        "0",
        "--counterfactual",
        "2",
        "--out",
        str(out),
    )
    done = rag(*args, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    outputs = ["summary.json", "report.md", "report.html", "chart_quality.png", "chart_tail.png"]
    outputs += ["chart_risk_coverage.png", "mini/results.jsonl", "mini/counterfactual.jsonl", "mini/guardrail.jsonl"]
    for name in outputs:
        assert (out / name).stat().st_size > 0, name
    records = [json.loads(line) for line in (out / "mini" / "results.jsonl").read_text().splitlines()]
    assert len(records) == 10 and {"grounded", "quote", "ungrounded"} <= set(records[0]["modes"])
    # Every released answer carries the reader's confidence, grounded or not.
    for r in records:
        for mode in r["modes"].values():
            assert mode["abstained"] or isinstance(mode["confidence"]["reader_logprob"], float), mode
    summary = json.loads((out / "summary.json").read_text())
    modes = summary["modes"]
    assert summary["datasets"]["mini"]["modes"] == modes  # the first dataset's figures stay at the top level
    assert modes["grounded"]["f1"] > modes["ungrounded"]["f1"], modes
    assert summary["retrieval_recall_at_k"] >= 0.75 and summary["withheld"] >= 2
    # No retrieval, nothing to abstain on: an ungrounded "abstention" is only a blank answer.
    assert all(r["modes"]["ungrounded"]["reason"] in (None, "empty_answer") for r in records)
    # Without retrieval the reader answers withheld questions too (a blank answer counts as an abstention).
    assert modes["ungrounded"]["hallucination_withheld"] > modes["grounded"]["hallucination_withheld"], modes
    for mode in ("grounded", "quote", "ungrounded"):
        assert set(modes[mode]) >= {
            "precision",
            "coverage",
            "hallucination_withheld",
            "aurc",
            "accuracy_at_half_coverage",
        }
    # Knowledge updates: two edited questions, asked in every mode after the edit and after removal.
    update = summary["knowledge_update"]
    assert update["grounded"]["questions"] == 2 and update["ungrounded"]["followed"] in (0.0, None)
    # Whether the reader follows an edit is what the figure measures (on this fixture's unlikely edits,
    # "globals" -> "the nearest enclosing loop", it does not); that the store serves the edit, then
    # nothing of it, is tested in test_counterfactual.py. Here: nothing is ever cited from a removed
    # document, and no answer after removal carries the substitute.
    cf = [json.loads(line) for line in (out / "mini" / "counterfactual.jsonl").read_text().splitlines()]
    assert sum(record["status"] == "edited" for record in cf) == 2  # skipped ones carry a reason, not modes
    for record in (r for r in cf if r["status"] == "edited"):
        for mode in ("grounded", "quote"):
            row = record["modes"][mode]
            assert not row["followed_after_removal"] and not row["cited_removed_doc"], row
    guard = summary["guardrail"]
    assert set(guard["detected"]) >= {"negation", "role_swap", "entity_swap", "other_passage"}
    assert 0.0 <= guard["false_alarm"] <= 1.0 and guard["items"]["verbatim"] >= 5
    report = (out / "report.md").read_text()
    for heading in ("What it says is true", "Facts follow the corpus", "The guardrail itself"):
        assert heading in report
    assert "data:image/png;base64," in (out / "report.html").read_text()
    # The store was restored after the edits: the ledger still verifies and every passage is back.
    from ingest.ledger import Ledger
    from ingest.provenance import text_digest

    ledger = Ledger(out / "mini" / "store" / "data" / "ledger.jsonl")
    assert ledger.verify().ok
    signed = out / "mini" / "store" / "signed" / "corpus"
    live = {doc_id: doc.sha256 for doc_id, doc in ledger.live().items()}
    assert live == {p.name: text_digest(p.read_text(encoding="utf-8")) for p in signed.glob("p*.txt")}
    # Resume: nothing left to do, the same results, and a second history entry.
    again = rag(*args, "--resume", env=env)
    assert again.returncode == 0, again.stderr[-3000:]
    assert len((out / "mini" / "results.jsonl").read_text().splitlines()) == 10
    assert json.loads((out / "summary.json").read_text())["knowledge_update"] == update
    history = rag("eval", "history", env=env)
    entries = [json.loads(line) for line in (tmp_path / "data" / "eval_history.jsonl").read_text().splitlines()]
    assert len(entries) == 2 and entries[0]["grounded_precision"] == modes["grounded"]["precision"]
    # The head the answers came from (before the edits move it); the resumed run's store was restored
    # through new ledger entries, so its head differs although its content is the same.
    assert entries[0]["corpus_ledger_head"] == summary["corpus_ledger_head"]
    assert history.returncode == 0 and all(e["corpus_ledger_head"][:12] in history.stdout for e in entries)
    assert "grounded precision" in history.stdout
    refused = rag(*args, env=env)
    assert refused.returncode == 2 and "out_exists" in refused.stderr
    # Old answers are never summarised under new settings: another generator or top-k is refused.
    for changed in (("--top-k", "3"), ("--generator", "smollm2-135m")):
        other = rag(*args, *changed, "--resume", env=env)
        assert other.returncode == 2 and "resume_mismatch" in other.stderr, other.stderr
        assert other.stderr.count("\n") == 1  # one line, before any work or progress output
    # The guardrail benchmark alone: no reader, no store.
    alone = rag("eval", "--dataset", str(fixture), "--guardrail", "--out", str(tmp_path / "guard"), env=env)
    assert alone.returncode == 0, alone.stderr[-3000:]
    assert json.loads((tmp_path / "guard" / "summary.json").read_text())["guardrail"]["items"]["verbatim"] >= 5
    assert not (tmp_path / "guard" / "mini" / "store").exists()
