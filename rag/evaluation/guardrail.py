"""The guardrail benchmark (issue 11, section 3): does the groundedness checker block false sentences?

Independent of the reader. From each sampled answerable question, the gold passage and its answer
sentence (the passage sentence containing a gold answer) give one item per kind:

- supported: `verbatim` (the answer sentence), `span` (the gold answer alone), `reordered` (a leading
  phrase moved to the end: "In 1990, X did Y." → "X did Y in 1990.");
- unsupported: `entity_swap` (a name answer replaced by another question's name answer), `number_change`,
  `date_change`, `negation` (inserted, or removed where present), `role_swap` (two names of the
  sentence swapped), `added_clause` (a fact from a passage of another article appended),
  `other_passage` (a sentence of another passage of the same article: true, but not in this passage).

Each item is checked by the production checker with the gold passage as the only passage, under the
service's release rule (a sentence that only restates the question is never kept). A baseline row,
content-word coverage of the passage ≥ the checker's threshold and nothing else, shows what the
checker adds. Builders are pure and seeded; a kind that cannot be built for a sentence is skipped.
"""

from __future__ import annotations

import itertools
import random
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from rag.evaluation.counterfactual import answer_kind
from rag.evaluation.squad import Question, SquadData
from rag.grounding import GroundednessChecker, content_words, restates_question, split_sentences

SUPPORTED_KINDS = ("verbatim", "span", "reordered")
UNSUPPORTED_KINDS = (
    "entity_swap",
    "number_change",
    "date_change",
    "negation",
    "role_swap",
    "added_clause",
    "other_passage",
)
KINDS = SUPPORTED_KINDS + UNSUPPORTED_KINDS

MONTHS = (
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
)
NUMBER_WORDS = ("two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve")
_YEAR = re.compile(r"(?<![\d,.])(1[0-9]{3}|20[0-9]{2})(?!\d|[,.]\d)")
_NUMBER = re.compile(r"(?<![\w,.])(\d{1,3}(?:,\d{3})+|\d+)(\.\d+)?(st|nd|rd|th)?(?!\w|[,.]\d)")
_NUMBER_WORD = re.compile(r"\b(" + "|".join(NUMBER_WORDS) + r")\b", re.IGNORECASE)
_MONTH = re.compile(r"\b(" + "|".join(MONTHS) + r")\b")
_NAME = re.compile(r"[A-Z][\w'’.-]*(?:\s+(?:of\s+|de\s+|the\s+)?[A-Z][\w'’.-]*)*")
_LEADING_PHRASE = re.compile(
    r"^(?P<head>(?:In|On|At|During|After|Before|By|Since|Until|Following|Despite|Although|While|When|Because"
    r"|Under|Throughout|Within|Upon|Between|From|Unlike|Like|Through|Over|Among|Prior to|Due to)\b[^,;:()\"]{1,80}),"
    r"\s+(?P<rest>[^,;:].*)$"
)
_AUXILIARIES = "is|are|was|were|has|have|had|can|could|will|would|should|may|might|must|does|do|did"  # insertion points
_AUX = re.compile(rf"(?<=\s)({_AUXILIARIES})(?=\s)")
_PAST = re.compile(r"(?<=\s)([a-z]{3,}ed)(?=\s)")
_DETERMINERS = frozenset(
    [
        "the",
        "a",
        "an",
        "this",
        "that",
        "these",
        "those",
        "its",
        "his",
        "her",
        "their",
        "our",
        "my",
        "which",
        "who",
        "be",
        "been",
        "being",
    ],
)
_NEGATED = (
    (re.compile(r"\bcannot\b"), "can"),
    (re.compile(r"\bcan't\b"), "can"),
    (re.compile(r"\bwon't\b"), "will"),
    (re.compile(r"\b(\w+)n't\b"), r"\1"),
    (re.compile(r"\b(\w+) not (?!only\b)"), r"\1 "),
    (re.compile(r"\bnever "), ""),
)
_LIST_GLUE = re.compile(r"(?:[\s,;:&/()–-]|\band\b|\bor\b|\bvs?\.)*")
_FUNCTION_CAPITALS = frozenset(
    [
        "The",
        "A",
        "An",
        "It",
        "In",
        "This",
        "These",
        "That",
        "Those",
        "Its",
        "On",
        "At",
        "As",
        "For",
        "By",
        "He",
        "She",
        "They",
        "His",
        "Her",
        "Their",
        "Our",
        "We",
        "During",
        "After",
    ]
)


