"""A bounded queue in front of the CPU generator: one model call at a time, a few waiting, then 503.

Generation on 2 cores is CPU-bound; running two at once only makes both slower. Requests beyond
`capacity` (running + waiting) are refused at once with `ServiceBusyError` (HTTP 503, Retry-After)
instead of piling up until clients time out.

A slot is held until the job's work has really stopped, so a job must be stoppable: each carries a
`JobControl` whose `cancel` event the requester sets when its client leaves or its deadline passes. A
job still waiting is dropped; a running one sees the event through `current_job()` (the local
generator checks it at every token and the remote one bounds its HTTP timeout by the deadline).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TypeVar

from rag.errors import RagError

T = TypeVar("T")


class ServiceBusyError(RagError):
    code = "busy"
    http_status = 503

    def __init__(self, message: str, *, retry_after_s: int) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class JobCancelledError(RagError):
    """The requester cancelled the job (its client left or its deadline passed); nothing was released."""

    code = "cancelled"
    http_status = 503


@dataclass(frozen=True)
class JobControl:
    """How a requester stops its job: set `cancel`; `deadline` (time.monotonic()) bounds blocking calls."""

    cancel: threading.Event = field(default_factory=threading.Event)
    deadline: float | None = None

    def remaining(self) -> float | None:
        """Seconds left before the deadline (never below 0), or None without one."""
        return None if self.deadline is None else max(0.0, self.deadline - time.monotonic())

    def cancelled(self) -> bool:
        return self.cancel.is_set() or (self.deadline is not None and time.monotonic() >= self.deadline)

    def check(self) -> None:
        if self.cancelled():
            raise JobCancelledError("The request was cancelled before its answer was complete.")


_current_job: ContextVar[JobControl | None] = ContextVar("current_job", default=None)


def current_job() -> JobControl | None:
    """The control of the queued job running on this thread, if any."""
    return _current_job.get()


class GenerationQueue:
    def __init__(self, capacity: int, *, retry_after_s: int = 5) -> None:
        self.capacity = capacity
        self.retry_after_s = retry_after_s
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="generator")
        self._slots = threading.BoundedSemaphore(capacity)
        self._held = 0  # slots taken: jobs running or waiting (the metrics' queue depth)
        self._count = threading.Lock()

    @property
    def depth(self) -> int:
        """Jobs running or waiting now."""
        return self._held

    def _release(self) -> None:
        with self._count:
            self._held -= 1
        self._slots.release()

    def submit(self, fn: Callable[[], T], control: JobControl | None = None) -> Future[T]:
        """Queue `fn`; its slot is freed when it ends, or at once when it is cancelled while still waiting."""
        if not self._slots.acquire(blocking=False):
            raise ServiceBusyError(
                f"The generator is busy ({self.capacity} requests running or waiting); retry shortly.",
                retry_after_s=self.retry_after_s,
            )
        with self._count:
            self._held += 1
        try:
            future = self._executor.submit(_run, fn, control)
        except BaseException:
            self._release()
            raise
        future.add_done_callback(lambda _: self._release())
        return future

    def shutdown(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


def _run(fn: Callable[[], T], control: JobControl | None) -> T:
    if control is not None:
        control.check()  # its client left or its time ran out while it waited
    token = _current_job.set(control)
    try:
        return fn()
    finally:
        _current_job.reset(token)
