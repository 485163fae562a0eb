"""Knowledge updates and removals: substitution rules, the rewrite, the summary, and the edit/remove/restore run.

The passages that get signed are paragraphs of the Python Language Reference (human-written, shipped
with CPython), so signing them `human` is honest; the questions and answer spans were written for
these tests. The strings in the unit tests are never signed.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest

from ingest.ledger import Ledger
from ingest.pipeline import Ingestor
from ingest.provenance import text_digest
from rag.answering import Answer
from rag.evaluation.counterfactual import (
    answer_kind,
    pick_substitute,
    plan_edit,
    rewrite_passage,
    run_counterfactual,
    skipped_reasons,
    summarise_counterfactual,
)
from rag.evaluation.metrics import normalize_answer
from rag.evaluation.squad import Question, SquadData, passage_doc_id, write_signed_passages
from rag.settings import Settings
from tests.fakes import FakeEmbedder, InMemoryStore


def q(answers: list[str], question: str = "What is it?", qid: str = "q0", passage: int = 0) -> Question:
    return Question(qid, question, answers, passage)


# --- substitution rules --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "kind"),
    [
        ("1998", "date"),
        ("the 1990s", "other"),  # an article before a decade: no particular kind
        ("1990s", "date"),
        ("March 3, 1998", "date"),
        ("3 March", "date"),
        ("1939–45", "date"),
        ("42", "number"),
        ("1,000", "number"),
        ("3.5 million", "number"),
        ("$5", "number"),
        ("40 km", "number"),
        ("three", "number"),
        ("twenty-one", "number"),
        ("Denver Broncos", "name"),
        ("the Denver Broncos", "name"),
        ("University of Chicago", "name"),
        ("Super Bowl 50", "name"),
        ("at SAP Center in San Jose", "other"),
        ("a null operation", "other"),
        ("recant his writings", "other"),
    ],
)
def test_answer_kind(text: str, kind: str) -> None:
    assert answer_kind(text) == kind


POOL = ["1998", "2004", "March 3, 1998", "42", "1,000", "three", "Denver Broncos", "Marie Curie", "a null operation"]


@pytest.mark.parametrize(
    ("gold", "allowed"),
    [
        ("7", {"42", "1,000", "three"}),
        ("1066", {"1998", "2004", "March 3, 1998"}),
        ("Carolina Panthers", {"Denver Broncos", "Marie Curie"}),
        ("recant his writings", {"a null operation"}),
    ],
)
def test_substitute_is_of_the_same_kind(gold: str, allowed: set[str]) -> None:
    picks = {pick_substitute(q([gold]), POOL, random.Random(seed)) for seed in range(40)}
    assert picks == allowed  # every candidate of the kind is reachable, nothing else is


def test_substitute_is_seeded() -> None:
    first = [pick_substitute(q(["7"]), POOL, random.Random(3)) for _ in range(3)]
    assert len(set(first)) == 1
    assert pick_substitute(q(["7"]), list(reversed(POOL)), random.Random(3)) == first[0]  # pool order is irrelevant


def test_substitute_is_never_a_gold_answer_nor_overlaps_one() -> None:
    question = q(["Denver Broncos", "the Broncos"])
    pool = ["The Denver Broncos", "denver broncos!", "Broncos", "Denver", "Denver Broncos Stadium", "Marie Curie"]
    for seed in range(30):
        pick = pick_substitute(question, pool, random.Random(seed))
        assert pick == "Marie Curie"
        assert normalize_answer(pick) not in {normalize_answer(a) for a in question.answers}


def test_substitute_is_not_already_in_the_passage_or_the_question() -> None:
    question = q(["1066"], question="What happened after 2004?")
    passage = "The battle was in 1066, long before 1998."
    picks = {pick_substitute(question, POOL, random.Random(s), passage=passage) for s in range(30)}
    assert picks == {"March 3, 1998"}  # "1998" is in the passage, "2004" in the question


def test_no_substitute_without_a_candidate() -> None:
    assert pick_substitute(q(["7"]), ["Marie Curie", "1998", "7", "seven 7"], random.Random(0)) is None
    assert pick_substitute(q(["Marie Curie"]), ["marie curie", "MARIE CURIE."], random.Random(0)) is None
    assert pick_substitute(q(["7"]), [], random.Random(0)) is None


def test_an_answer_of_no_kind_falls_back_to_any_answer() -> None:
    assert pick_substitute(q(["recant his writings"]), ["1998"], random.Random(0)) == "1998"


# --- rewrite -------------------------------------------------------------------------------


def test_rewrite_replaces_every_occurrence_of_every_answer_longest_first() -> None:
    passage = "The Denver Broncos won. Denver Broncos fans cheered; the Broncos left Denver."
    text, count = rewrite_passage(passage, ["Broncos", "Denver Broncos"], "Carolina Panthers")
    assert text == "The Carolina Panthers won. Carolina Panthers fans cheered; the Carolina Panthers left Denver."
    assert count == 3


def test_rewrite_matches_whole_words_only_and_keeps_a_sentence_start_capitalised() -> None:
    passage = "Water boils. The watershed holds water, not waters."
    text, count = rewrite_passage(passage, ["water"], "mercury")
    assert text == "Mercury boils. The watershed holds mercury, not waters."
    assert count == 2
    assert rewrite_passage("In 1998 and 19980.", ["1998"], "2004") == ("In 2004 and 19980.", 1)
    assert rewrite_passage("It cost $5 then.", ["$5"], "$7") == ("It cost $7 then.", 1)
    assert rewrite_passage("Line\nbreak here.", ["Line break"], "Gap") == ("Gap here.", 1)


def test_plan_edit_skips_what_cannot_be_edited() -> None:
    pool = ["2004", "Marie Curie"]
    assert plan_edit(q(["1998"]), "Nothing here.", pool, 0)["skipped"] == "no_occurrence"
    assert plan_edit(q(["Marie Curie"]), "Marie Curie won.", ["Marie Curie"], 0)["skipped"] == "no_substitute"
    # "U.S." is asked but the passage writes "US": the old answer would still be served.
    assert "skipped" not in plan_edit(q(["U.S.", "US"]), "The U.S. and the US.", ["Marie Curie"], 0)
    assert plan_edit(q(["U.S."]), "The U.S. and the US.", ["Marie Curie"], 0)["skipped"] == "gold_remains"
    edit = plan_edit(q(["1998"]), "In 1998, and again in 1998.", pool, 0)
    year = edit["substitute"]
    assert edit["kind"] == "date" and year.isdigit() and len(year) == 4 and year != "1998"
    assert edit["text"] == f"In {year}, and again in {year}." and edit["replacements"] == 2


def test_numbers_change_in_place_and_a_sentence_initial_word_is_not_a_name() -> None:
    edit = plan_edit(q(["more than 48 hours"]), "He played for more than 48 hours.", ["Marie Curie"], 0)
    assert edit["kind"] == "number" and edit["substitute"].startswith("more than ")
    assert edit["substitute"].endswith(" hours") and edit["substitute"] != "more than 48 hours"
    assert "48" not in edit["text"]
    dated = plan_edit(q(["March 1990"]), "It opened in March 1990.", [], 0)
    assert dated["substitute"].startswith("March ") and dated["substitute"] != "March 1990"
    # "Light" opens a sentence: a word, so it takes another plain answer, not a person's name.
    word = plan_edit(q(["Light"]), "Light is needed. Plants grow.", ["Marie Curie", "water"], 0)
    assert word["kind"] == "other" and word["substitute"] == "water"
    name = plan_edit(q(["Tesla"]), "In 1900 Tesla worked.", ["Marie Curie", "water"], 0)
    assert name["kind"] == "name" and name["substitute"] == "Marie Curie"


# --- summary -------------------------------------------------------------------------------


def mode_row(*, abstained: bool = False, followed: bool = False, stale: bool = False, gone: bool = True) -> dict:
    return {
        "abstained_after_edit": abstained,
        "followed": followed and not abstained,
        "stale": stale and not abstained,
        "abstained_after_removal": gone,
    }


def test_summary_shares_are_over_the_questions_each_mode_answered() -> None:
    records: list[dict[str, Any]] = [
        {"status": "edited", "modes": {"grounded": mode_row(followed=True), "ungrounded": mode_row(stale=True)}},
        {"status": "edited", "modes": {"grounded": mode_row(followed=True), "ungrounded": mode_row(stale=True)}},
        {"status": "edited", "modes": {"grounded": mode_row(stale=True), "ungrounded": mode_row(stale=True)}},
        {"status": "edited", "modes": {"grounded": mode_row(abstained=True, gone=False), "ungrounded": mode_row()}},
        {"status": "skipped", "reason": "no_substitute"},
        {"status": "skipped", "reason": "human_floor"},
        {"status": "skipped", "reason": "no_substitute"},
    ]
    for record in records[:4]:
        record["modes"]["ungrounded"]["abstained_after_removal"] = False
    summary = summarise_counterfactual(records)
    assert summary["grounded"] == {
        "questions": 4,
        "answered_after_edit": 3,
        "followed": 0.6667,
        "stale": 0.3333,
        "followed_of_all": 0.5,
        "abstained_after_removal": 1.0,  # over the 3 it answered: the 4th never answered, so it says nothing
    }
    assert summary["ungrounded"] == {
        "questions": 4,
        "answered_after_edit": 4,
        "followed": 0.0,
        "stale": 0.75,
        "followed_of_all": 0.0,
        "abstained_after_removal": 0.0,
    }
    assert skipped_reasons(records) == {"human_floor": 1, "no_substitute": 2}


def test_summary_of_a_mode_that_answered_nothing() -> None:
    summary = summarise_counterfactual([{"status": "edited", "modes": {"quote": mode_row(abstained=True)}}])
    assert summary["quote"]["followed"] is None and summary["quote"]["stale"] is None
    assert summary["quote"]["followed_of_all"] == 0.0
    assert summary["quote"]["abstained_after_removal"] is None  # a mode that never answers is not credited
    assert summarise_counterfactual([]) == {}


# --- the run -------------------------------------------------------------------------------

# (topic, a sentence that starts the paragraph, question, answer span inside that paragraph)
QA = [
    ("del", "Deletion of a name removes", "Which exception is raised if a deleted name is unbound?", "NameError"),
    ("raise", "If no expressions are present", "What is raised when there is no active exception?", "RuntimeError"),
    ("integers", "Note that leading zeros", "Before which version did Python use C-style octal literals?", "3.0"),
    ("numbers", "There are three types", "How many types of numeric literals are there?", "three"),
    ("return", "In a generator function", "What is raised when a generator is done?", "StopIteration"),
]


def paragraph(topic: str, start: str) -> str:
    from pydoc_data.topics import topics

    (found,) = [" ".join(p.split()) for p in str(topics[topic]).split("\n\n") if p.strip().startswith(start)]
    return found


def write_dataset(path: Path) -> SquadData:
    articles = []
    for n, (topic, start, question, answer) in enumerate(QA):
        context = paragraph(topic, start)
        assert answer in context
        qa = {"id": f"c{n}", "question": question, "answers": [{"text": answer, "answer_start": context.index(answer)}]}
        articles.append({"title": topic, "paragraphs": [{"context": context, "qas": [qa]}]})
    path.write_text(json.dumps({"version": "test", "data": articles}))
    return SquadData.load(path)


def eval_settings_for(out: Path, trust: Path, human_floor: float) -> Settings:
    base = Settings(data_dir=out / "store" / "data", trust_path=trust)
    return base.model_copy(
        update={
            "ingest": base.ingest.model_copy(update={"human_floor": human_floor}),
            "store": base.store.model_copy(update={"collection": "eval", "url": None}),
        }
    )


def released(text: str, question: str, *, abstained: bool = False) -> Answer:
    return Answer(
        question=question,
        answer=text,
        raw=text,
        abstained=abstained,
        reason="no_relevant_passage" if abstained else None,
        citations=[],
        support=[],
        label={},
        timings={},
        answer_mode="free",
        grounded=False,
    )


def store_reader(store: InMemoryStore, data: SquadData) -> Callable[[str], Mapping[str, Answer]]:
    """A fake that answers with whatever the store holds for the question's passage (a perfect retriever)."""
    by_question = {x.question: x for x in data.questions}

    def ask(question: str) -> Mapping[str, Answer]:
        doc_id = passage_doc_id(by_question[question].passage)
        texts = [chunk.text for chunk, _ in store.rows.values() if chunk.doc_id == doc_id]
        grounded = released(" ".join(texts), question, abstained=not texts)
        return {"grounded": grounded, "ungrounded": released(by_question[question].answers[0], question)}

    return ask


