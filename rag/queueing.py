"""A bounded queue in front of the CPU generator: one model call at a time, a few waiting, then 503.

Generation on 2 cores is CPU-bound; running two at once only makes both slower. Requests beyond
`capacity` (running + waiting) are refused at once with `ServiceBusyError` (HTTP 503, Retry-After)
instead of piling up until clients time out.

A slot is held until the job's work has really stopped, so a job must be stoppable: each carries a
`JobControl` whose `cancel` event the requester sets when its client leaves or its deadline passes. A
job still waiting is dropped; a running one sees the event through `current_job()` (the local
generator checks it at every token and the remote one bounds its HTTP timeout by the deadline).

A free slot is not enough to be admitted: a job with a deadline is also refused at once (503, Retry-After)
when the work already ahead of it would not let it finish in time, counting each job ahead, and the job itself,
at the longest of the last 16 run times (answers and quick abstentions mix: a mean let in jobs that then missed
their deadline).
On a slow or shared CPU an answer can take tens of seconds; without this, 16 clients filled the 8 slots and
most of them waited the whole deadline for a 504 (bench/load.py), and a job started just before its deadline
spent the generator's time on an answer nobody would receive.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
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
    def __init__(self, capacity: int, *, retry_after_s: int = 5, history: int = 16) -> None:
        self.capacity = capacity
        self.retry_after_s = retry_after_s
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="generator")
        self._slots = threading.BoundedSemaphore(capacity)
        self._held = 0  # slots taken: jobs running or waiting (the metrics' queue depth)
        self._count = threading.Lock()
        self._run_times: deque[float] = deque(maxlen=history)  # seconds each of the last jobs ran to its end
        self._running_since: float | None = None

    @property
    def depth(self) -> int:
        """Jobs running or waiting now."""
        return self._held

    def job_seconds(self) -> float | None:
        """What a job is reckoned to take: the longest of the last run times (None before any has finished)."""
        with self._count:
            return max(self._run_times) if self._run_times else None

    def work_ahead(self) -> float:
        """Reckoned seconds before a job submitted now would start: what the running job has left, and each
        waiting job at `job_seconds()`."""
        with self._count:
            if not self._held or not self._run_times:
                return 0.0
            each = max(self._run_times)
            since = self._running_since
            running_left = each if since is None else max(0.0, each - (time.monotonic() - since))
            return running_left + (self._held - 1) * each

    def _release(self) -> None:
        with self._count:
            self._held -= 1
        self._slots.release()

    def submit(self, fn: Callable[[], T], control: JobControl | None = None) -> Future[T]:
        """Queue `fn`; its slot is freed when it ends, or at once when it is cancelled while still waiting.

        ServiceBusyError when every slot is taken, or when `control` has a deadline the work ahead would not
        let the job meet (only while other jobs are queued: an idle generator always takes the job)."""
        self._refuse_if_too_late(control)
        if not self._slots.acquire(blocking=False):
            raise ServiceBusyError(
                f"The generator is busy ({self.capacity} requests running or waiting); retry shortly.",
                retry_after_s=self.retry_after_s,
            )
        with self._count:
            self._held += 1
        try:
            future = self._executor.submit(self._run, fn, control)
        except BaseException:
            self._release()
            raise
        future.add_done_callback(lambda _: self._release())
        return future

    def _refuse_if_too_late(self, control: JobControl | None) -> None:
        left = control.remaining() if control is not None else None
        each = self.job_seconds()
        if left is None or each is None:
            return
        finish = self.work_ahead() + each
        if self._held and finish > left:
            # Retried after this long (and nothing else queued meanwhile), it would finish within its deadline.
            wait = max(self.retry_after_s, math.ceil(finish - left))
            raise ServiceBusyError(
                f"The generator is busy: the answers queued ahead may take {finish - each:.0f} s, and this one "
                f"{each:.0f} s more than this request has left; retry in {wait} s.",
                retry_after_s=wait,
            )

    def _run(self, fn: Callable[[], T], control: JobControl | None) -> T:
        if control is not None:
            control.check()  # its client left or its time ran out while it waited
        token = _current_job.set(control)
        started = time.monotonic()
        with self._count:
            self._running_since = started
        cut_short = True
        try:
            result = fn()
            cut_short = False
            return result
        except JobCancelledError:
            raise
        except Exception:
            cut_short = False  # a failure took its time too
            raise
        finally:
            _current_job.reset(token)
            ran = time.monotonic() - started
            cut_short = cut_short or (control is not None and control.cancel.is_set())
            with self._count:
                self._running_since = None
                # A job cancelled part-way (its client left, its deadline passed) needed at least the time it ran:
                # that says something only when it is longer than the others (on an overloaded host deadlines cut
                # the slowest jobs, and leaving them out would keep the reckoning too low).
                if not cut_short or not self._run_times or ran > max(self._run_times):
                    self._run_times.append(ran)

    def shutdown(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
