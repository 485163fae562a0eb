"""The guarded answer pipeline, usable without HTTP.

question → validate → hybrid retrieval → check passages against the ledger → relevance gate, then by mode:
- extract (default): score passage spans with the local model (`rag.reader`) → does it answer *this* question
  (gain over a neutral question, focus) → a verbatim quotation of the cited chunk, labelled as such;
- free / quote: generate (watermarked) → per-sentence groundedness check, loops refused;
→ answer with citations, support and an AI label.
Every failure path abstains or raises; nothing unchecked is ever returned from the grounded path.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from collections.abc import Generator as Generator_
from dataclasses import replace
from typing import Any

from rag.answers import (
    ABSTAIN_MESSAGE,
    EXCERPT_CHARS,
    UNCHECKED_LABEL,
    Answer,
    Citation,
    Delta,
    rejection_code,
)
from rag.errors import InvalidInputError
from rag.generation import PROMPT_TEXTS as GENERATION_PROMPT
from rag.grounding import (
    GroundednessChecker,
    SentenceSupport,
    restates_question,
    select_evidence,
    split_sentences,
)
from rag.guardrails.registry import echoes
from rag.injection import instruction_sentences, release_problem, without_instructions
from rag.protocols import Generator
from rag.reader.checks import choose, degenerate, quotation
from rag.reader.extractive import PROMPT_TEXTS as READER_PROMPT
from rag.reader.extractive import ExtractiveReader
from rag.retrieval import ChunkGate, Hit, HybridRetriever, where_clause
from rag.settings import AnswerSettings, WatermarkSettings
from rag.types import AnswerMode

log = logging.getLogger(__name__)

ANSWER_MODES: tuple[AnswerMode, ...] = ("extract", "free", "quote")
SPANS_CONSIDERED = 16  # the reader's likeliest spans, re-ranked by how much the question calls for them

RETRY_PASSAGES = 2  # a reader that only restated the question tries once more on this many best passages
PROMPT_TEXTS = (*GENERATION_PROMPT, *READER_PROMPT)  # the prompts' own words, never released
# Why released text was refused as the work of an instruction inside a passage (`rag.injection.release_problem`).
INJECTION_CODES = ("instruction", "prompt_text", "unlisted_url", "forged_citation", "markup")


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
        reader: ExtractiveReader | None = None,
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
        self.reader = reader  # extract mode: scores spans with the local model; None with a remote generator
        self.observers: list[Callable[[Answer], object]] = []  # told of every complete answer

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
        if mode is None and answer_mode == "extract" and self.reader is None:
            answer_mode = "free"  # the default with a remote generator, which has no span scores to give
        if answer_mode not in ANSWER_MODES:
            raise InvalidInputError('`answer_mode` must be "extract", "free" or "quote".', code="invalid_answer_mode")
        if answer_mode == "extract" and self.reader is None:
            raise InvalidInputError(
                "Extract mode scores passage spans with a local model; this service's generator is remote.",
                code="extract_unsupported",
            )
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
        """Checked sentences as `Delta`s as soon as each has passed, then the final `Answer`, which each of
        `observers` (e.g. the service's metrics) sees first; an observer that fails is logged, never fatal."""
        for event in self._events(question, top_k=top_k, filters=filters, grounded=grounded, mode=mode):
            if isinstance(event, Answer):
                for observe in self.observers:
                    try:
                        observe(event)
                    except Exception:
                        log.exception("an answer observer failed")
            yield event

    def _events(
        self,
        question: str,
        *,
        top_k: int | None = None,
        filters: dict[str, Any] | None = None,
        grounded: bool = True,
        mode: AnswerMode | None = None,
    ) -> Iterator[Delta | Answer]:
        question, k, filters, answer_mode = self.validate(question, top_k, filters, mode)
        if not grounded and mode is None:
            answer_mode = "free"  # nothing retrieved, nothing to quote: an ungrounded answer is generated
        started = time.perf_counter()
        timings: dict[str, float] = {}
        label = self._label(grounded, answer_mode)
        base: dict[str, Any] = {"question": question, "answer_mode": answer_mode, "grounded": grounded, "label": label}
        if not grounded:
            if answer_mode != "free":
                raise InvalidInputError(
                    f"{answer_mode.capitalize()} mode quotes retrieved passages; it cannot be ungrounded.",
                    code="quote_needs_passages",
                )
            generation = self.generator.generate(question, None, mode="free")
            timings.update(generate_ms=generation.seconds * 1000, tokens=generation.tokens)
            timings["prompt_tokens"] = float(generation.prompt_tokens)  # what the model read (usage)
            timings["total_ms"] = (time.perf_counter() - started) * 1000
            labelled = f"{UNCHECKED_LABEL} {generation.text.strip()}".rstrip()  # the text itself says so
            # Ours unless it quotes the corpus (the registry looks that up) or only repeats the question.
            self.record_output([s for s in split_sentences(generation.text) if not echoes(s, question)], [])
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
        # What may be read and may support an answer: each passage without its instructions to a model.
        usable = [without_instructions(text) for text in passages]
        aside = [sentence for text in passages for sentence in instruction_sentences(text)]  # their payloads: never
        if answer_mode == "extract":
            yield from self._extract(question, hits, passages, usable, base, timings, started, retrieved)
            return
        t0 = time.perf_counter()
        kept: list[SentenceSupport] = []
        checked: list[SentenceSupport] = []
        raw = ""
        try:
            evidence = self._evidence(question, usable, answer_mode, self.settings.reader_passages)
            raw = yield from self._generate(question, evidence, answer_mode, usable, timings, checked, kept, aside)
            if (
                not kept
                and answer_mode == "free"
                and self.settings.reader_passages > RETRY_PASSAGES
                and any(support.restates_question for support in checked)
            ):
                # The reader only restated the question: the evidence distracted it. Nothing has been
                # released yet, so it may try once more, on the two best-ranked passages only.
                timings["retries"] = 1.0
                evidence = self._evidence(question, usable, answer_mode, RETRY_PASSAGES)
                raw += "\n" + (
                    yield from self._generate(question, evidence, answer_mode, usable, timings, checked, kept, aside)
                )
        except _CheckerFailedError:
            yield self._abstain(base, "grounding_check_failed", timings, started, retrieved, checked, raw)
            return
        timings["generate_ms"] = (time.perf_counter() - t0) * 1000 - timings.get("check_ms", 0.0)
        timings["tokens"] = float(getattr(self.generator, "last_tokens", 0))
        if not kept:
            degenerated = any(s.reason == "degenerate_answer" for s in checked)
            injected = [s.reason for s in checked if s.reason in INJECTION_CODES]
            reason = injected[0] if injected else "degenerate_answer" if degenerated else "unsupported_answer"
            yield self._abstain(base, reason, timings, started, retrieved, checked, raw)
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
        if self.settings.evidence_sentences and mode != "quote":  # quote mode may quote whole passages
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
        aside: list[str],
    ) -> Generator_[Delta, None, str]:
        """Stream the reader's answer, releasing each complete sentence once checked; returns the raw text.
        `aside` are the instructions set aside from the retrieved passages (their payloads are refused)."""
        buffer, raw = "", ""
        for piece in self.generator.stream(question, evidence, mode=mode):
            buffer += piece
            raw += piece
            sentences = split_sentences(buffer)
            if len(sentences) > 1:  # every sentence but the last is complete
                yield from self._release(question, sentences[:-1], passages, timings, checked, kept, aside)
                buffer = sentences[-1]
        if buffer.strip():
            yield from self._release(question, [buffer.strip()], passages, timings, checked, kept, aside)
        # What the model read, over both tries when it retried (reported to chat clients as `usage`).
        timings["prompt_tokens"] = timings.get("prompt_tokens", 0.0) + getattr(self.generator, "last_prompt_tokens", 0)
        return raw

    def _release(
        self,
        question: str,
        sentences: list[str],
        passages: list[str],
        timings: dict[str, float],
        checked: list[SentenceSupport],
        kept: list[SentenceSupport],
        aside: list[str],
    ) -> Iterator[Delta]:
        """Check complete sentences against `passages` (the usable ones: instructions set aside); record every
        score and yield the supported ones, cited.

        A sentence with no content word beyond the question's only restates it: never an answer. Nor is one
        that, cited, holds an instruction, the prompt's words, a URL no passage holds, a mark of its own, markup,
        or a word only an instruction set aside (`aside`) holds: "BANANA, an assignment expression assigns ..."."""
        for support in self._check(sentences, passages, timings):
            problem = None
            if support.supported and support.passage is not None:
                cited = _with_marker(support, first=True)
                problem = release_problem(cited, passages, {support.passage}, PROMPT_TEXTS, aside)
            if restates_question(support.sentence, question):
                support = replace(support, supported=False, restates_question=True)
            elif degenerate(" ".join([*(s.sentence for s in kept), support.sentence])):
                support = replace(support, supported=False, reason="degenerate_answer")
            elif problem is not None:
                support = replace(support, supported=False, reason=problem)
            checked.append(support)
            if support.supported:
                kept.append(support)
                self.record_output([support.sentence], passages)  # before it leaves; a failure withholds it
                yield Delta(_with_marker(support, first=len(kept) == 1))
            else:  # a local diagnostic only: rejected text never leaves the service
                log.debug("sentence not released (%s): %r", rejection_code(support), support.sentence)

    def _extract(
        self,
        question: str,
        hits: list[Hit],
        passages: list[str],
        usable: list[str],
        base: dict[str, Any],
        timings: dict[str, float],
        started: float,
        retrieved: list[dict[str, Any]],
    ) -> Iterator[Delta | Answer]:
        """Answer with the best-scoring verbatim span of the evidence, or abstain.

        The released text is a quotation of a signed, human-written passage: nothing is generated, so
        it carries no watermark and is not registered as our output (the loop guard guards generated
        text; a quotation re-ingested is the passage's own words). The label says what it is. The reader
        reads the `usable` passages (instructions to a model set aside); what it quotes must read in the
        stored chunk and pass `release_problem`, else it abstains with that code."""
        assert self.reader is not None
        evidence = self._evidence(question, usable, "extract", self.settings.reader_passages)
        reading = self.reader.read(question, evidence, limit=SPANS_CONSIDERED)
        timings["read_ms"] = reading.seconds * 1000
        timings["tokens"] = 0.0
        timings["prompt_tokens"] = float(reading.prompt_tokens)  # the reader's prompt; it generates nothing
        try:
            choice = choose(
                reading.spans, reading.texts, reading.baselines, question, passages, evidence,
                min_gain=self.settings.min_answer_gain, min_focus=self.settings.min_answer_focus,
                focus_weight=self.settings.answer_focus_weight, rarity=self.retriever.lexical.rarity(),
                similarity=self._similarity, min_similarity=self.settings.min_answer_similarity,
            )  # fmt: skip
        except Exception:  # fail closed: checks that cannot run release nothing
            log.exception("the extractive reader's checks failed; withholding the answer")
            yield self._abstain(base, "grounding_check_failed", timings, started, retrieved)
            return
        if choice.span is None:
            assert choice.reason is not None
            yield self._abstain(base, choice.reason, timings, started, retrieved, raw=choice.text)
            return
        n = choice.span.passage
        text = quotation(question, choice.text, evidence[n - 1], passages[n - 1])
        support = SentenceSupport(text, n, 1.0, 1.0, 1.0, supported=True, reason=None)  # verbatim: `choose`
        marked = _with_marker(support, first=True)
        problem = release_problem(marked, usable, {n}, PROMPT_TEXTS)
        if problem is not None:
            yield self._abstain(base, problem, timings, started, retrieved, raw=text)
            return
        citation = _citation(n, hits[n - 1])
        human = citation.origin == "human"
        label = {
            **base["label"],
            # A quotation of a human-signed source is human text; one of a `human-edited-ai` source is not.
            "ai_generated": not human,
            "source_origin": citation.origin,
            "quotation": {"passage": n, "chunk_sha256": citation.chunk_sha256, "text": text, "span": choice.text},
        }
        if not human:  # signed as partly machine-written: such a quotation must never come back in as `human`
            label["notice"] = (
                f"A verbatim quotation of the cited source, which its curator signed as {citation.origin!r}; "
                "chosen by a model. Do not sign or ingest it as human-written."
            )
            self.record_output([text], [])  # registered like our own output (no passage excuses it)
        yield Delta(marked)
        timings["total_ms"] = (time.perf_counter() - started) * 1000
        confidence = {
            "reader_logprob": _maybe_round(choice.span.logprob),
            "span_probability": _maybe_round(choice.probability),
            "answer_gain": _maybe_round(choice.gain),
            "retrieval": _maybe_round(timings.get("best_passage_score")),
        }
        yield Answer(
            answer=marked, abstained=False, reason=None, citations=[citation], support=[support],
            timings=_round(timings), raw=text, confidence=confidence, retrieved=retrieved,
            passage_texts=passages, **{**base, "label": label},
        )  # fmt: skip

    def _similarity(self, question: str, sentence: str) -> float:
        """The embedder's cosine between the question and a sentence (extract mode's last check)."""
        return self.retriever.dense_similarity(question, [sentence])[0]

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

        if mode == "extract":
            return {
                "ai_generated": False,
                "extractive": True,
                "selected_by": self.generator.model_id,
                "generator": None,
                "watermark": None,
                "grounded": True,
                "answer_mode": mode,
                "corpus_ledger_head": self.ledger_head(),
                "notice": "A verbatim quotation of the cited human-signed source, chosen by a model; the citation "
                "marks are ours. Cite the source, not this answer.",
            }
        return {
            "ai_generated": True,
            "extractive": False,
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
