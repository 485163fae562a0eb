"""Token buckets, one per API key (or per client address when the server is open without keys).

A bucket holds up to `burst` tokens and refills at `rate` tokens a second; a request takes one. An empty
bucket means 429 `rate_limited`, with `Retry-After` saying when the next token arrives. Buckets live in
memory, per process (a replica behind a load balancer has its own). Open servers see one bucket per client
address, so the number of buckets is bounded: the least recently used ones are dropped first (a dropped
bucket comes back full, which only ever lets a client in sooner).
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable

from rag.errors import RagError


class RateLimitedError(RagError):
    code = "rate_limited"
    http_status = 429

    def __init__(self, message: str, *, retry_after_s: int) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class RateLimiter:
    def __init__(
        self,
        rate_per_s: float,
        burst: int,
        *,
        max_buckets: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.rate = rate_per_s
        self.burst = burst
        self.max_buckets = max_buckets
        self.clock = clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # who -> (tokens, last refill)
        self._lock = threading.Lock()

    def take(self, who: str) -> None:
        """Take one token from `who`'s bucket, or raise RateLimitedError (nothing taken)."""
        if self.rate <= 0:
            return
        with self._lock:
            now = self.clock()
            tokens, last = self._buckets.pop(who, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + (now - last) * self.rate)
            if tokens >= 1.0:
                self._keep(who, tokens - 1.0, now)
                return
            self._keep(who, tokens, now)
        wait = math.ceil((1.0 - tokens) / self.rate)
        raise RateLimitedError(
            f"Too many requests: the limit is {self.rate:g} a second (bursts of {self.burst}); retry in {wait} s.",
            retry_after_s=max(1, wait),
        )

    def _keep(self, who: str, tokens: float, now: float) -> None:
        self._buckets[who] = (tokens, now)  # re-inserted last: the most recently used
        while len(self._buckets) > self.max_buckets:
            self._buckets.popitem(last=False)
