"""What every route shares: the answer service, its generator queue, readiness, and how a job runs.

A request's work is stopped when its client disconnects or its deadline (`answer.deadline_s`, from the
moment it arrived) passes: a waiting job is dropped, a running one is cancelled at the next token, and
its generator slot is freed when the work has really stopped.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any, TypeVar

from fastapi import Request

from api.errors import SERVER_MESSAGES, ClientDisconnectedError, DeadlineExceededError, Redactor
from api.limits import RECEIVED_AT
from rag.answering import Answer, AnswerService
from rag.errors import RagError
from rag.queueing import GenerationQueue, JobControl
from rag.settings import Settings

if TYPE_CHECKING:
    from ingest.decisions import ContentCheck
    from ingest.pipeline import Ingestor

log = logging.getLogger(__name__)
T = TypeVar("T")


class ServiceState:
    """The service behind the routes, built once per app (lazily: tests may hand one in)."""

    def __init__(self, settings: Settings, service: AnswerService) -> None:
        self.settings = settings
        self.service = service
        self.queue = GenerationQueue(settings.answer.queue_size, retry_after_s=settings.answer.retry_after_s)
        self.ready = threading.Event()
        self.warm_error: str | None = None  # a stable code; the exception itself goes to the log only
        self.redact = Redactor(settings)
        self._checks: list[ContentCheck] | None = None
        self._lock = threading.Lock()

    @property
    def model_id(self) -> str:
        """The generator's name as clients see it (no upstream address, no path)."""
        return self.redact(self.service.generator.model_id)

    def ingestor(self) -> Ingestor:
        """The pipeline `rag ingest` runs, writing into the store this service answers from, with the same
        content checks (built once; the synthetic-text score reuses the generator's model). The trust files
        are read afresh for each upload, as each `rag ingest` reads them."""
        from rag.wiring import build_ingestor, content_checks

        with self._lock:
            if self._checks is None:
                self._checks = content_checks(self.settings, self.service.generator)
        retriever = self.service.retriever
        return build_ingestor(self.settings, retriever.embedder, store=retriever.store, checks=self._checks)

    def warm_up(self) -> None:
        try:
            self.service.retriever.warm_up()
            self.service.generator.warm_up()
            self.ready.set()
        except Exception as exc:  # reported by /readyz as a code
            log.exception("warm-up failed")
            self.warm_error = exc.code if isinstance(exc, RagError) else "warm_up_failed"


def current(request: Request) -> ServiceState:
    """The app's service state (built on first use)."""
    state: ServiceState = request.app.state.service_state()
    return state


def settings_of(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def control_for(request: Request, settings: Settings) -> JobControl:
    """A job control whose deadline runs from the moment the request arrived."""
    received = request.scope.get(RECEIVED_AT, time.monotonic())
    return JobControl(deadline=received + settings.answer.deadline_s)


async def run_job(request: Request, state: ServiceState, job: Callable[[], Answer]) -> Answer:
    """Run `job` on the generator queue; stop it if the client leaves or the deadline passes first."""
    control = control_for(request, state.settings)
    future = state.queue.submit(job, control)
    result = asyncio.wrap_future(future)
    gone: asyncio.Future[None] = asyncio.ensure_future(_disconnected(request))
    waiting: set[asyncio.Future[Any]] = {result, gone}
    try:
        done, _ = await asyncio.wait(waiting, timeout=control.remaining(), return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
        if not result.done():
            stop(control, future)
            result.cancel()  # nobody waits for it any more (and a late exception is not reported twice)
    if result in done:
        return result.result()
    if gone in done:
        raise ClientDisconnectedError("The client disconnected before its answer was ready.")
    raise DeadlineExceededError(SERVER_MESSAGES["deadline_exceeded"])


async def run_write(state: ServiceState, job: Callable[[], T]) -> T:
    """Run a write (an upload, a removal) on the generator queue, so it takes its turn with the models on 2 cores
    (503 `busy` when full). It is not cancelled when the client leaves or a deadline passes: the ingest lock and
    the pipeline's ordering make it atomic on disk, and stopping it half-way would only waste the work."""
    return await asyncio.wrap_future(state.queue.submit(job))


def stop(control: JobControl, future: Future[Any]) -> None:
    control.cancel.set()  # a running job stops at its next token
    future.cancel()  # a waiting one is dropped, and its slot freed at once


async def _disconnected(request: Request) -> None:
    """Returns when the client has gone (the body has been read: only a disconnect can arrive)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


def public_answer(data: dict[str, Any], state: ServiceState) -> dict[str, Any]:
    """An answer as it may leave: the label names the generator without its upstream address."""
    label = data.get("label")
    if isinstance(label, dict) and isinstance(label.get("generator"), str):
        data["label"] = {**label, "generator": state.redact(label["generator"])}
    return data
