"""Knowledge updates and removals (`rag eval --counterfactual N`): do answers follow the signed corpus?

For a sampled answerable question, its gold passage is rewritten with every occurrence of the gold
answer replaced by another question's answer of the same kind, signed `human-edited-ai` (a
programmatic edit of human text, never `human`) with the run's key, and ingested by the real
ingestor under the same document id, so the ledger records a `replace`. The question is asked again
in every mode; then the document is removed through the real remove path and the question is asked
once more. Finally the original signed passage is ingested again.

Convergence: every run starts by re-ingesting the original signed corpus, which is idempotent (the
ingestor compares digests, so only an edited or removed passage is replaced or added back). A run
killed between the edit and the restore is therefore repaired by the next one, and a question is
recorded only after its restore, so it is redone.
"""

from __future__ import annotations

import json
import os
import random
import re
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from rag.errors import ConflictError
from rag.evaluation.metrics import contains_answer, normalize_answer
from rag.evaluation.squad import Question, SquadData, passage_doc_id

if TYPE_CHECKING:
    from ingest.pipeline import Ingestor
    from rag.answering import Answer
    from rag.settings import Settings

EDIT_ORIGIN: Final = "human-edited-ai"
MAX_SUBSTITUTE_WORDS = 6

_MONTHS = (
    "january|february|march|april|may|june|july|august|september|october|november|december"
    "|jan|feb|mar|apr|jun|jul|aug|sep|sept|oct|nov|dec"
)
_MONTH = re.compile(rf"\b(?:{_MONTHS})\b\.?", re.IGNORECASE)
_YEAR = r"(?:1\d{3}|20\d{2})"
_DATE_PATTERNS = [
    # 1998, 1990s, c. 1200, 1066 AD
    re.compile(rf"(?:c\.\s*|circa\s+)?{_YEAR}s?(?:\s*(?:AD|BC|BCE|CE))?", re.IGNORECASE),
    re.compile(r"\d{1,4}\s*(?:AD|BC|BCE|CE)|(?:AD|BC)\s*\d{1,4}", re.IGNORECASE),
    # 1939-45, 1998–2001
    re.compile(rf"{_YEAR}\s*[-–—]\s*\d{{2,4}}"),
    re.compile(r"(?:the\s+)?\d{1,2}(?:st|nd|rd|th)\s+century", re.IGNORECASE),
]
_NUMERIC = re.compile(r"[$£€¥]?\d[\d,]*(?:\.\d+)?%?")
_NUMBER_WORDS = frozenset(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "  # noqa: SIM905
    "seventeen eighteen nineteen twenty thirty forty fifty sixty seventy eighty ninety hundred thousand million "
    "billion trillion dozen half".split()
)
_CONNECTORS = frozenset("of the and de la le du da di von van der den y for in on at upon & a an".split())  # noqa: SIM905


def answer_kind(text: str) -> str:
    """`date`, `number`, `name` (capitalised words) or `other`; checked in that order."""
    value = " ".join(text.split()).strip(" .,;:!?\"'()")
    if not value:
        return "other"
    if any(p.fullmatch(value) for p in _DATE_PATTERNS):
        return "date"
    if _MONTH.search(value) and re.search(r"\d", value):
        return "date"
    words = value.split()
    if _NUMERIC.fullmatch(words[0]) and len(words) <= 3 and all(w.isalpha() and w.islower() for w in words[1:]):
        return "number"  # 3, 1,000, $5, 10%, 3.5 million, 40 km
    if all(_NUMERIC.fullmatch(w) or all(p in _NUMBER_WORDS for p in w.lower().split("-")) for w in words):
        return "number"  # three, twenty-one, one hundred
    significant = [w.lstrip("\"'(") for w in words if w.lower() not in _CONNECTORS]
    if (
        significant
        and len(words) <= 8
        and (words[0].lstrip("\"'(")[:1].isupper() or words[0].lower() == "the")
        and any(w[:1].isupper() for w in significant)
        and all(w[:1].isupper() or w[:1].isdigit() for w in significant)
    ):
        return "name"
    return "other"


def _contains(text: str, answer: str) -> bool:
    return bool(contains_answer(text, answer))


