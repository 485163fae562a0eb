"""The one place that picks implementations from settings. Heavy backends import lazily."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING

from rag.embedder_choice import runtime_embedder
from rag.embedders import MINILM_ID
from rag.protocols import Embedder, Generator, VectorStore
from rag.retrieval import HybridRetriever, LexicalIndex
from rag.settings import Settings
from rag.stores import ChromaStore

if TYPE_CHECKING:
    from ingest.commitments import LedgerGate
    from ingest.decisions import ContentCheck
    from ingest.pipeline import Ingestor
    from ingest.trust import TrustStore
    from rag.answering import AnswerService
    from rag.grounding import GroundednessChecker
    from rag.guardrails.registry import OutputRegistry, Quotable


def embedder_runtime(settings: Settings, *, serving: bool = False) -> str:
    """The runtime that embeds here: the one set explicitly, or this machine's measured choice for the shape
    (measured on first use, then read from the model cache; `rag.embedder_choice`)."""
    cfg = settings.embedder
    if cfg.backend != "auto":
        precision = cfg.quantize or "int8"
        return f"{cfg.backend}-{'f32' if precision == 'none' else precision}"
    from rag.embedder_choice import machine_choice
    from rag.embedders import default_minilm_path

    source = cfg.model_path or default_minilm_path()
    choice = machine_choice(settings.model_cache_dir, source, batch_size=cfg.batch_size, threads=cfg.threads)
    return choice.runtime("query" if serving else "ingest")


def build_embedder(settings: Settings, *, serving: bool = False) -> Embedder:
    """`serving`: for short requests (queries, answer checks) rather than batches of passages."""
    cfg = settings.embedder
    return runtime_embedder(
        embedder_runtime(settings, serving=serving),
        cfg.model_path,
        cache_root=settings.model_cache_dir,
        batch_size=cfg.batch_size,
        threads=cfg.threads,
        serving=serving,
    )


def build_store(settings: Settings, collection: str | None = None, *, runtime: str | None = None) -> ChromaStore:
    """The collection, checked to hold vectors of this model (every agreeing runtime of MiniLM is one model);
    `runtime` is recorded when this call creates it."""
    return ChromaStore.open(
        path=settings.chroma_path,
        url=settings.store.url,
        collection=collection or settings.store.collection,
        embedder=MINILM_ID,
        runtime=runtime,
    )


def build_ingestor(
    settings: Settings,
    embedder: Embedder | None = None,
    trust: TrustStore | None = None,
    *,
    store: VectorStore | None = None,
    checks: Sequence[ContentCheck] | None = None,
) -> Ingestor:
    """The ingestor, with the BM25 index rebuilt whenever the stored chunks change. The serving process passes
    its own store, embedder and checks (uploads over HTTP); `rag ingest` opens its own."""
    from ingest.ledger import Ledger
    from ingest.pipeline import Ingestor

    embedder = embedder or build_embedder(settings)
    store = store or build_store(settings, runtime=getattr(embedder, "runtime", None))
    lexical = LexicalIndex(settings.lexical_path)
    ledger = Ledger(settings.ledger_path)
    return Ingestor(
        settings,
        store,
        embedder,
        trust=trust,
        checks=content_checks(settings) if checks is None else checks,
        on_change=lambda: lexical.rebuild(store, ledger.read_head()),
    )


def content_checks(settings: Settings, generator: Generator | None = None) -> list[ContentCheck]:
    """The loop guard: answers this service released (the registry, cheap, first), then our own generators'
    watermark, detected with each local model's tokenizer; then the synthetic-text score (with `generator`'s
    model when it is the local model that scores, so a serving process holds one copy)."""
    checks: list[ContentCheck] = []
    registry = build_output_registry(settings)
    if registry is not None:
        from ingest.registry_guard import own_output_check

        checks.append(own_output_check(settings, registry))  # checks the registry's pin before each ingest
    if not settings.watermark.detect:
        return [*checks, *synthetic_text_checks(settings, generator)]
    from rag.models import MODELS
    from rag.watermark import WatermarkCheck

    checks.append(WatermarkCheck(settings.watermark, settings.model_cache_dir, tuple(MODELS)))
    return [*checks, *synthetic_text_checks(settings, generator)]


def synthetic_text_checks(settings: Settings, generator: Generator | None = None) -> list[ContentCheck]:
    """The zero-shot synthetic-text score (Fast-DetectGPT with a local model), last: it costs the most. It loads
    its model on the first document scored, reusing `generator`'s copy when that is the same local model."""
    cfg = settings.detector
    if cfg.policy == "off":
        return []
    from ingest.admit import AdmittedDigests
    from rag.guardrails.detector import FastDetectScorer, SyntheticTextCheck, load_scoring_model

    def scorer() -> FastDetectScorer:
        return FastDetectScorer(load_scoring_model(cfg, settings.model_cache_dir, generator), cfg)

    return [SyntheticTextCheck(cfg, scorer, AdmittedDigests(settings.ledger_path))]


