"""Checks on what a reader proposes, before anything is released.

- `degenerate`: a free answer that loops (the same words over and over) is never an answer.
- `choose`: of the extractive reader's scored spans, the best one that says something beyond the
  question, is found verbatim in its passage, and is likely enough to be the answer; otherwise the
  reason it abstains (`does_not_answer`: what it would quote does not depend on the question;
  `instruction`: every span left stood where a passage gives orders).
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from rag.grounding import content_words, split_sentences
from rag.injection import citation_marks, has_markup, labelled_span, relays_an_order
from rag.reader.asked import Rarity, expected_kind, fits, focus
from rag.reader.evidence import prose_sentences
from rag.reader.spans import Span, answers_something

_WORD = re.compile(r"\w+")


def degenerate(text: str, *, n: int = 4, max_repeats: int = 2, min_distinct: float = 0.4) -> bool:
    """True when the text loops: inside one sentence some `n` consecutive words occur more than
    `max_repeats` times or, in a sentence of 30 or more words, fewer than `min_distinct` of its words are
    distinct (a run-on list); or a sentence repeats an earlier one (the same content words). Phrases
    shared by different sentences ("the value of an object") are ordinary prose, not a loop."""
    seen: set[tuple[str, ...]] = set()
    for sentence in split_sentences(text):
        words = [w.lower() for w in _WORD.findall(sentence)]
        grams = Counter(tuple(words[i : i + n]) for i in range(len(words) - n + 1))
        if grams and max(grams.values()) > max_repeats:
            return True
        if len(words) >= 30 and len(set(words)) / len(words) < min_distinct:
            return True
        key = tuple(content_words(sentence))
        if key and key in seen:
            return True
        seen.add(key)
    return False


@dataclass(frozen=True)
class Choice:
    span: Span | None
    text: str
    reason: str | None  # why no span was chosen: does_not_answer, unsupported_answer
    probability: float  # P(span, then end of answer): the reader's confidence in it
    gain: float  # log P(span | question) - log P(span | a question that asks nothing)


def choose(
    spans: Sequence[Span],
    texts: Sequence[str],
    baselines: Sequence[float],
    question: str,
    passages: Sequence[str],
    evidence: Sequence[str],
    *,
    min_gain: float,
    min_focus: float,
    gain_weight: float = 1.0,
    focus_weight: float = 0.0,
    rarity: Rarity | None = None,
    similarity: Callable[[str, str], float] | None = None,
    min_similarity: float = 0.0,
) -> Choice:
    """The span that best answers *this* question, verbatim in its passage, or why there is none.

    Spans made only of the question's words (or of stop words) answer nothing and are skipped, and so are
    spans holding a citation-like mark or markup, spans of the wrong kind (no number for "how many", no
    date or time word for "when", `rag.reader.asked.fits`), and spans standing where a passage gives orders
    (after a label and its colon, or in a sentence that restates the question and says how to reply). The
    rest are ranked by

        log P(span | question) + `gain_weight` x gain + `focus_weight` x focus,

    where gain = log P(span | question) - log P(span | a question that asks nothing) (a span the reader
    would pick whatever was asked, a heading or the name the passage is about, is worth less than one the
    question calls for) and focus is the share of the question's content words, weighted by their rarity in
    the store, that the evidence sentence the span stands in holds (`rag.reader.asked.focus`): of two
    likely spans, the one in the sentence about the question. The best one must read word for word in its
    passage and in the evidence the reader was shown of it (else `unsupported_answer`), and is released
    only if (else `does_not_answer`) its gain is at least `min_gain` (natural log), its focus at least
    `min_focus` and, with a `similarity` (the embedder's cosine of question and sentence), the sentence's
    similarity to the question at least `min_similarity`: a span from a sentence about something else
    answers another question (most answers given when the evidence was withheld from the store were of that
    kind)."""
    kind = expected_kind(question)
    ranked: list[tuple[float, Span, str, float, float, str]] = []
    ordered = False
    for span, text, baseline in zip(spans, texts, baselines, strict=True):
        if not (math.isfinite(span.logprob) and math.isfinite(baseline)):
            continue  # a score that is not a number ranks nothing and passes no threshold
        # No "[n]" that reads as a citation, no markup a chat client would render.
        if not answers_something(text, question) or citation_marks(text) or has_markup(text):
            continue
        if not fits(text, kind):
            continue
        sentence = read_sentence(text, evidence[span.passage - 1], passages[span.passage - 1])
        if _on_orders(text, question, evidence[span.passage - 1], sentence):
            ordered = True
            continue
        about = focus(question, sentence, rarity)
        score = span.logprob + gain_weight * (span.logprob - baseline) + focus_weight * about
        ranked.append((score, span, text, baseline, about, sentence))
    ranked.sort(key=lambda item: -item[0])
    if not ranked:
        return Choice(None, "", "instruction" if ordered else "does_not_answer", 0.0, 0.0)
    _, span, text, baseline, about, sentence = ranked[0]
    # Verbatim in the passage, and in what the reader was shown of it (instructions to a model set aside).
    if not (_verbatim(text, passages[span.passage - 1]) and _verbatim(text, evidence[span.passage - 1])):
        return Choice(None, text, "unsupported_answer", 0.0, 0.0)
    gain = span.logprob - baseline
    # Written so that NaN fails: `not (x >= t)`. The embedder is asked only when the rest passed.
    if not (gain >= min_gain and about >= min_focus) or not (
        similarity is None or (bool(sentence) and similarity(question, sentence) >= min_similarity)
    ):
        return Choice(None, text, "does_not_answer", math.exp(span.logprob), gain)
    return Choice(span, text, None, math.exp(span.logprob), gain)


def _on_orders(span: str, question: str, evidence: str, read: str) -> bool:
    """Whether the span stands where a passage gives orders its instruction patterns missed: after a label and
    its colon, in a sentence of two labels, or in a sentence that restates the question and says how to reply
    (`rag.injection.labelled_span`, `relays_an_order`). `read` is the prose sentence the span was read from
    (`read_sentence`), or "" when there is none: then the evidence sentence holding it."""
    sentence = read or next((s for s in split_sentences(" ".join(evidence.split())) if _occurs(span, s)), "")
    return bool(sentence) and (labelled_span(span, sentence) or relays_an_order(sentence, question))


def read_sentence(span: str, evidence: str, passage: str) -> str:
    """The prose sentence of the passage the span was read from: it holds the span at word boundaries and
    was part of the evidence the reader saw; "" when there is none."""
    shown = " ".join(evidence.split())
    for sentence in prose_sentences(passage):
        if _occurs(span, sentence) and _occurs(sentence, shown) and _verbatim(sentence, passage):
            return sentence
    return ""


_FOOTNOTE = re.compile(r"^\[\d+\]\s*")
# "What does X do / declare / specify?", "What did X do?", "How does X work?", "Why ...?": the answer is a
# statement, not a name or a number. "What did X build?" asks for a thing: the span (a whole sentence carries
# more than the answer, and any words in it the injection patterns miss).
_DESCRIPTIVE = re.compile(
    r"^\s*(?:what\s+(?:does|do)\b|what\s+did\b.*\b(?:do|mean|happen)\b|what\s+happens\b|"
    r"how\s+(?:does|do|did|is|are|can)\b|why\b|explain\b|describe\b)",
    re.IGNORECASE,
)


def asks_for_a_statement(question: str) -> bool:
    """Whether the question asks what something does, how it works or why (answered with a sentence)."""
    return bool(_DESCRIPTIVE.match(question))


def quotation(question: str, span: str, evidence: str, passage: str) -> str:
    """What extract mode releases: the span for a question asking for a name, date or number; for a
    question asking for a statement, the whole evidence sentence the span stands in, if it reads verbatim
    in the passage and holds no citation-like mark (`[n]`, `[ n ]`, `［ｎ］`) once a leading footnote mark is
    dropped, nor markup (else the span: a mark in the quotation would read as one of our citations, and an
    image or a link would be rendered by a chat client)."""
    if not asks_for_a_statement(question):
        return span
    sentence = _FOOTNOTE.sub("", read_sentence(span, evidence, passage))
    return sentence if sentence and not citation_marks(sentence) and not has_markup(sentence) else span


def _verbatim(text: str, passage: str) -> bool:
    """The text reads, word for word, in the passage (whitespace aside), not cut inside a word or number."""
    return bool(text) and _occurs(" ".join(text.split()), " ".join(passage.split()))


def _occurs(text: str, within: str) -> bool:
    """`text` occurs in `within` at word boundaries: "version 3" does not occur in "version 3.2"."""
    edge = r"(?![\w]|['’.,-]\w)"
    return re.search(r"(?<![\w'’.,-])" + re.escape(text) + edge, within) is not None if text else False