@dataclass(frozen=True)
class Item:
    kind: str
    sentence: str
    passage: int  # index into SquadData.passages: the only passage it is checked against
    question: str
    question_id: str

    @property
    def expected_supported(self) -> bool:
        return self.kind in SUPPORTED_KINDS


@dataclass(frozen=True)
class GuardrailResult:
    summary: dict[str, Any]  # detected / false_alarm / supported_pass / items / baseline
    records: list[dict[str, Any]]  # one per item: kind, sentence, passage, question_id, checker, baseline


def answer_sentence(passage: str, answers: Sequence[str]) -> tuple[str, str] | None:
    """(the passage sentence containing a gold answer, that answer), or None if none contains one."""
    sentences = split_sentences(" ".join(passage.split()))
    for answer in answers:
        needle = " ".join(answer.split())
        for sentence in sentences:
            if needle and needle in sentence:
                return sentence, needle
    return None


def _sentence_end(sentence: str) -> tuple[str, str]:
    body = sentence.rstrip()
    end = body[-1] if body and body[-1] in ".!?" else ""
    return (body[:-1] if end else body), end or "."


_UNSAFE_REST = re.compile(
    r"[\";:()]|,(?!\d{3})"
    r"|\b(?:which|who|whom|whose|that|where|when|while|after|before|until|since|1[0-9]{3}|20[0-9]{2})\b"
)
_TRAILING_PHRASE = re.compile(
    r"^(?P<rest>[^;:]{12,}?),\s+(?P<tail>(?:in|on|during|after|before|since|until|following|despite|although"
    r"|while|because|throughout)\b[^,;:()\"]{1,80})$"
)
_TRAILING_DATE = re.compile(
    r"^(?P<rest>[^;:]{12,}?)\s+(?P<tail>(?:in|on|since|by)\s+(?:(?:early|late|mid)\s+)?"
    r"(?:(?:\d{1,2}\s+)?(?:" + "|".join(MONTHS) + r")\s+(?:\d{1,2},?\s+)?)?(?:1[0-9]{3}|20[0-9]{2})s?)$"
)


def _lower_first(text: str) -> str:
    first, _, rest = text.partition(" ")
    return f"{first.lower()} {rest}" if first in _FUNCTION_CAPITALS else text


def reorder_clauses(sentence: str) -> str | None:
    """Move a leading adverbial phrase to the end ("In 1990, X did Y." → "X did Y in 1990.") or a trailing
    one to the front ("X did Y in 1990." → "In 1990, X did Y."); None when the sentence has neither."""
    body, end = _sentence_end(sentence)
    match = _LEADING_PHRASE.match(body)
    if match is not None:
        head, rest = match.group("head"), match.group("rest")
        if len(rest.split()) >= 3 and not _UNSAFE_REST.search(rest) and head.split()[-1].lower() not in _DETERMINERS:
            rest = _lower_first(rest)
            return f"{rest[0].upper()}{rest[1:]} {head[0].lower()}{head[1:]}{end}"
    for pattern in (_TRAILING_PHRASE, _TRAILING_DATE):
        match = pattern.match(body)
        rest = match.group("rest") if match is not None else ""
        # Only a simple main clause: a date or clause inside it could be what the phrase attaches to.
        if match is not None and len(rest.split()) >= 3 and not _UNSAFE_REST.search(rest):
            tail, rest = match.group("tail"), _lower_first(match.group("rest"))
            return f"{tail[0].upper()}{tail[1:]}, {rest}{end}"
    return None


def swap_entity(sentence: str, answer: str, substitutes: Sequence[str], passage: str, rng: random.Random) -> str | None:
    """Replace a name answer with another name (absent from the passage), else None."""
    if answer_kind(answer) != "name" or answer not in sentence:
        return None
    vocabulary = set(content_words(passage))
    candidates = [s for s in substitutes if s != answer and not set(content_words(s)) & vocabulary]
    if not candidates:
        return None
    return sentence.replace(answer, rng.choice(candidates))