@pytest.fixture
def world(tmp_path: Path) -> tuple[SquadData, Path, Path]:
    data = write_dataset(tmp_path / "mini.json")
    out = tmp_path / "out"
    signed = out / "store" / "signed"
    write_signed_passages(data.passages, signed)
    return data, out, signed


def test_refused_edits_are_recorded_as_skipped_and_leave_the_store_as_it_was(
    world: tuple[SquadData, Path, Path],
) -> None:
    data, out, signed = world
    settings = eval_settings_for(out, signed / "trust.json", human_floor=0.9)  # one edit of five is ~20%
    store = InMemoryStore()
    ingestor = Ingestor(settings, store, FakeEmbedder())
    ingestor.ingest([signed / "corpus"])
    before = sorted(store.ids())
    calls: list[str] = []

    def ask(question: str) -> Mapping[str, Answer]:
        calls.append(question)
        return {}

    records = run_counterfactual(
        data, data.questions, 2, eval_settings=settings, signed_root=signed, out=out, ask=ask, seed=0, ingestor=ingestor
    )
    assert {r["status"] for r in records} == {"skipped"}
    assert {r["reason"] for r in records} == {"human_floor"} and all(r["detail"] for r in records)
    assert not calls and sorted(store.ids()) == before and Ledger(settings.ledger_path).verify().ok


