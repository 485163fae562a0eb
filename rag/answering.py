"""The guarded answer pipeline, usable without HTTP.

question → validate → hybrid retrieval → check passages against the ledger → relevance gate → generate (watermarked)
→ per-sentence groundedness check → answer with citations, support scores and an AI label.
Every failure path abstains or raises; nothing unchecked is ever returned from the grounded path.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from collections.abc import Generator as Generator_
from dataclasses import dataclass, field, replace
from typing import Any

from rag.errors import InvalidInputError
from rag.grounding import (
    GroundednessChecker,
    SentenceSupport,
    restates_question,
    select_evidence,
    split_sentences,
)
from rag.protocols import Generator
from rag.retrieval import ChunkGate, Hit, HybridRetriever, where_clause
from rag.settings import AnswerSettings, WatermarkSettings
from rag.types import AnswerMode

log = logging.getLogger(__name__)

ABSTAIN_MESSAGE = "I can't answer that from the verified knowledge base: none of its signed sources supports an answer."
# Heads the text of every ungrounded answer (evaluation, `rag ask --no-grounding`, or an HTTP endpoint an
# operator opened with RAG_ANSWER__ALLOW_UNGROUNDED): a reader that ignores every label still sees it.
UNCHECKED_LABEL = "[unchecked, not grounded]"
RETRY_PASSAGES = 2  # a reader that only restated the question tries once more on this many best passages
EXCERPT_CHARS = 300


@dataclass(frozen=True)
class Citation:
    n: int
    doc_id: str
    title: str
    path: str
    chunk_id: str
    chunk_sha256: str
    signer_name: str
    signer_keyid: str
    license: str
    origin: str
    score: float
    excerpt: str

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class Answer:
    question: str
    answer: str
    abstained: bool
    reason: str | None
    citations: list[Citation]
    support: list[SentenceSupport]
    label: dict[str, Any]
    timings: dict[str, float]
    answer_mode: AnswerMode
    grounded: bool
    raw: str = ""
    # What the service knows about how sure it is: the reader's mean token log-probability, the lowest
    # support score of a released sentence, and the best passage's cosine. Evaluation ranks by these.
    confidence: dict[str, float | None] = field(default_factory=dict)
    retrieved: list[dict[str, Any]] = field(default_factory=list)
    passage_texts: list[str] = field(default_factory=list)  # numbered as in the prompt; not serialised

    @property
    def text(self) -> str:
        """The answer without citation markers or the unchecked label (what evaluation scores)."""
        return " ".join(s.sentence for s in self.support if s.supported) if self.grounded else self.raw

    @property
    def released(self) -> list[SentenceSupport]:
        """Support of the sentences the answer holds: the kept ones, none when it abstained."""
        return [] if self.abstained else [s for s in self.support if s.supported]

    def rejected_summary(self) -> dict[str, Any]:
        """How many checked sentences were not released, by reason code; never their text."""
        reasons: dict[str, int] = {}
        for support in self.support:
            if support.supported and not self.abstained:
                continue
            code = rejection_code(support)
            reasons[code] = reasons.get(code, 0) + 1
        return {"count": sum(reasons.values()), "reasons": reasons}

    def as_dict(self) -> dict[str, Any]:
        """What may leave the service: released sentences only, rejected ones as a count and reason codes."""
        return {
            "question": self.question,
            "answer": self.answer,
            "abstained": self.abstained,
            "reason": self.reason,
            "citations": [c.as_dict() for c in self.citations],
            "support": [s.as_dict() for s in self.released],
            "rejected": self.rejected_summary(),
            "label": self.label,
            "timings": self.timings,
            "answer_mode": self.answer_mode,
            "grounded": self.grounded,
            "confidence": self.confidence,
            "retrieved": self.retrieved,
        }

    def as_diagnostic_dict(self) -> dict[str, Any]:
        """In-process only (`rag ask --explain`, evaluation): every checked sentence and the unchecked raw text.

        Never serialise this over HTTP: it holds text the check rejected."""
        return {**self.as_dict(), "support": [s.as_dict() for s in self.support], "raw": self.raw}


def rejection_code(support: SentenceSupport) -> str:
    """Why a checked sentence was not released (a stable code)."""
    if support.restates_question:
        return "restates_question"
    if support.supported:  # it passed, but the answer was withheld (a later check failed)
        return "withheld"
    return support.reason or "unsupported"


@dataclass(frozen=True)
class Delta:
    """Text that has passed the checks and may be shown (streaming)."""

    text: str


class AnswerService:
    def __init__(
        self,
        settings: AnswerSettings,
        retriever: HybridRetriever,
        generator: Generator,
        checker: GroundednessChecker,
        *,
        watermark: WatermarkSettings,
        ledger_head: Callable[[], str | None],
        gate: ChunkGate,
        refresh: Callable[[], None] = lambda: None,
        record_output: Callable[[list[str], list[str]], object] = lambda released, passages: None,
    ) -> None:
        """`gate` decides which retrieved chunks may be used (the ledger's commitments, the signers trusted
        now); `refresh` runs before each grounded answer so that it sees the ledger head as it is now;
        `record_output(released sentences, passages)` registers text before it is released (the loop guard)."""
        self.settings = settings
        self.retriever = retriever
        self.generator = generator
        self.checker = checker
        self.watermark = watermark
        self.ledger_head = ledger_head
        self.gate = gate
        self.refresh = refresh
        self.record_output = record_output

    def validate(
        self, question: Any, top_k: Any = None, filters: Any = None, mode: Any = None
    ) -> tuple[str, int, dict[str, Any] | None, AnswerMode]:
        """Check a request before any work; raises InvalidInputError with a stable code."""
        if not isinstance(question, str) or not question.strip():
            raise InvalidInputError("The question is empty; send a non-blank `question` string.", code="empty_question")
        if len(question) > self.settings.max_question_chars:
            raise InvalidInputError(
                f"The question has {len(question)} characters; the limit is {self.settings.max_question_chars}.",
                code="question_too_long",
            )
        k = self.settings.top_k if top_k is None else top_k
        if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= 20:
            raise InvalidInputError("`top_k` must be an integer from 1 to 20.", code="invalid_top_k")
        if filters is not None and not isinstance(filters, dict):
            raise InvalidInputError("`filters` must be an object of field: value.", code="invalid_filters")
        where_clause(filters)  # raises unknown_filter
        answer_mode = mode or self.settings.answer_mode
        if answer_mode not in ("free", "quote"):
            raise InvalidInputError('`answer_mode` must be "free" or "quote".', code="invalid_answer_mode")
        return question.strip(), k, filters or None, answer_mode

    def answer(
        self,
        question: str,
        *,
        top_k: int | None = None,
        filters: dict[str, Any] | None = None,
        grounded: bool = True,
        mode: AnswerMode | None = None,
    ) -> Answer:
        result: Answer | None = None
        for event in self.events(question, top_k=top_k, filters=filters, grounded=grounded, mode=mode):
            if isinstance(event, Answer):
                result = event
        assert result is not None
        return result

    def events(
        self,
        question: str,
        *,
        top_k: int | None = None,
        filters: dict[str, Any] | None = None,
        grounded: bool = True,
        mode: AnswerMode | None = None,
    ) -> Iterator[Delta | Answer]:
        """Checked sentences as `Delta`s as soon as each has passed, then the final `Answer`."""
        question, k, filters, answer_mode = self.validate(question, top_k, filters, mode)
        started = time.perf_counter()
        timings: dict[str, float] = {}
        label = self._label(grounded, answer_mode)
        base: dict[str, Any] = {"question": question, "answer_mode": answer_mode, "grounded": grounded, "label": label}
        if not grounded:
            if answer_mode == "quote":
                raise InvalidInputError(
                    "Quote mode needs retrieval; it cannot be ungrounded.", code="quote_needs_passages"
                )
            generation = self.generator.generate(question, None, mode="free")
            timings.update(generate_ms=generation.seconds * 1000, tokens=generation.tokens)
            timings["total_ms"] = (time.perf_counter() - started) * 1000
            labelled = f"{UNCHECKED_LABEL} {generation.text.strip()}".rstrip()  # the text itself says so
            self.record_output(split_sentences(generation.text), [])
            yield Delta(labelled)
            confidence = {"reader_logprob": _maybe_round(getattr(self.generator, "last_logprob", None))}
            yield Answer(answer=labelled, abstained=False, reason=None, citations=[], support=[],
                         timings=_round(timings), raw=generation.text, confidence=confidence, **base)  # fmt: skip
            return

        self.refresh()
        if self.retriever.store.count() == 0:
            yield self._abstain(base, "empty_knowledge_base", timings, started)
            return
        t0 = time.perf_counter()
        # A chunk the ledger does not commit (or whose signer is no longer trusted) is dropped, logged, never cited.
        # An admitted chunk carries the metadata the ledger commits: citations and filters use that, never the store's.
        hits = self.retriever.retrieve(question, k, filters, admit=self.gate.admit)
        timings["retrieve_ms"] = (time.perf_counter() - t0) * 1000
        retrieved = [_hit_view(n, hit) for n, hit in enumerate(hits, start=1)]
        best = max((hit.dense_score or 0.0 for hit in hits), default=0.0)
        timings["best_passage_score"] = best
        if best < self.settings.relevance_threshold:
            yield self._abstain(base, "no_relevant_passage", timings, started, retrieved)
            return

        passages = [hit.chunk.text for hit in hits]
        t0 = time.perf_counter()
        kept: list[SentenceSupport] = []
        checked: list[SentenceSupport] = []
        raw = ""
        try:
            evidence = self._evidence(question, passages, answer_mode, self.settings.reader_passages)
            raw = yield from self._generate(question, evidence, answer_mode, passages, timings, checked, kept)
            if (
                not kept
                and answer_mode == "free"
                and self.settings.reader_passages > RETRY_PASSAGES
                and any(support.restates_question for support in checked)
            ):
                # The reader only restated the question: the evidence distracted it. Nothing has been
                # released yet, so it may try once more, on the two best-ranked passages only.
                timings["retries"] = 1.0
                evidence = self._evidence(question, passages, answer_mode, RETRY_PASSAGES)
                raw += "\n" + (
                    yield from self._generate(question, evidence, answer_mode, passages, timings, checked, kept)
                )
        except _CheckerFailedError:
            yield self._abstain(base, "grounding_check_failed", timings, started, retrieved, checked, raw)
            return
        timings["generate_ms"] = (time.perf_counter() - t0) * 1000 - timings.get("check_ms", 0.0)
        timings["tokens"] = float(getattr(self.generator, "last_tokens", 0))
        if not kept:
            yield self._abstain(base, "unsupported_answer", timings, started, retrieved, checked, raw)
            return
        cited = sorted({s.passage for s in kept if s.passage is not None})
        citations = [_citation(n, hits[n - 1]) for n in cited]
        timings["total_ms"] = (time.perf_counter() - started) * 1000
        confidence = {
            "reader_logprob": _maybe_round(getattr(self.generator, "last_logprob", None)),
            "support": _maybe_round(min(s.score for s in kept)),
            "retrieval": _maybe_round(best),
        }
        self.record_output([s.sentence for s in kept], passages)  # the whole answer (its sentences are in)
        yield Answer(
            answer=" ".join(_with_marker(s, first=True) for s in kept),
            abstained=False,
            reason=None,
            citations=citations,
            support=checked,
            timings=_round(timings),
            raw=raw.strip(),
            confidence=confidence,
            retrieved=retrieved,
            passage_texts=passages,
            **base,
        )

    def _evidence(self, question: str, passages: list[str], mode: AnswerMode, count: int) -> list[str]:
        evidence = passages[:count]
        if self.settings.evidence_sentences and mode == "free":  # quote mode may quote whole passages
            evidence = select_evidence(question, evidence, self.settings.evidence_sentences)
        return evidence

    def _generate(
        self,
        question: str,
        evidence: list[str],
        mode: AnswerMode,
        passages: list[str],
        timings: dict[str, float],
        checked: list[SentenceSupport],
        kept: list[SentenceSupport],
    ) -> Generator_[Delta, None, str]:
        """Stream the reader's answer, releasing each complete sentence once checked; returns the raw text."""
        buffer, raw = "", ""
        for piece in self.generator.stream(question, evidence, mode=mode):
            buffer += piece
            raw += piece
            sentences = split_sentences(buffer)
            if len(sentences) > 1:  # every sentence but the last is complete
                yield from self._release(question, sentences[:-1], passages, timings, checked, kept)
                buffer = sentences[-1]
        if buffer.strip():
            yield from self._release(question, [buffer.strip()], passages, timings, checked, kept)
        return raw

    def _release(
        self,
        question: str,
        sentences: list[str],
        passages: list[str],
        timings: dict[str, float],
        checked: list[SentenceSupport],
        kept: list[SentenceSupport],
    ) -> Iterator[Delta]:
        """Check complete sentences; record every score and yield the supported ones, cited.

        A sentence with no content word beyond the question's only restates it: never an answer."""
        for support in self._check(sentences, passages, timings):
            if restates_question(support.sentence, question):
                support = replace(support, supported=False, restates_question=True)
            checked.append(support)
            if support.supported:
                kept.append(support)
                self.record_output([support.sentence], passages)  # before it leaves; a failure withholds it
                yield Delta(_with_marker(support, first=len(kept) == 1))
            else:  # a local diagnostic only: rejected text never leaves the service
                log.debug("sentence not released (%s): %r", rejection_code(support), support.sentence)

    def _check(self, sentences: list[str], passages: list[str], timings: dict[str, float]) -> list[SentenceSupport]:
        t0 = time.perf_counter()
        try:
            return self.checker.check(sentences, passages)
        except Exception as exc:  # fail closed: a checker that cannot run withholds the answer
            log.exception("groundedness check failed; withholding the answer")
            raise _CheckerFailedError from exc
        finally:
            timings["check_ms"] = timings.get("check_ms", 0.0) + (time.perf_counter() - t0) * 1000

    def _abstain(
        self,
        base: dict[str, Any],
        reason: str,
        timings: dict[str, float],
        started: float,
        retrieved: list[dict[str, Any]] | None = None,
        support: list[SentenceSupport] | None = None,
        raw: str = "",
    ) -> Answer:
        timings["total_ms"] = (time.perf_counter() - started) * 1000
        return Answer(answer=ABSTAIN_MESSAGE, abstained=True, reason=reason, citations=[], support=support or [],
                      timings=_round(timings), raw=raw.strip(), retrieved=retrieved or [], **base)  # fmt: skip

    def _label(self, grounded: bool, mode: AnswerMode) -> dict[str, Any]:
        from rag.generation import watermark_label

        return {
            "ai_generated": True,
            "generator": self.generator.model_id,
            "watermark": watermark_label(self.watermark) if self.generator.watermarked else None,
            "grounded": grounded,
            "answer_mode": mode,
            "corpus_ledger_head": self.ledger_head() if grounded else None,
            "notice": "Machine-generated text. Do not sign or ingest it as human-written.",
        }


