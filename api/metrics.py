"""What the service is doing, for Prometheus: `GET /metrics` (admin role), in the text exposition format.

One registry per app (never the process-wide default), so apps made side by side (tests) do not share or
clash over counters. Counted here:
- `rag_http_requests_total{route, method, status}` and `rag_http_request_seconds{route}`: every request, the
  refused ones included (413, 401, 429...), labelled by its route template, never its raw path;
- `rag_answers_total{outcome, reason, mode}`: answered or abstained, and why;
- `rag_answer_stage_seconds{stage}`: retrieval, generation (the extractive reader's reading in extract mode),
  check and total, from each answer's own timings;
- `rag_generated_tokens_total`;
- `rag_ingest_verdicts_total{verdict, reason}`: documents uploaded over HTTP (a `rag ingest` in another
  process is not seen here; its verdicts are in the ledger);
- `rag_queue_depth` (requests running or waiting for the generator) and `rag_queue_capacity`;
- `rag_model_info{generator, embedder, answer_mode}` and `rag_corpus_info{ledger_head}`, read at scrape time.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, InfoMetricFamily
from prometheus_client.registry import Collector
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api import responses
from api.auth import require
from api.responses import ANY_ERRORS, AUTH_ERRORS

if TYPE_CHECKING:
    from api.state import ServiceState
    from ingest.decisions import IngestReport
    from rag.answers import Answer

log = logging.getLogger(__name__)

STAGES = {"retrieval": ("retrieve_ms",), "generation": ("generate_ms", "read_ms"), "check": ("check_ms",)}
SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class ServiceMetrics:
    """The app's counters and histograms, and the collector of what is read at scrape time."""

    def __init__(self, state: Callable[[], ServiceState]) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "rag_http_requests", "HTTP requests by route template, method and status.", ("route", "method", "status"),
            registry=r,
        )  # fmt: skip
        self.request_seconds = Histogram(
            "rag_http_request_seconds", "Time to the end of the response body.", ("route",), buckets=SECONDS, registry=r
        )
        self.answers = Counter(
            "rag_answers", "Answers by outcome, abstention reason and answer mode.", ("outcome", "reason", "mode"),
            registry=r,
        )  # fmt: skip
        self.stages = Histogram(
            "rag_answer_stage_seconds", "Time per answer stage.", ("stage",), buckets=SECONDS, registry=r
        )
        self.tokens = Counter("rag_generated_tokens", "Tokens generated for answers.", registry=r)
        self.ingest = Counter(
            "rag_ingest_verdicts", "Documents uploaded over HTTP, by verdict and reason code.", ("verdict", "reason"),
            registry=r,
        )  # fmt: skip
        r.register(_ScrapeTime(state))

    def observe_answer(self, answer: Answer) -> None:
        """Count one answer (called on the generator's thread as each answer is complete)."""
        outcome = "abstained" if answer.abstained else "answered"
        self.answers.labels(outcome, answer.reason or "", answer.answer_mode).inc()
        timings = answer.timings
        for stage, keys in STAGES.items():
            for key in keys:
                if key in timings:
                    self.stages.labels(stage).observe(timings[key] / 1000)
        if "total_ms" in timings:
            self.stages.labels("total").observe(timings["total_ms"] / 1000)
        tokens = timings.get("tokens", 0.0)
        if tokens > 0:
            self.tokens.inc(tokens)

    def observe_ingest(self, report: IngestReport) -> None:
        for verdict, items in (
            ("accepted", report.accepted),
            ("replaced", report.replaced),
            ("skipped_unchanged", report.unchanged),
            ("skipped_duplicate", report.duplicates),
        ):
            if items:
                self.ingest.labels(verdict, "").inc(len(items))
        for item in report.rejected:
            self.ingest.labels("rejected", str(item.get("reason") or "")).inc()
        for item in report.withdrawn:
            self.ingest.labels("withdrawn", str(item.get("reason") or "")).inc()

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class _ScrapeTime(Collector):
    """Values read when scraped: the queue, the model and the corpus version (the ledger head)."""

    def __init__(self, state: Callable[[], ServiceState]) -> None:
        self.state = state

    def collect(self) -> Iterator[Any]:
        try:
            state = self.state()
        except Exception:  # the service could not be built: its own errors say why; nothing to report here
            log.exception("metrics: the service state is unavailable")
            return
        queue = state.queue
        yield GaugeMetricFamily("rag_queue_depth", "Requests running or waiting for the generator.", value=queue.depth)
        yield GaugeMetricFamily("rag_queue_capacity", "Requests the queue holds before 503 busy.", value=queue.capacity)
        service = state.service
        model = InfoMetricFamily("rag_model", "The models behind the answers.")
        model.add_metric(
            [],
            {
                "generator": state.model_id,
                "embedder": str(getattr(service.retriever.embedder, "model_id", "unknown")),
                "answer_mode": state.settings.answer.answer_mode,
            },
        )
        yield model
        corpus = InfoMetricFamily("rag_corpus", "The corpus version the service answers from: its ledger head.")
        corpus.add_metric([], {"ledger_head": str(service.ledger_head() or "")})
        yield corpus


class RequestMetrics:
    """ASGI middleware counting every request by route template and status, refusals included."""

    def __init__(self, app: ASGIApp, *, metrics: ServiceMetrics, routes: Callable[[], list[Any]]) -> None:
        self.app = app
        self.metrics = metrics
        self.routes = routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # what a client sees if the app fails before it starts a response

        async def counted(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, counted)
        finally:
            route = self._route(scope)
            self.metrics.requests.labels(route, _method(scope["method"]), str(status)).inc()
            self.metrics.request_seconds.labels(route).observe(time.perf_counter() - started)

    def _route(self, scope: Scope) -> str:
        """The matched route's template (`/v1/documents/{doc_id}`), so raw paths never become labels."""
        route = scope.get("route")
        if route is None:  # refused before routing (413, 431...): match it here
            route = next((r for r in _flat(self.routes()) if r.matches(scope)[0] is Match.FULL), None)
        return str(getattr(route, "path", None) or "unmatched")


def _flat(routes: list[Any]) -> Iterator[Any]:
    """Every route, those of included routers too (FastAPI 0.165 keeps an included router as one entry that
    holds it: `original_router`)."""
    for route in routes:
        inner = getattr(route, "original_router", None)
        if inner is not None:
            yield from _flat(inner.routes)
        else:
            yield route


router = APIRouter()


@router.get(
    "/metrics",
    response_class=Response,
    dependencies=[Depends(require("admin"))],
    responses={
        200: {"content": {"text/plain": {"schema": {"type": "string"}}}, "description": "Prometheus text format."},
        **responses.errors(*ANY_ERRORS, *AUTH_ERRORS),
    },
)
async def metrics(request: Request) -> Response:
    """Counters and histograms in Prometheus' text format (admin role)."""
    collected: ServiceMetrics = request.app.state.metrics
    return Response(collected.exposition(), media_type=CONTENT_TYPE_LATEST)


METHODS = frozenset({"GET", "POST", "DELETE", "HEAD", "OPTIONS", "PUT", "PATCH"})


def _method(method: str) -> str:
    """A method as a label: any name is a valid HTTP method, so others are one label (bounded series)."""
    return method if method in METHODS else "other"
