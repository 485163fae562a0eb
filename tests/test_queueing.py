"""The generator queue refuses at once (503 busy, Retry-After) a job whose deadline the work ahead would not let it
meet, instead of letting it wait the whole deadline for a 504 (issue 17, found by bench/load.py)."""

from __future__ import annotations

import threading
import time

import pytest

from rag.queueing import GenerationQueue, JobCancelledError, JobControl, ServiceBusyError

RUN_S = 0.3


def timed_job(queue: GenerationQueue) -> None:
    """Give the queue one finished job of RUN_S seconds to estimate from."""
    queue.submit(lambda: time.sleep(RUN_S)).result(5)


def hold(queue: GenerationQueue) -> threading.Event:
    """Occupy the generator until the returned event is set."""
    release = threading.Event()
    queue.submit(lambda: release.wait(10))
    time.sleep(0.05)  # it is running now
    return release


def test_a_job_that_could_not_finish_before_its_deadline_is_refused_at_once() -> None:
    queue = GenerationQueue(8, retry_after_s=2)
    timed_job(queue)
    release = hold(queue)
    try:
        started = time.monotonic()
        with pytest.raises(ServiceBusyError) as refused:
            queue.submit(lambda: None, JobControl(deadline=time.monotonic() + RUN_S / 3))
        assert time.monotonic() - started < 0.1  # refused, not queued
        assert refused.value.retry_after_s >= 2 and "retry in" in refused.value.message
        assert queue.depth == 1  # it took no slot
        # With time to spare, the same job is queued behind the running one.
        later = queue.submit(lambda: "ran", JobControl(deadline=time.monotonic() + 30))
    finally:
        release.set()
    assert later.result(5) == "ran"
    queue.shutdown()


def test_the_work_ahead_counts_every_waiting_job() -> None:
    queue = GenerationQueue(8)
    timed_job(queue)
    release = hold(queue)
    try:
        waiting = [queue.submit(lambda: None, JobControl(deadline=time.monotonic() + 30)) for _ in range(3)]
        assert queue.work_ahead() >= 3 * RUN_S * 0.9  # three waiting, and the running one's rest
        with pytest.raises(ServiceBusyError):  # room for one more job's time, not for the four ahead of it
            queue.submit(lambda: None, JobControl(deadline=time.monotonic() + 2.5 * RUN_S))
    finally:
        release.set()
    for future in waiting:
        future.result(5)
    queue.shutdown()


def test_an_idle_generator_takes_a_job_whatever_the_estimate() -> None:
    """Otherwise one slow answer would make every later one refused for ever (no job would run to correct it)."""
    queue = GenerationQueue(8)
    timed_job(queue)
    assert queue.submit(lambda: "ran", JobControl(deadline=time.monotonic() + RUN_S / 10)).result(5) == "ran"
    queue.shutdown()


def test_jobs_without_a_deadline_and_a_queue_with_no_history_are_only_bounded_by_slots() -> None:
    queue = GenerationQueue(2)
    release = hold(queue)  # no finished job yet: nothing to estimate from
    try:
        queued = queue.submit(lambda: "ran", JobControl(deadline=time.monotonic() + 0.01))
        with pytest.raises(ServiceBusyError, match="2 requests running or waiting"):
            queue.submit(lambda: None)
        time.sleep(0.05)
    finally:
        release.set()
    with pytest.raises(JobCancelledError):  # its deadline passed while it waited: dropped, as before
        queued.result(5)
    queue.shutdown()


def test_a_job_cancelled_part_way_counts_only_as_a_lower_bound() -> None:
    """A job cut short needed at least the time it ran: a long one raises the estimate, a short one is left out."""
    queue = GenerationQueue(2)

    def cancelled_after(seconds: float) -> None:
        control = JobControl()

        def job() -> None:
            time.sleep(seconds)
            control.cancel.set()
            control.check()

        with pytest.raises(JobCancelledError):
            queue.submit(job, control).result(5)

    timed_job(queue)
    cancelled_after(0.01)  # a client that left at once: says nothing about how long answers take
    each = queue.job_seconds()
    assert each is not None and RUN_S * 0.9 < each < RUN_S * 1.5
    cancelled_after(3 * RUN_S)  # cut by its deadline: answers take at least this long now
    each = queue.job_seconds()
    assert each is not None and each > RUN_S * 2.5
    queue.shutdown()


def test_quick_jobs_among_slow_ones_do_not_lower_the_reckoning() -> None:
    """Abstentions decided before generation take milliseconds; counting the queue at their mean let in answers
    that then missed their deadline (bench/load.py): a job is reckoned at the longest recent run time."""
    queue = GenerationQueue(8)
    timed_job(queue)
    for _ in range(5):
        queue.submit(lambda: None).result(5)
    each = queue.job_seconds()
    assert each is not None and each >= RUN_S * 0.9
    queue.shutdown()