def build_output_registry(settings: Settings, quotable: Quotable | None = None) -> OutputRegistry | None:
    """The registry of released output in the data dir, shared by the serving process and ingest; `quotable`
    finds the corpus passages an answer given without passages may quote (those are not registered)."""
    if not settings.registry.enabled:
        return None
    from rag.guardrails.registry import OutputRegistry

    cfg = settings.registry
    return OutputRegistry(
        settings.output_registry_path,
        threshold=cfg.threshold,
        word_max_changed=cfg.word_max_changed,
        word_min_words=cfg.word_min_words,
        min_words=cfg.min_words,
        quotable=quotable,
    )


def build_retriever(settings: Settings, embedder: Embedder | None = None) -> HybridRetriever:
    """Hybrid retriever over the store; the saved BM25 index is reused unless the ledger moved past it."""
    from ingest.ledger import Ledger

    store = build_store(settings)
    lexical = LexicalIndex(settings.lexical_path)
    lexical.follow(store, Ledger(settings.ledger_path).head())
    return HybridRetriever(store, embedder or build_embedder(settings, serving=True), lexical)


def build_generator(settings: Settings, name: str | None = None) -> Generator:
    from rag.generation import LocalGenerator, OpenAICompatibleGenerator

    if settings.generator.backend == "openai" and name is None:
        return OpenAICompatibleGenerator(settings.generator)
    return LocalGenerator(
        name or settings.generator.model, settings.generator, settings.watermark, settings.model_cache_dir
    )


def build_answer_service(
    settings: Settings,
    *,
    embedder: Embedder | None = None,
    generator: Generator | None = None,
    collection: str | None = None,
) -> AnswerService:
    """Retriever, generator and checker sharing one embedder, following the ledger head between requests.

    Before each grounded answer the service reads the ledger head (a small file). When it moved (an ingest,
    a removal, a revocation, in this process or another), the commitments are reloaded, the Chroma client
    is opened afresh (an embedded one never sees another process's additions otherwise) and BM25 follows,
    all under one lock and before retrieval: the answer uses exactly the new state."""
    from rag.answering import AnswerService
    from rag.reader.extractive import ExtractiveReader

    embedder = embedder or build_embedder(settings, serving=True)
    store = build_store(settings, collection)
    lexical = LexicalIndex(settings.lexical_path)
    gate = build_gate(settings)
    lock = threading.Lock()
    opened = [True]  # the store was opened just now: no need to reopen it on the first follow

    def refresh() -> None:
        with lock:
            if gate.follow():
                if not opened[0]:
                    store.reopen()
                opened[0] = False
                lexical.follow(store, gate.head or "", gate.committed_ids())

    refresh()
    from ingest.registry_guard import corpus_quotable

    # Every released sentence is fingerprinted here first, unless it quotes the corpus.
    registry = build_output_registry(settings, corpus_quotable(store, lexical, gate, refresh))
    generator = generator or build_generator(settings)
    return AnswerService(
        settings.answer,
        HybridRetriever(store, embedder, lexical),
        generator,
        build_checker(settings, embedder),
        watermark=settings.watermark,
        ledger_head=lambda: gate.head,
        gate=gate,
        refresh=refresh,
        record_output=registry.record if registry is not None else lambda released, passages: None,
        reader=ExtractiveReader(generator) if hasattr(generator, "torch_model") else None,
    )


def build_gate(settings: Settings) -> LedgerGate:
    """What the answer path may serve: the chunk commitments of the ledger head, checked with the ledger's public
    key (the serving process never needs the private one), and the signers trusted now."""
    from ingest.commitments import LedgerGate
    from ingest.ledger import Ledger
    from ingest.ledger_head import heads_path

    return LedgerGate(
        Ledger(settings.ledger_path),
        (settings.trust_path, settings.local_trust_path),
        settings.ledger_public_key,
        heads_path(settings.ledger_key_path),
    )


def build_checker(settings: Settings, embedder: Embedder | None = None) -> GroundednessChecker:
    """The production groundedness check (the answer service's, and the guardrail benchmark's)."""
    from rag.grounding import GroundednessChecker

    return GroundednessChecker(
        embedder or build_embedder(settings, serving=True), threshold=settings.answer.support_threshold
    )