def pick_substitute(
    question: Question, pool: Iterable[str], rng: random.Random, *, passage: str = "", kind: str | None = None
) -> str | None:
    """A seeded pick among other answers of the same kind as the question's first gold answer.

    Never one of the question's gold answers (SQuAD normalisation), never overlapping one (either
    containing the other), never already in the passage or the question. A gold answer of no
    particular kind takes another `other` answer, or any answer when there is none.
    """
    golds = [normalize_answer(a) for a in question.answers if normalize_answer(a)]
    kind = kind or answer_kind(question.answers[0])

    def allowed(candidate: str) -> bool:
        normal = normalize_answer(candidate)
        if not normal or len(normal.split()) > MAX_SUBSTITUTE_WORDS:
            return False
        if any(normal == g or _contains(candidate, g) or _contains(g, candidate) for g in golds):
            return False
        return not _contains(passage, candidate) and not _contains(question.question, candidate)

    unique = sorted({" ".join(c.split()) for c in pool if c.strip()})
    usable = [c for c in unique if allowed(c)]
    candidates = [c for c in usable if answer_kind(c) == kind]
    if not candidates and kind == "other":
        candidates = usable
    return rng.choice(candidates) if candidates else None


def rewrite_passage(passage: str, answers: Sequence[str], substitute: str) -> tuple[str, int]:
    """Replace every whole-word occurrence of every answer (longest first, any case); returns (text, count).

    One pass over the text, so a substitute is never rewritten again. A replacement at a capitalised
    occurrence (a sentence start) starts with a capital too.
    """
    forms = sorted({" ".join(a.split()) for a in answers if a.strip()}, key=len, reverse=True)
    if not forms:
        return passage, 0
    alternatives = "|".join(r"\s+".join(re.escape(w) for w in form.split()) for form in forms)
    pattern = re.compile(rf"(?<!\w)(?:{alternatives})(?!\w)", re.IGNORECASE)

    def replace(match: re.Match[str]) -> str:
        found = match.group(0)
        if found[:1].isupper() and substitute[:1].islower():
            return substitute[:1].upper() + substitute[1:]
        return substitute

    return pattern.subn(replace, passage)


_NUMBER_TOKEN = re.compile(r"(?<![\w.])\d{1,3}(?:,\d{3})+(?![\w,])|(?<![\w.,])\d+(?:\.\d+)?(?![\w,])")
_YEAR_TOKEN = re.compile(r"(?<!\d)(1\d{3}|20\d{2})(?!\d)")


