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
import ipaddress
import logging
import socket
from typing import Any

from rag.errors import InvalidInputError
from rag.settings import Settings

log = logging.getLogger(__name__)


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
        # Client addresses are the socket's: X-Forwarded-For from any local client would pick its own
        # address and step around the per-address rate limit. Behind a proxy, rate-limit there.
        proxy_headers=False,
    )


def access(settings: Settings, host: str) -> tuple[bool, str]:
    """Whether requests without an API key may be served while no key exists, and the line that says so.

    With keys made, every request needs one wherever the server listens. Without any: open on loopback (the
    two-command demo), and elsewhere only when the operator set RAG_API__ALLOW_ANONYMOUS=true; otherwise
    refuse to start (`api_keys_required`), since anyone who can reach the port could ask, upload and remove."""
    from rag.apikeys import ApiKeyStore

    keys = ApiKeyStore(settings.api_keys_path).all_keys()
    local = is_loopback(host)
    anonymous = local or settings.api.allow_anonymous
    if keys:
        active = sum(key.active for key in keys)
        return anonymous, f"API keys: required on every request but /healthz and /readyz ({active} active)."
    if local:
        return True, (
            f"API keys: none made, so {host} (loopback) is open to every local user with every role; "
            "`rag apikeys new NAME --role reader|curator|admin` makes one and closes it."
        )
    if settings.api.allow_anonymous:
        return True, (
            f"API keys: none made and RAG_API__ALLOW_ANONYMOUS=true: {host} is OPEN to anyone who can reach it, "
            "with every role (upload, remove, ledger, metrics)."
        )
    raise InvalidInputError(
        f"Not serving on {host} without API keys: anyone who could reach it could upload and remove documents. "
        "Make a key (`rag apikeys new NAME --role admin`), bind to 127.0.0.1, or set RAG_API__ALLOW_ANONYMOUS=true.",
        code="api_keys_required",
    )


def is_loopback(host: str) -> bool:
    """Whether every address `host` names is a loopback address (127.0.0.0/8, ::1)."""
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        pass
    try:
        found = {info[4][0] for info in socket.getaddrinfo(host, None)}
    except OSError:
        return False
    return bool(found) and all(ipaddress.ip_address(str(address).split("%")[0]).is_loopback for address in found)


def serve(settings: Settings, *, host: str, port: int) -> None:
    """Run the API until interrupted (after deciding, and saying, who may use it)."""
    import uvicorn

    from api.app import create_app

    anonymous, line = access(settings, host)
    log.warning(line)
    uvicorn.Server(uvicorn_config(create_app(settings, anonymous=anonymous), settings, host=host, port=port)).run()
