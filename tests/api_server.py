"""A real uvicorn server on loopback, configured as `rag serve` configures it, for tests of the HTTP layer."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI

from api.app import create_app
from api.server import uvicorn_config
from ingest.pipeline import Ingestor
from rag.queueing import JobCancelledError, current_job
from rag.settings import Settings
from rag.types import AnswerMode
from tests.fakes import FakeEmbedder, FakeGenerator, InMemoryStore
from tests.test_answering import TRUE_SENTENCE, make_service


class StallingGenerator(FakeGenerator):
    """Streams its text and, after `stall_after` words, waits for its job to be cancelled (30 s at most); like
    the local generator, a cancelled stream raises JobCancelledError. Records what happened to it."""

    def __init__(self, text: str = TRUE_SENTENCE, *, stall_after: int | None = None) -> None:
        super().__init__(text)
        self.stall_after = stall_after
        self.started = threading.Event()
        self.cancelled = threading.Event()

    def stream(
        self,
        question: str,
        passages: Sequence[str] | None,
        *,
        mode: AnswerMode = "free",
        max_new_tokens: int | None = None,
    ) -> Iterator[str]:
        job = current_job()
        self.started.set()
        for n, word in enumerate(super().stream(question, passages, mode=mode)):
            stalls = self.stall_after is not None and n >= self.stall_after and job is not None
            if stalls and job is not None and job.cancel.wait(30):
                self.cancelled.set()
                raise JobCancelledError("cancelled")
            yield word


def serving_app(settings: Settings, corpus: Path, generator: FakeGenerator) -> FastAPI:
    settings.answer.relevance_threshold = 0.05  # the hashing fake embedder gives low cosines
    store = InMemoryStore()
    Ingestor(settings, store, FakeEmbedder()).ingest([corpus])
    return create_app(settings, make_service(settings, store, generator))


@contextmanager
def live_server(app: FastAPI, settings: Settings) -> Iterator[str]:
    """Serve `app` on 127.0.0.1 (an ephemeral port) in a thread; yields the base URL."""
    import uvicorn

    config = uvicorn_config(app, settings, host="127.0.0.1", port=0, log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the test server did not start")
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(15)


def raw_connection(base_url: str, timeout: float = 5.0) -> socket.socket:
    host, port = base_url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=timeout)


def raw_request(method: str, path: str, body: bytes = b"", headers: dict[str, Any] | None = None) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def read_until_closed(sock: socket.socket, limit: float = 10.0) -> bytes:
    """Everything the server sends until it closes the connection (or `limit` seconds pass)."""
    sock.settimeout(limit)
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except (TimeoutError, ConnectionResetError):
        pass
    return data
