"""Iterate on a helper thread, a bounded number of items ahead (ingest prepares the next batch this way)."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from typing import Any, TypeVar

T = TypeVar("T")


def in_background(items: Iterator[T], depth: int = 1) -> Iterator[T]:
    """Iterate `items` on a helper thread, at most `depth` items ahead of the consumer.

    An error in the producer is raised in the consumer; when the consumer stops early (or fails),
    the producer is told to stop and is joined before this generator returns.
    """
    channel: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(kind: str, value: Any) -> bool:
        while not stop.is_set():
            try:
                channel.put((kind, value), timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put("item", item):
                    return
            put("done", None)
        except BaseException as exc:  # handed over to the consumer, which raises it
            put("error", exc)

    thread = threading.Thread(target=produce, name="ingest-prepare", daemon=True)
    thread.start()
    try:
        while True:
            kind, value = channel.get()
            if kind == "done":
                return
            if kind == "error":
                raise value
            yield value
    finally:
        stop.set()
        thread.join()
