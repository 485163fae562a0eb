"""Candidate answer spans and their scores: the pure logic of extractive reading (no model here).

An extractive answer is a run of the prompt's own passage tokens. The reader model scores a span
[start, end) as the probability that the answer is exactly those tokens and then ends:

    log P(t_start | prompt) + sum log P(t_i | prompt, t_start..t_i-1) + log P(end of answer | prompt, span)

A span starts on a word (its first token carries the word-start space, as the answer after "Answer:"
does) and ends where a word ends. These functions turn the model's per-position log-probabilities
into span scores; `rag/reader/extractive.py` computes those with the model.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from rag.grounding import content_words

_CLOSERS = frozenset(")]\"'”’")
_JOINERS = frozenset(".,'’-")  # inside a number, a contraction or a hyphenated word when a letter or digit follows


@dataclass(frozen=True)
class Span:
    passage: int  # 1-based passage number, as in the prompt
    start: int  # token positions in the prompt, [start, end)
    end: int
    logprob: float  # log P(span, then end of answer | prompt)

    @property
    def tokens(self) -> int:
        return self.end - self.start


def is_word_start(piece: str) -> bool:
    """A token that begins a word in running text: it carries the leading space (SentencePiece's ▁ or
    byte-level BPE's Ġ, decoded as a space) and something readable after it."""
    return piece[:1] == " " and any(ch.isalnum() or ch in "\"'“‘(" for ch in piece[1:2])


def can_end_after(piece: str, following: str | None, after: str | None = None) -> bool:
    """A span may end after `piece` if the word is complete there and the span does not end on a
    separator (a trailing comma, colon or opening bracket is never part of an answer).

    A word goes on when the next piece starts with a letter or digit, and also across `.`, `,`, `'`, `’`
    or `-` followed directly (`after`, the piece after that) by one: "3" before ".2", "can" before "'t",
    "1" before ",000" and "non" before "-negative" are not ends."""
    if not piece.strip():
        return False
    last = piece.rstrip()[-1]
    if not (last.isalnum() or last in _CLOSERS or last == "%"):
        return False
    if following is None:
        return True
    if following[:1].isalnum():
        return False
    if following[:1] in _JOINERS:
        rest = following[1:] or (after or "")
        return not rest[:1].isalnum()
    return True


def span_scores(
    first: float,
    steps: Sequence[float],
    stops: Sequence[float],
    ends: Sequence[bool],
) -> list[tuple[int, float]]:
    """Scores of every span that starts at one token, by length.

    `first` is log P(first token | prompt); `steps[j]` is log P(token j+1 | prompt, tokens 0..j); `stops[j]`
    is log P(end of answer | prompt, tokens 0..j); `ends[j]` says whether the span may end after token j.
    Returns (length, score) for each allowed length, longest context used exactly once per position."""
    if not (len(stops) == len(ends) and len(steps) >= len(stops) - 1):
        raise ValueError("steps, stops and ends do not describe the same span")
    scores: list[tuple[int, float]] = []
    running = first
    for j, (stop, allowed) in enumerate(zip(stops, ends, strict=True)):
        if j:
            running += steps[j - 1]
        if allowed:
            scores.append((j + 1, running + stop))
    return scores


def answers_something(span: str, question: str) -> bool:
    """A span answers something only if it says a content word (or number) the question does not."""
    asked = set(content_words(question))
    return any(word not in asked for word in content_words(span))


def best_spans(candidates: Sequence[Span], limit: int, ids: Sequence[int]) -> list[Span]:
    """Best first; of spans with the same tokens (`ids` are the prompt's) at several places, the best is kept."""
    ordered = sorted(candidates, key=lambda span: (-span.logprob, span.passage, span.start))
    kept: list[Span] = []
    seen: set[tuple[int, ...]] = set()
    for span in ordered:
        key = tuple(ids[span.start : span.end])
        if key not in seen:
            seen.add(key)
            kept.append(span)
            if len(kept) == limit:
                break
    return kept