def _ordinal(n: int) -> str:
    if 10 <= n % 100 <= 20:
        return "th"
    return {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")


def change_number(sentence: str, answer: str, rng: random.Random) -> str | None:
    """Change one number that is not a year (the answer's when it is one), else None."""
    spans = [m for m in _NUMBER.finditer(sentence) if not _YEAR.fullmatch(m.group(0))]
    words = list(_NUMBER_WORD.finditer(sentence))
    if not spans and not words:
        return None
    inside = [m for m in spans + words if m.group(0) in answer]
    match = rng.choice(inside or spans + words)
    text = match.group(0)
    if match.re is _NUMBER_WORD:
        new = rng.choice([w for w in NUMBER_WORDS if w != text.lower()])
        new = new.capitalize() if text[0].isupper() else new
    else:
        digits, fraction, suffix = match.group(1), match.group(2), match.group(3)
        value = int(digits.replace(",", ""))
        if fraction:
            last = int(fraction[-1])
            new = f"{digits}{fraction[:-1]}{(last + rng.randint(1, 9)) % 10}"
        else:
            changed = value + rng.choice([-1, 1]) * rng.choice([1, 2, 3, 5, 10]) * max(1, 10 ** (len(str(value)) - 2))
            changed = changed if changed > 0 else value + 1
            new = f"{changed:,}" if "," in digits else str(changed)
            new += _ordinal(changed) if suffix else ""
    return sentence[: match.start()] + new + sentence[match.end() :]


def change_date(sentence: str, answer: str, rng: random.Random) -> str | None:
    """Change a year (the answer's when it has one) or else a month name, else None."""
    years = list(_YEAR.finditer(sentence))
    if years:
        inside = [m for m in years if m.group(0) in answer]
        match = rng.choice(inside or years)
        year = int(match.group(0)) + rng.choice([-1, 1]) * rng.randint(1, 20)
        return sentence[: match.start()] + str(year) + sentence[match.end() :]
    months = list(_MONTH.finditer(sentence))
    if months:
        match = rng.choice(months)
        new = rng.choice([m for m in MONTHS if m != match.group(0)])
        return sentence[: match.start()] + new + sentence[match.end() :]
    return None


def toggle_negation(sentence: str) -> str | None:
    """Remove the sentence's negation if it has one ("did not win" → "did win"), else insert one.

    Insertion: "not" after the first auxiliary ("was built" → "was not built"), or "never" before the
    first past-tense verb ("X founded Y" → "X never founded Y"); None when neither exists.
    """
    for pattern, replacement in _NEGATED:
        if pattern.search(sentence):
            return pattern.sub(replacement, sentence, count=1)
    aux = _AUX.search(sentence)
    if aux is not None:
        return f"{sentence[: aux.end()]} not{sentence[aux.end() :]}"
    for past in _PAST.finditer(sentence):
        before = sentence[: past.start()].split()
        if before and before[-1].lower() not in _DETERMINERS and before[-1][-1] not in ",;:":
            return f"{sentence[: past.start()]}never {sentence[past.start() :]}"
    return None


def _names(sentence: str) -> list[tuple[int, int]]:
    spans = []
    for match in _NAME.finditer(sentence):
        start, text = match.start(), match.group(0)
        while text.split(" ", 1)[0] in _FUNCTION_CAPITALS:  # "The Broncos" → "Broncos"
            head, _, text = text.partition(" ")
            start += len(head) + 1
        text = re.sub(r"['’]s$", "", text).rstrip(".'’-")
        if start == 0 and " " not in text:  # a capitalised first word may be any word
            continue
        if text:
            spans.append((start, start + len(text)))
    return spans


def swap_roles(sentence: str, rng: random.Random) -> str | None:
    """Swap two different names of the sentence (numbers if it has fewer than two names), else None.

    Names joined only by "and", "or" or a comma are not swapped: that keeps the meaning.
    """
    for spans in (_names(sentence), [m.span() for m in _NUMBER.finditer(sentence)]):
        pairs = []
        for i, (a0, a1) in enumerate(spans):
            for b0, b1 in spans[i + 1 :]:
                first, second = sentence[a0:a1], sentence[b0:b1]
                distinct = first.lower() not in second.lower() and second.lower() not in first.lower()
                # Items of one list, or a name and its abbreviation in brackets, swap without harm.
                between = "".join(sentence[x1:y0] for (_, x1), (y0, _) in itertools.pairwise(spans[i:]) if y0 <= b0)
                if distinct and not _LIST_GLUE.fullmatch(between):
                    pairs.append(((a0, a1), (b0, b1)))
        if pairs:
            (a0, a1), (b0, b1) = rng.choice(pairs)
            return sentence[:a0] + sentence[b0:b1] + sentence[a1:b0] + sentence[a0:a1] + sentence[b1:]
    return None


def _fact_sentences(passage: str, minimum: int = 4) -> list[str]:
    return [s for s in split_sentences(" ".join(passage.split())) if len(content_words(s)) >= minimum]


def add_clause(sentence: str, fact: str) -> str:
    """Append another passage's fact as a coordinate clause."""
    body, end = _sentence_end(sentence)
    fact_body, _ = _sentence_end(fact)
    return f"{body}, and {_lower_first(fact_body)}{end}"


def build_items(
    question: Question,
    data: SquadData,
    articles: Sequence[int],
    names: Sequence[str],
    rng: random.Random,
) -> list[Item]:
    """Every kind that can be built for this question (one item each); [] without an answer sentence."""
    passage = data.passages[question.passage]
    found = answer_sentence(passage, question.answers)
    if found is None:
        return []
    sentence, answer = found
    built: dict[str, str | None] = {
        "verbatim": sentence,
        "span": answer,
        "reordered": reorder_clauses(sentence),
        "entity_swap": swap_entity(sentence, answer, names, passage, rng),
        "number_change": change_number(sentence, answer, rng),
        "date_change": change_date(sentence, answer, rng),
        "negation": toggle_negation(sentence),
        "role_swap": swap_roles(sentence, rng),
    }
    article = articles[question.passage]
    elsewhere = [i for i, a in enumerate(articles) if a != article]
    fact_sentences = _fact_sentences(data.passages[rng.choice(elsewhere)]) if elsewhere else []
    built["added_clause"] = add_clause(sentence, rng.choice(fact_sentences)) if fact_sentences else None
    vocabulary = set(content_words(passage))
    siblings = [
        s
        for i, a in enumerate(articles)
        if a == article and i != question.passage
        for s in _fact_sentences(data.passages[i])
        if not set(content_words(s)) <= vocabulary  # a sentence made only of this passage's words may be true here
    ]
    # The hardest of them: the sentences most made of this passage's words (one of the three closest).
    closest = sorted(siblings, key=lambda s: -coverage(s, passage))[:3]
    built["other_passage"] = rng.choice(closest) if closest else None
    items = []
    for kind in KINDS:
        text = built[kind]
        if text and (kind in SUPPORTED_KINDS or text != sentence):
            items.append(Item(kind, text, question.passage, question.question, question.id))
    return items


def coverage(sentence: str, passage: str) -> float:
    """Share of the sentence's content words that occur anywhere in the passage (the baseline)."""
    words = content_words(sentence)
    vocabulary = set(content_words(passage))
    return sum(w in vocabulary for w in words) / len(words) if words else 0.0


def name_answers(data: SquadData) -> list[str]:
    """Distinct name-kind gold answers of the dataset, sorted (the entity-swap substitutes)."""
    return sorted({" ".join(a.split()) for q in data.questions for a in q.answers if answer_kind(a) == "name"})


def run_guardrail(
    questions: Sequence[Question],
    data: SquadData,
    checker: GroundednessChecker,
    *,
    articles: Sequence[int],
    seed: int = 0,
) -> GuardrailResult:
    """Build the items of every question, check each against its gold passage alone, and score.

    `articles[i]` is the article of passage i (`SquadData.articles`). Items of a question depend only on
    the seed and the question id, so a sample's items do not change with its order or size.
    """
    names = name_answers(data)
    records: list[dict[str, Any]] = []
    for question in questions:
        rng = random.Random(f"{seed}:{question.id}")
        for item in build_items(question, data, articles, names, rng):
            passage = data.passages[item.passage]
            (support,) = checker.check([item.sentence], [passage])
            restates = restates_question(item.sentence, item.question)
            baseline = coverage(item.sentence, passage)
            records.append(
                {
                    **asdict(item),
                    "expected_supported": item.expected_supported,
                    "supported": support.supported and not restates,
                    "baseline_supported": baseline >= checker.threshold and not restates,
                    "restates_question": restates,
                    "score": round(support.score, 4),
                    "reason": support.reason,
                    "baseline_coverage": round(baseline, 4),
                }
            )
    return GuardrailResult(summarise(records), records)


def _rate(hits: int, total: int) -> float | None:
    """A share, or None when there was nothing to count (a kind with no items is not a 0% kind)."""
    return round(hits / total, 4) if total else None


def summarise(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Detection per unsupported kind, pass rate per supported kind, false alarms; checker and baseline."""
    by_kind = {kind: [r for r in records if r["kind"] == kind] for kind in KINDS}
    supported_items = [r for r in records if r["kind"] in SUPPORTED_KINDS]

    def figures(key: str) -> dict[str, Any]:
        return {
            "detected": {k: _rate(sum(not r[key] for r in by_kind[k]), len(by_kind[k])) for k in UNSUPPORTED_KINDS},
            "false_alarm": _rate(sum(not r[key] for r in supported_items), len(supported_items)),
            "supported_pass": {k: _rate(sum(r[key] for r in by_kind[k]), len(by_kind[k])) for k in SUPPORTED_KINDS},
        }

    checker = figures("supported")
    baseline = figures("baseline_supported")
    return {**checker, "items": {k: len(by_kind[k]) for k in KINDS}, "baseline": baseline}
