"""Every error leaves as `{"error": {"code": ..., "message": ...}}`, and none carries an internal detail.

A server-side failure (5xx) gets a fixed sentence per code, whatever the exception said: the exception
text, an upstream generator's address or a file path stays in the server log. Messages of client errors
(4xx) describe the request, and still pass through `Redactor` in case one names a local path or URL.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from rag.errors import RagError
from rag.queueing import ServiceBusyError
from rag.settings import Settings

log = logging.getLogger(__name__)


class DeadlineExceededError(RagError):
    code = "deadline_exceeded"
    http_status = 504


class ClientDisconnectedError(RagError):
    """The client left before its answer was ready; the status is only ever seen in the access log."""

    code = "client_disconnected"
    http_status = 499


# What a client is told when the server fails. Codes are stable; the sentences are ours, never the exception's.
SERVER_MESSAGES = {
    "busy": "The generator is busy; retry shortly.",
    "generator_failed": "The answer could not be generated; retry later.",
    "backend_unavailable": "A model or store the service needs is unavailable; retry later.",
    "cancelled": "The request was cancelled before its answer was complete.",
    "deadline_exceeded": "The answer was not ready within the request's deadline; nothing unchecked was sent.",
    "ledger_corrupt": "The knowledge base's ledger failed its integrity check; the operator has to repair it.",
    "trust_store_invalid": "The trust store failed its checks; the operator has to repair it.",
    "internal_error": "The service failed on this request; the details are in the server log.",
    "warm_up_failed": "The models could not be loaded; the details are in the server log.",
    "apikeys_invalid": "The API key file failed its checks; the operator has to repair it.",
}
HTTP_CODES = {
    400: "bad_request",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    408: "request_timeout",
    413: "request_too_large",
    415: "unsupported_media_type",
}


class Redactor:
    """Replaces the server's own locations (generator URL, data and model paths, home) in outgoing text."""

    def __init__(self, settings: Settings) -> None:
        secrets: dict[str, str] = {}
        if settings.generator.base_url:
            url = settings.generator.base_url.rstrip("/")
            secrets[url] = "[generator server]"
            secrets[url.split("://", 1)[-1]] = "[generator server]"
        paths: list[Path | None] = [
            settings.data_dir,
            settings.trust_path,
            settings.ledger_key_path,
            settings.ledger_public_key,
            settings.model_cache_dir,
            settings.embedder.model_path,
            Path.cwd(),
            Path.home(),
        ]
        for path in paths:
            if path is None:
                continue
            # Absolute forms only: a relative default such as `.rag` would also match a client's own words.
            for form in {str(path), str(path.expanduser().resolve())}:
                if Path(form).is_absolute() and len(form) > 1:
                    secrets.setdefault(form, "[server path]")
        self._secrets = sorted(secrets.items(), key=lambda item: -len(item[0]))  # longest first

    def __call__(self, text: str) -> str:
        for secret, placeholder in self._secrets:
            text = text.replace(secret, placeholder)
        return text


def error_body(code: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message}}


def public_error(exc: RagError, redact: Redactor) -> tuple[int, dict[str, Any]]:
    """The status and body a client may see for a domain error."""
    if exc.http_status >= 500:
        return exc.http_status, error_body(exc.code, SERVER_MESSAGES.get(exc.code, SERVER_MESSAGES["internal_error"]))
    return exc.http_status, error_body(exc.code, redact(exc.message))


def install(app: FastAPI, redact: Redactor) -> None:
    """Register the handlers that give every error the one shape."""

    @app.exception_handler(RagError)
    async def _rag_error(_: Request, exc: RagError) -> JSONResponse:
        if exc.http_status >= 500 and not isinstance(exc, ServiceBusyError | DeadlineExceededError):
            log.error("request failed: %s: %s", exc.code, exc.message)
        headers = dict(getattr(exc, "headers", None) or {})  # e.g. WWW-Authenticate on a 401
        retry_after = getattr(exc, "retry_after_s", None)
        if isinstance(retry_after, int):  # busy (503), rate_limited (429)
            headers["Retry-After"] = str(retry_after)
        status, body = public_error(exc, redact)
        return JSONResponse(body, status_code=status, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        if any(e.get("type") == "json_invalid" for e in errors):
            return JSONResponse(error_body("invalid_json", "The request body is not valid JSON."), status_code=400)
        details = [{"field": _field(e), "msg": str(e.get("msg", "invalid value"))} for e in errors]
        unknown = [d["field"] for d, e in zip(details, errors, strict=True) if e.get("type") == "extra_forbidden"]
        if unknown:
            message = f"Unknown request field `{unknown[0]}`: this endpoint accepts only the fields it documents."
            body = error_body("unknown_field", redact(message))
        else:
            first = details[0] if details else {"field": "body", "msg": "invalid value"}
            body = error_body("invalid_request", redact(f"Invalid request field `{first['field']}`: {first['msg']}."))
        body["error"]["details"] = [{k: redact(v) for k, v in d.items()} for d in details]
        return JSONResponse(body, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = HTTP_CODES.get(exc.status_code, "internal_error" if exc.status_code >= 500 else "bad_request")
        if exc.status_code == 404:
            message = "No such endpoint; see /docs for the API."
        elif exc.status_code == 405:
            message = "This endpoint does not accept that method; see /docs for the API."
        elif exc.status_code >= 500:
            message = SERVER_MESSAGES["internal_error"]
        else:
            message = "The request could not be read."  # e.g. a body that is not JSON where JSON is required
        return JSONResponse(error_body(code, message), status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(Exception)
    async def _crash(_: Request, exc: Exception) -> JSONResponse:
        log.error("unhandled error", exc_info=exc)
        return JSONResponse(error_body("internal_error", SERVER_MESSAGES["internal_error"]), status_code=500)


def _field(error: Any) -> str:
    return ".".join(str(part) for part in error.get("loc", ()) if part != "body") or "body"