def test_edit_remove_restore_with_fakes_and_a_crash_that_the_next_run_repairs(
    world: tuple[SquadData, Path, Path],
) -> None:
    data, out, signed = world
    settings = eval_settings_for(out, signed / "trust.json", human_floor=0.5)
    store = InMemoryStore()
    ingestor = Ingestor(settings, store, FakeEmbedder())
    ingestor.ingest([signed / "corpus"])
    originals = {d["doc_id"]: d["sha256"] for d in ingestor.documents()}

    def crash(question: str) -> Mapping[str, Answer]:
        raise KeyboardInterrupt

    kwargs: dict[str, Any] = {"eval_settings": settings, "signed_root": signed, "out": out, "ingestor": ingestor}
    with pytest.raises(KeyboardInterrupt):
        run_counterfactual(data, data.questions, 2, ask=crash, seed=0, **kwargs)
    # The restore ran on the way out: the store is the original corpus again, and nothing was recorded.
    assert {d["doc_id"]: d["sha256"] for d in ingestor.documents()} == originals
    assert not (out / "counterfactual.jsonl").read_text()

    # A harder crash: the edit is live and the restore never ran. The next run restores first.
    (edited,) = (out / "counterfactual").glob("*/p*.txt")
    assert json.loads(edited.with_name(edited.name + ".prov.json").read_text())
    ingestor.ingest([edited.parent])
    assert {d["doc_id"]: d["sha256"] for d in ingestor.documents()} != originals

    records = run_counterfactual(data, data.questions, 2, ask=store_reader(store, data), seed=0, **kwargs)
    edits = [r for r in records if r["status"] == "edited"]
    assert len(edits) == 2
    for record in edits:
        grounded, ungrounded = record["modes"]["grounded"], record["modes"]["ungrounded"]
        assert record["kind"] == answer_kind(record["gold_answers"][0]) and record["substitute"]
        assert grounded["followed"] and not grounded["stale"] and grounded["abstained_after_removal"], grounded
        assert not ungrounded["followed"] and ungrounded["stale"] and not ungrounded["abstained_after_removal"]
    assert {d["doc_id"]: d["sha256"] for d in ingestor.documents()} == originals
    assert Ledger(settings.ledger_path).verify().ok
    by_sha = {e.get("sha256"): e for e in Ledger(settings.ledger_path).entries() if e["action"] in ("add", "replace")}
    for record in edits:  # every edit was a replace, signed human-edited-ai
        entry = by_sha[record["edited_sha256"]]
        assert (entry["action"], entry["origin"]) == ("replace", "human-edited-ai")
    summary = summarise_counterfactual(records)
    assert summary["grounded"]["followed"] == 1.0 and summary["ungrounded"]["stale"] == 1.0

    # Resumed: finished questions are read back, not redone.
    def never(question: str) -> Mapping[str, Answer]:
        raise AssertionError("a finished question was asked again")

    assert run_counterfactual(data, data.questions, 2, ask=never, seed=0, **kwargs) == records