def change_number(answer: str, kind: str, rng: random.Random) -> str | None:
    """The answer with its year (dates) or its first number changed to another plausible value.

    "more than 48 hours" becomes "more than 31 hours", "March 1895" "March 1923": a changed fact of the
    same shape, not an unrelated answer pasted in (which a reader would not take for the answer)."""
    if kind == "date" and (year := _YEAR_TOKEN.search(answer)):
        value = int(year.group(1))
        new = value + rng.choice([-1, 1]) * rng.randint(3, 40)
        return answer[: year.start()] + str(new) + answer[year.end() :]
    match = _NUMBER_TOKEN.search(answer)
    if match is None:
        return None
    token = match.group(0)
    number = int(float(token.replace(",", "")))
    new_value = rng.randint(max(1, number // 2), number * 2 + 3)
    if new_value == number:
        new_value += 1
    text = f"{new_value:,}" if "," in token else str(new_value)
    return answer[: match.start()] + text + answer[match.end() :]


def _is_name_in(answer: str, passage: str) -> bool:
    """A one-word capitalised answer is a name only if the passage capitalises it mid-sentence too."""
    words = answer.split()
    if len(words) != 1:
        return True
    return bool(re.search(rf"(?<![.!?]\s)(?<!^)\b{re.escape(words[0])}\b", passage))


def plan_edit(question: Question, passage: str, pool: Iterable[str], seed: int) -> dict[str, Any]:
    """The edit for one question: substitute and rewritten passage, or the reason it is skipped.

    Dates and answers holding a number get the number changed in place; names and other answers take
    another question's answer of the same kind."""
    rng = random.Random(f"{seed}:{question.id}")
    gold = question.answers[0]
    kind = answer_kind(gold)
    if kind == "name" and not _is_name_in(gold, passage):
        kind = "other"  # "Light" at the start of a sentence is a word, not a name
    substitute = None
    if kind == "date" or _NUMBER_TOKEN.search(gold):
        substitute = change_number(gold, kind, rng)
        if substitute is not None and kind == "other":
            kind = "number"
    if substitute is None or _contains(passage, substitute):
        substitute = pick_substitute(question, pool, rng, passage=passage, kind=kind)
    if substitute is None:
        return {"kind": kind, "skipped": "no_substitute"}
    edited, count = rewrite_passage(passage, question.answers, substitute)
    if count == 0:
        return {"kind": kind, "substitute": substitute, "skipped": "no_occurrence"}
    if edited == passage:
        return {"kind": kind, "substitute": substitute, "skipped": "unchanged"}
    if any(_contains(edited, a) for a in question.answers):
        # e.g. "U.S." asked, "US" written: the old answer would still be served.
        return {"kind": kind, "substitute": substitute, "skipped": "gold_remains"}
    return {"kind": kind, "substitute": substitute, "text": edited, "replacements": count}


def restore_store(ingestor: Ingestor, signed_root: Path) -> dict[str, Any]:
    """Re-ingest the original signed corpus: unchanged documents are skipped, edited or removed ones come back."""
    return ingestor.ingest([signed_root / "corpus"]).as_dict()


def run_counterfactual(
    data: SquadData,
    questions: Sequence[Question],
    n: int,
    *,
    eval_settings: Settings,
    signed_root: Path,
    out: Path,
    ask: Callable[[str], Mapping[str, Answer]],
    seed: int,
    curator: str = "eval-curator",
    ingestor: Ingestor | None = None,
    progress: Callable[[dict[str, Any]], None] | None = None,
    prefer: Collection[str] = (),
) -> list[dict[str, Any]]:
    """Edit, ask, remove, ask, restore for up to `n` of `questions`; returns one record per question tried.

    `ask(question)` answers in every mode (`{mode: Answer}`). Records are appended to
    `out/counterfactual.jsonl` once a question's passage is restored, and questions found there are
    not redone, so a killed run resumes. Edited passages are kept under `out/counterfactual/<id>/`.
    Skipped questions (no substitute, no occurrence, an edit the ingest policy refused) are recorded
    with `status: skipped` and a `reason`, and do not count towards `n`.
    """
    from ingest.trust import load_private_key
    from rag.wiring import build_ingestor

    ingestor = ingestor or build_ingestor(eval_settings)
    restore_store(ingestor, signed_root)
    results = out / "counterfactual.jsonl"
    done = _load_records(results)
    key = load_private_key(signed_root / "keys" / f"{curator}.key")
    pool = sorted({a for q in data.questions for a in q.answers})
    order = sorted(questions, key=lambda q: q.id)
    random.Random(seed).shuffle(order)
    # A fact can only be seen to follow the corpus where the reader could read it: questions the
    # default mode answered right come first, and among them a date, number or name (a plausible
    # change of fact) before any other answer. The order is stable, so the draw stays seeded.
    order.sort(key=lambda q: (q.id not in prefer, answer_kind(q.answers[0]) == "other"))
    records: list[dict[str, Any]] = []
    edited = 0
    out.mkdir(parents=True, exist_ok=True)
    with results.open("a", encoding="utf-8") as handle:
        for question in order:
            if edited >= n:
                break
            record = done.get(question.id)
            if record is None:
                record = _one_question(
                    question, data, ingestor, signed_root, out / "counterfactual", ask, key, curator, pool, seed
                )
                handle.write(json.dumps(record, ensure_ascii=False) + "\n")
                handle.flush()
                os.fsync(handle.fileno())
                if progress:
                    progress(record)
            records.append(record)
            edited += record["status"] == "edited"
    return records


def _one_question(
    question: Question,
    data: SquadData,
    ingestor: Ingestor,
    signed_root: Path,
    edits: Path,
    ask: Callable[[str], Mapping[str, Answer]],
    key: Any,
    curator: str,
    pool: list[str],
    seed: int,
) -> dict[str, Any]:
    from ingest.provenance import sign_document, text_digest

    doc_id = passage_doc_id(question.passage)
    original = signed_root / "corpus" / doc_id
    record: dict[str, Any] = {
        "id": question.id,
        "question": question.question,
        "gold_answers": question.answers,
        "doc_id": doc_id,
    }
    if doc_id not in ingestor.ledger.live() or not original.exists():
        return {**record, "status": "skipped", "reason": "gold_not_in_store"}
    edit = plan_edit(question, data.passages[question.passage], pool, seed)
    record.update(kind=edit["kind"], substitute=edit.get("substitute"))
    if "skipped" in edit:
        return {**record, "status": "skipped", "reason": edit["skipped"]}

    root = edits / _safe(question.id)
    document = root / doc_id  # same relative name as the original, so the same doc id: a `replace`
    document.parent.mkdir(parents=True, exist_ok=True)
    document.write_text(edit["text"], encoding="utf-8")
    sign_document(
        document,
        key,
        root=root,
        title=f"{Path(doc_id).stem} (counterfactual edit)",
        authors=["Wikipedia contributors"],
        license="CC-BY-SA-4.0",
        origin=EDIT_ORIGIN,
        curator=curator,
        source_uri="https://rajpurkar.github.io/SQuAD-explorer/",
    )
    record.update(replacements=edit["replacements"], edited_sha256=text_digest(edit["text"]))
    try:
        report = ingestor.ingest([root])
        if report.rejected or not report.replaced:
            refused = report.rejected[0] if report.rejected else None
            reason = refused["reason"] if refused else ("duplicate" if report.duplicates else "not_replaced")
            return {**record, "status": "skipped", "reason": reason, "detail": refused["detail"] if refused else ""}
        after_edit = ask(question.question)
        ingestor.remove(doc_id)
        after_removal = ask(question.question)
    finally:
        restored = ingestor.ingest([original])
        live = ingestor.ledger.live().get(doc_id)
        if live is None or live.sha256 != text_digest(original.read_text(encoding="utf-8")):
            raise ConflictError(
                f"The original {doc_id} did not come back after the counterfactual edit "
                f"({restored.as_dict()['rejected_by_reason'] or 'no rejection'}); run the eval again to restore it.",
                code="counterfactual_restore_failed",
            )
    record["status"] = "edited"
    record["modes"] = {
        mode: _mode_record(answer, after_removal.get(mode), question.answers, edit["substitute"], doc_id)
        for mode, answer in after_edit.items()
    }
    return record


def _mode_record(
    after_edit: Answer, after_removal: Answer | None, golds: list[str], substitute: str, doc_id: str
) -> dict[str, Any]:
    def released(answer: Answer | None) -> str:
        return "" if answer is None or answer.abstained else answer.text

    text = released(after_edit)
    gone = released(after_removal)
    stale = any(_contains(text, g) for g in golds)
    cited = any(c.doc_id == doc_id for c in after_edit.citations)
    # The substitute is another question's answer, so it also occurs in that question's passage:
    # a grounded answer follows the edit only when it cites the edited document; an answer that
    # still holds the old answer too has not followed it.
    followed = _contains(text, substitute) and not stale and (cited or not after_edit.grounded)
    return {
        "answer_after_edit": text,
        "abstained_after_edit": after_edit.abstained or not text,
        "reason_after_edit": after_edit.reason,
        "followed": followed,
        "stale": stale,
        "cited_edited_doc": cited,
        "answer_after_removal": gone,
        "abstained_after_removal": after_removal is None or after_removal.abstained or not gone,
        "reason_after_removal": after_removal.reason if after_removal else None,
        "followed_after_removal": _contains(gone, substitute),
        "cited_removed_doc": bool(after_removal and any(c.doc_id == doc_id for c in after_removal.citations)),
    }


def _safe(value: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", value)[:120] or "question"


def _load_records(path: Path) -> dict[str, dict[str, Any]]:
    """Records already written; a torn last line from a kill is cut (that question is redone)."""
    if not path.exists():
        return {}
    records: dict[str, dict[str, Any]] = {}
    valid: list[str] = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
            records[str(record["id"])] = record
        except (ValueError, KeyError, TypeError):
            continue
        valid.append(line + "\n")
    path.write_text("".join(valid), encoding="utf-8")
    return records


def summarise_counterfactual(
    records: Iterable[dict[str, Any]], right_before: Mapping[str, Collection[str]] | None = None
) -> dict[str, dict[str, Any]]:
    """Per mode: shares of the edited questions the mode answered after the edit.

    `followed` and `stale` are over those answered questions, and so is `abstained_after_removal` (a
    mode that never answers would otherwise score 1.0 on it); `followed_of_all` is over every edited
    question. A share over no answered question is None.
    """
    edited = [r for r in records if r.get("status") == "edited"]
    modes: list[str] = []
    for record in edited:
        modes.extend(m for m in record["modes"] if m not in modes)
    summary: dict[str, dict[str, Any]] = {}
    for mode in modes:
        rows = [r["modes"][mode] for r in edited if mode in r["modes"]]
        answered = [m for m in rows if not m["abstained_after_edit"]]
        summary[mode] = {
            "questions": len(rows),
            "answered_after_edit": len(answered),
            "followed": _share(sum(m["followed"] for m in answered), len(answered)),
            "stale": _share(sum(m["stale"] for m in answered), len(answered)),
            "followed_of_all": _share(sum(m["followed"] for m in rows), len(rows)),
            "abstained_after_removal": _share(sum(m["abstained_after_removal"] for m in answered), len(answered)),
        }
        if right_before is not None:
            # Of the edited questions this mode answered right before the edit: did it follow the edit?
            knew = [r["modes"][mode] for r in edited if mode in r["modes"] and r["id"] in right_before.get(mode, ())]
            summary[mode]["right_before"] = len(knew)
            summary[mode]["followed_when_right_before"] = _share(sum(m["followed"] for m in knew), len(knew))
    return summary


def skipped_reasons(records: Iterable[dict[str, Any]]) -> dict[str, int]:
    """How many questions were skipped, by reason (for the report)."""
    counts: dict[str, int] = {}
    for record in records:
        if record.get("status") == "skipped":
            counts[record["reason"]] = counts.get(record["reason"], 0) + 1
    return dict(sorted(counts.items()))


def _share(count: int, total: int) -> float | None:
    return round(count / total, 4) if total else None
