"""Groundedness: does each answer sentence say only what a retrieved passage says?

Support of a sentence by a passage = 0.6 x content-word coverage (share of the sentence's content
words found in the passage) + 0.4 x embedding similarity (MiniLM cosine between the sentence and the
passage sentence most like it). Numbers and names (key terms) are a hard requirement: if one is
missing from the passage, that passage does not support the sentence, whatever the score. A
sentence is kept when its best passage reaches the threshold; that passage is the one it cites.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from bm25s.stopwords import STOPWORDS_EN_PLUS

from rag.protocols import Embedder

COVERAGE_WEIGHT = 0.6
_WORD = re.compile(r"[A-Za-z0-9_]+(?:['.][A-Za-z0-9_]+)*")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[\"'(\[A-Z0-9])")
_STOPWORDS = frozenset(STOPWORDS_EN_PLUS)  # bm25s's English list (179 words), as the BM25 index uses


def split_sentences(text: str) -> list[str]:
    """Sentences of an answer; a short answer without a full stop is one sentence."""
    return [s.strip() for s in _SENTENCE_END.split(text.strip()) if s.strip()]


def _stem(word: str) -> str:
    for suffix in ("ing", "ed", "es", "s"):
        if len(word) > len(suffix) + 3 and word.endswith(suffix):
            return word[: -len(suffix)]
    return word


def content_words(text: str) -> list[str]:
    words = [w.lower() for w in _WORD.findall(text)]
    return [_stem(w) for w in words if w not in _STOPWORDS and (len(w) > 1 or w.isdigit())]


def key_terms(text: str) -> list[str]:
    """Numbers, and capitalised or code-like words not at the start of the sentence."""
    terms: list[str] = []
    for i, match in enumerate(_WORD.finditer(text)):
        word = match.group(0)
        notable = any(ch.isdigit() for ch in word) or (i > 0 and word[0].isupper()) or "_" in word or "." in word
        if notable and word.lower() not in _STOPWORDS:
            terms.append(_stem(word.lower()))
    return terms


@dataclass(frozen=True)
class SentenceSupport:
    sentence: str
    passage: int | None  # 1-based number of the best supporting passage
    score: float
    coverage: float
    similarity: float
    missing_terms: list[str] = field(default_factory=list)
    supported: bool = False
    restates_question: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in asdict(self).items()}


class GroundednessChecker:
    """Scores answer sentences against the passages the answer was generated from."""

    def __init__(self, embedder: Embedder, *, threshold: float = 0.55) -> None:
        self.embedder = embedder
        self.threshold = threshold

    def check(self, sentences: Sequence[str], passages: Sequence[str]) -> list[SentenceSupport]:
        if not passages:
            return [SentenceSupport(s, None, 0.0, 0.0, 0.0) for s in sentences]
        passage_words = [set(content_words(p)) for p in passages]
        passage_all = [{_stem(w.lower()) for w in _WORD.findall(p)} for p in passages]
        passage_sentences = [split_sentences(" ".join(p.split())) for p in passages]
        results: list[SentenceSupport] = []
        for sentence in sentences:
            words = content_words(sentence)
            terms = key_terms(sentence)
            # Only passage sentences sharing a word with the answer can be its source: embed just those.
            candidates = [
                (n, ps)
                for n, sents in enumerate(passage_sentences)
                for ps in sents
                if set(words) & set(content_words(ps))
            ]
            similarity_by_passage = self._similarities(sentence, candidates, len(passages))
            best: SentenceSupport | None = None
            for n, vocabulary in enumerate(passage_words):
                coverage = sum(w in vocabulary for w in words) / len(words) if words else 0.0
                missing = [t for t in terms if t not in passage_all[n]]
                similarity = similarity_by_passage[n]
                score = COVERAGE_WEIGHT * coverage + (1 - COVERAGE_WEIGHT) * similarity
                supported = bool(words) and not missing and score >= self.threshold
                candidate = SentenceSupport(sentence, n + 1, score, coverage, similarity, missing, supported)
                if best is None or (candidate.supported, candidate.score) > (best.supported, best.score):
                    best = candidate
            assert best is not None
            results.append(best)
        return results

    def _similarities(self, sentence: str, candidates: list[tuple[int, str]], passages: int) -> list[float]:
        best = [0.0] * passages
        if not candidates:
            return best
        vectors = self.embedder.embed([sentence, *(text for _, text in candidates)])
        query = vectors[0]
        for (n, _), vector in zip(candidates, vectors[1:], strict=True):
            best[n] = max(best[n], float(sum(a * b for a, b in zip(query, vector, strict=True))))
        return best


def select_evidence(question: str, passages: Sequence[str], sentences: int) -> list[str]:
    """The sentences of the passages that share most content words with the question.

    Returns one string per passage (same numbering; "" when none of its sentences was chosen), the
    chosen sentences in their original order. A 270M reader given 4 whole passages often copies the
    wrong one; given the few sentences that overlap the question it scored F1 0.37 vs 0.25 on 40 SQuAD
    dev questions, and answers faster (shorter prompt). Ties prefer the better-ranked passage.
    """
    asked = set(content_words(question))
    scored = []
    for n, passage in enumerate(passages):
        for i, sentence in enumerate(split_sentences(" ".join(passage.split()))):
            scored.append((len(asked & set(content_words(sentence))) - 0.3 * n, n, i, sentence))
    chosen = sorted(sorted(scored, key=lambda item: -item[0])[:sentences], key=lambda item: (item[1], item[2]))
    return [" ".join(s for _, m, _, s in chosen if m == n) for n in range(len(passages))]