class _CheckerFailedError(Exception):
    pass


def _with_marker(support: SentenceSupport, *, first: bool) -> str:
    text = support.sentence.rstrip()
    end = ""
    if text and text[-1] in ".!?":
        text, end = text[:-1], text[-1]
    marked = f"{text} [{support.passage}]{end}"
    return marked if first else " " + marked


def _citation(n: int, hit: Hit) -> Citation:
    """A citation from the chunk as the gate admitted it: its metadata is the ledger's commitment."""
    meta = hit.chunk.metadata
    text = " ".join(hit.chunk.text.split())
    return Citation(
        n=n,
        doc_id=str(meta.get("doc_id", "")),
        title=str(meta.get("title", "")),
        path=str(meta.get("path", "")),
        chunk_id=hit.chunk.id,
        chunk_sha256=str(meta.get("chunk_sha256", "")),
        signer_name=str(meta.get("signer_name", "")),
        signer_keyid=str(meta.get("signer_keyid", "")),
        license=str(meta.get("license", "")),
        origin=str(meta.get("origin", "")),
        score=round(hit.dense_score if hit.dense_score is not None else hit.fused, 4),
        excerpt=text[:EXCERPT_CHARS] + ("…" if len(text) > EXCERPT_CHARS else ""),
    )


def _hit_view(n: int, hit: Hit) -> dict[str, Any]:
    return {
        "n": n,
        "chunk_id": hit.chunk.id,
        "doc_id": hit.chunk.metadata.get("doc_id"),
        "dense_score": None if hit.dense_score is None else round(hit.dense_score, 4),
        "fused": round(hit.fused, 5),
    }


def _maybe_round(value: float | None) -> float | None:
    return None if value is None else round(float(value), 4)


def _round(timings: dict[str, float]) -> dict[str, float]:
    return {k: round(v, 3) for k, v in timings.items()}
