"""Request limits that hold before any parsing, as ASGI middleware.

- A body larger than `server.max_body_bytes` gets 413 `request_too_large`: at once when its
  Content-Length says so (the body is never read), else as soon as the bytes received pass the limit
  (chunked uploads), so no more than the limit and one received message is ever held here.
  A document upload (`POST /v1/documents`) has its own limit, `server.max_upload_bytes`.
- A client that does not finish sending its body within `server.body_timeout_s` gets 408 `body_timeout`.
- A request line plus headers over `server.max_incomplete_event_bytes` gets 431 `headers_too_large`. h11
  refuses more only while a request is incomplete: one sent whole in a single read (up to 64 KiB) gets through
  it, so the size is checked here too.
- The moment a request arrived is stamped in its scope: its total deadline (`answer.deadline_s`) runs from there.

Each of these answers closes the connection (`Connection: close`), so an unread body is never taken
for the next request.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.errors import error_body

RECEIVED_AT = "rag.received_at"
UPLOAD = ("POST", "/v1/documents")  # the one request whose body may be larger: a document and its manifest


class _TooLargeError(Exception):
    pass


class _DisconnectedError(Exception):
    pass


class RequestLimits:
    def __init__(
        self,
        app: ASGIApp,
        *,
        max_body_bytes: int,
        body_timeout_s: float,
        max_header_bytes: int,
        max_upload_bytes: int | None = None,
    ) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.max_upload_bytes = max_upload_bytes or max_body_bytes
        self.body_timeout_s = body_timeout_s
        self.max_header_bytes = max_header_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        scope[RECEIVED_AT] = time.monotonic()
        if _header_bytes(scope) > self.max_header_bytes:
            message = f"The request line and headers are larger than the limit of {self.max_header_bytes:,} bytes."
            await _refuse(scope, receive, send, 431, "headers_too_large", message)
            return
        declared = _content_length(scope)
        if declared == -1:
            await _refuse(scope, receive, send, 400, "invalid_content_length", "The Content-Length header is invalid.")
            return
        limit = self.max_upload_bytes if (scope["method"], scope["path"].rstrip("/")) == UPLOAD else self.max_body_bytes
        if declared is not None and declared > limit:
            await _refuse(scope, receive, send, 413, "request_too_large", _too_large(limit))
            return
        try:
            body = await asyncio.wait_for(self._read(receive, limit), self.body_timeout_s)
        except _TooLargeError:
            await _refuse(scope, receive, send, 413, "request_too_large", _too_large(limit))
            return
        except TimeoutError:
            message = f"The request body did not arrive within {self.body_timeout_s:g} seconds."
            await _refuse(scope, receive, send, 408, "body_timeout", message)
            return
        except _DisconnectedError:
            return
        delivered = False

        async def replay() -> Message:
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # after the body: only http.disconnect, which routes watch for

        await self.app(scope, replay, send)

    async def _read(self, receive: Receive, limit: int) -> bytes:
        parts: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise _DisconnectedError
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise _TooLargeError
            parts.append(chunk)
            if not message.get("more_body", False):
                return b"".join(parts)


def _too_large(limit: int) -> str:
    return f"The request body is larger than the limit of {limit:,} bytes."


def _header_bytes(scope: Scope) -> int:
    line = len(scope.get("raw_path") or b"") + len(scope.get("query_string") or b"") + len(scope["method"]) + 12
    return line + sum(len(name) + len(value) + 4 for name, value in scope.get("headers", ()))


def _content_length(scope: Scope) -> int | None:
    """The declared length; -1 when it is not a plain non-negative integer."""
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            text = value.decode("latin-1").strip()
            return int(text) if text.isascii() and text.isdigit() else -1
    return None


async def _refuse(scope: Scope, receive: Receive, send: Send, status: int, code: str, message: str) -> None:
    headers: dict[str, Any] = {"Connection": "close"}
    await JSONResponse(error_body(code, message), status_code=status, headers=headers)(scope, receive, send)
