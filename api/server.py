"""How `rag serve` runs the app: uvicorn with limits on what slow or numerous clients can hold.

uvicorn bounds idle kept-alive connections (`timeout_keep_alive`), connections and requests in
progress (`limit_concurrency`: beyond it a plain 503 at once) and the size of a request line plus
headers (h11's `max_incomplete_event_size`), but not the time a client may take to send its headers:
a client sending a byte a minute would hold its connection forever. `GuardedH11Protocol` adds that
deadline (`server.header_timeout_s`); the body has its own (`server.body_timeout_s`, `api.limits`).
h11 is chosen over httptools for these bounds; the generator, not HTTP parsing, is what limits speed.
"""

from __future__ import annotations

import asyncio
from typing import Any

from rag.settings import Settings


def guarded_h11_protocol(header_timeout_s: float) -> type[asyncio.Protocol]:
    """uvicorn's h11 protocol, closing a connection whose request line and headers take too long."""
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class GuardedH11Protocol(H11Protocol):
        _header_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if self.conn.their_state is h11.IDLE:  # a request has started arriving, its headers are not all in
                if self._header_timer is None:
                    self._arm()
            else:
                self._disarm()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _arm(self) -> None:
            self._header_timer = self.loop.call_later(header_timeout_s, self._headers_too_slow)

        def _disarm(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _headers_too_slow(self) -> None:
            self._header_timer = None
            if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
                self.logger.warning("Closed a connection whose request headers took over %gs.", header_timeout_s)
                self.transport.close()

    return GuardedH11Protocol


def uvicorn_config(app: Any, settings: Settings, *, host: str, port: int, log_level: str = "info") -> Any:
    """The uvicorn configuration `rag serve` uses (and the live-server tests)."""
    import uvicorn

    limits = settings.server
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=log_level,
        http=guarded_h11_protocol(limits.header_timeout_s),
        ws="none",  # no WebSocket endpoints: upgrades are not served
        timeout_keep_alive=limits.timeout_keep_alive_s,
        limit_concurrency=limits.limit_concurrency,
        h11_max_incomplete_event_size=limits.max_incomplete_event_bytes,
        backlog=limits.backlog,
        timeout_graceful_shutdown=limits.graceful_shutdown_s,
        server_header=False,  # no software banner
    )


def serve(settings: Settings, *, host: str, port: int) -> None:
    """Run the API until interrupted."""
    import uvicorn

    from api.app import create_app

    uvicorn.Server(uvicorn_config(create_app(settings), settings, host=host, port=port)).run()
