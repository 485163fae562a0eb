"""Process-wide tuning applied once at start-up, before any worker thread exists."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util

M_ARENA_MAX = -8  # glibc's mallopt parameter numbers
M_MMAP_THRESHOLD = -3


def limit_malloc_arenas(count: int = 2) -> bool:
    """Cap glibc's per-thread malloc arenas; returns False where that is not possible.

    glibc gives each thread that allocates its own heap arena (up to 8 per core). In the server the
    generation queue's worker and the streaming threads each grew one, and freed tensor memory stayed
    spread over them: two arenas measured ~140 MB less RSS. `rag serve` applies it. Ingest does not:
    measured while ingest always prepared ahead on a helper thread (now `ingest.prepare_ahead`, off by
    default), it cost 7 s and 130 MB more, the helper and torch then sharing arenas. Does nothing on
    other C libraries.
    """
    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        libc = ctypes.CDLL(name)
        return bool(libc.mallopt(M_ARENA_MAX, count))
    except (OSError, AttributeError):
        return False


def release_freed_memory() -> None:
    """Collect reference cycles now and hand freed heap pages back to the system (glibc's `malloc_trim`).

    For the moment after a big model part was replaced: Gemma's float32 token table (670 MB) stayed in a
    reference cycle after `_compact_token_table` until some later collection, so the server held 2,479 MB
    after its warm-up instead of 1,787 MB (measured)."""
    import gc

    gc.collect()
    name = ctypes.util.find_library("c")
    if name:
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(name).malloc_trim(0)


def mmap_large_allocations(threshold: int = 1 << 20) -> bool:
    """Serve every allocation of `threshold` bytes or more from its own mapping, returned to the system when
    freed; returns False where that is not possible.

    glibc raises its threshold up to 32 MB each time such a block is freed, after which blocks of up to that
    size come from the heap and stay with the process. The answer path allocates many of 1-16 MB (Gemma's
    262k-entry logits, one row per position the reader scores), so `rag serve` grew from 1,787 MB after its
    warm-up to 2,230 MB after three answers; with the threshold fixed at 1 MiB, to 1,833 MB (measured)."""
    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        return bool(ctypes.CDLL(name).mallopt(M_MMAP_THRESHOLD, threshold))
    except (OSError, AttributeError):
        return False