# --- the real path -------------------------------------------------------------------------


@pytest.mark.slow
def test_real_edit_remove_restore(world: tuple[SquadData, Path, Path]) -> None:
    from rag.wiring import build_answer_service, build_ingestor

    data, out, signed = world
    settings = eval_settings_for(out, signed / "trust.json", human_floor=0.5)
    assert "human-edited-ai" in settings.ingest.allowed_origins  # the default policy admits edits
    ingestor = build_ingestor(settings)
    assert not ingestor.ingest([signed / "corpus"]).rejected
    originals = {d["doc_id"]: d["sha256"] for d in ingestor.documents()}
    service = build_answer_service(settings)
    seen: list[dict[str, Any]] = []

    def ask(question: str) -> Mapping[str, Answer]:
        service.refresh()  # what `answer` does first: follow the ledger head the ingestor just moved
        hits = service.retriever.retrieve(question, 3)
        seen.append(
            {
                "hits": [(hit.chunk.metadata.get("doc_id"), hit.chunk.text) for hit in hits],
                "docs": {d["doc_id"] for d in ingestor.documents()},
            }
        )
        return {"quote": service.answer(question, mode="quote")}

    records = run_counterfactual(
        data, data.questions, 2, eval_settings=settings, signed_root=signed, out=out, ask=ask, seed=0
    )
    edits = [r for r in records if r["status"] == "edited"]
    assert len(edits) == 2 and len(seen) == 4
    for n, record in enumerate(edits):
        after_edit, after_removal = seen[2 * n], seen[2 * n + 1]
        substitute = normalize_answer(record["substitute"])
        # The store serves the edited passage, then nothing of it. (The substitute itself is another
        # question's answer, so its own passage may still be retrieved after the removal.)
        edited = [text for doc_id, text in after_edit["hits"] if doc_id == record["doc_id"]]
        assert edited and substitute in normalize_answer(edited[0]), record
        assert record["doc_id"] in after_edit["docs"]
        assert record["doc_id"] not in after_removal["docs"]
        assert record["doc_id"] not in {doc_id for doc_id, _ in after_removal["hits"]}
        assert not record["modes"]["quote"]["cited_removed_doc"]
    documents = build_ingestor(settings).documents()
    assert {d["doc_id"]: d["sha256"] for d in documents} == originals
    assert all(d["origin"] == "human" for d in documents)
    for record in edits:
        original = (signed / "corpus" / record["doc_id"]).read_text(encoding="utf-8")
        assert originals[record["doc_id"]] == text_digest(original)
        actions = [e["action"] for e in Ledger(settings.ledger_path).entries() if e.get("doc_id") == record["doc_id"]]
        assert actions[-3:] == ["replace", "remove", "add"]
    assert Ledger(settings.ledger_path).verify().ok
    summary = summarise_counterfactual(records)
    assert summary["quote"]["questions"] == 2
