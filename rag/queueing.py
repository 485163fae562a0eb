"""A bounded queue in front of the CPU generator: one model call at a time, a few waiting, then 503.

Generation on 2 cores is CPU-bound; running two at once only makes both slower. Requests beyond
`capacity` (running + waiting) are refused at once with `ServiceBusyError` (HTTP 503, Retry-After)
instead of piling up until clients time out.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

from rag.errors import RagError

T = TypeVar("T")


class ServiceBusyError(RagError):
    code = "busy"
    http_status = 503

    def __init__(self, message: str, *, retry_after_s: int) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class GenerationQueue:
    def __init__(self, capacity: int, *, retry_after_s: int = 5) -> None:
        self.capacity = capacity
        self.retry_after_s = retry_after_s
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="generator")
        self._slots = threading.BoundedSemaphore(capacity)

    def submit(self, fn: Callable[[], T]) -> Future[T]:
        if not self._slots.acquire(blocking=False):
            raise ServiceBusyError(
                f"The generator is busy ({self.capacity} requests running or waiting); retry shortly.",
                retry_after_s=self.retry_after_s,
            )
        try:
            future = self._executor.submit(fn)
        except BaseException:
            self._slots.release()
            raise
        future.add_done_callback(lambda _: self._slots.release())
        return future

    def shutdown(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
