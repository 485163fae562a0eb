"""Who may call the API: Bearer API keys with roles, per-key rate limits, and CORS.

Roles: a reader asks and lists documents; a curator also uploads and removes them; an admin also reads the
ledger and the metrics. `/healthz` and `/readyz` need no key. A route states what it needs with a dependency
(`Depends(require("curator"))`); the keys themselves are `rag.apikeys` (no HTTP in it).

Without any key made, the server is open (every role) only where `rag serve` decided it may be: bound to
loopback, or elsewhere with RAG_API__ALLOW_ANONYMOUS=true (api/server.py). Once a key exists, every request
needs one, even after all keys are revoked: revoking the last key must not open the server.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import cache
from typing import Annotated, ClassVar

from fastapi import FastAPI, Request, Security
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.types import ASGIApp, Receive, Scope, Send

from api.errors import error_body
from api.ratelimit import RateLimiter
from rag.apikeys import ApiKeyStore, Role, allows
from rag.errors import RagError
from rag.settings import Settings

BEARER = HTTPBearer(
    auto_error=False,
    scheme_name="ApiKey",
    description="`Authorization: Bearer <token>` from `rag apikeys new NAME --role reader|curator|admin`. "
    "Not needed while the server is open (no keys made, bound to loopback).",
)


class AuthenticationError(RagError):
    """No usable key: 401, with `WWW-Authenticate: Bearer` as RFC 6750 asks."""

    code = "missing_api_key"
    http_status = 401
    headers: ClassVar[dict[str, str]] = {"WWW-Authenticate": "Bearer"}


class ForbiddenError(RagError):
    code = "insufficient_role"
    http_status = 403


@dataclass(frozen=True)
class Caller:
    """Who is calling: a key's name and role, or anyone (an open server, every role)."""

    name: str | None
    role: Role

    @property
    def bucket(self) -> str:
        return f"key:{self.name}"


class Gatekeeper:
    """Decides, per request, who is calling and whether they may; one per app."""

    def __init__(self, keys: ApiKeyStore, limiter: RateLimiter, *, anonymous: bool) -> None:
        self.keys = keys
        self.limiter = limiter
        self.anonymous = anonymous  # whether requests without a key are served while no key was ever made

    def identify(self, authorization: str | None) -> Caller | None:
        """The caller a request's Authorization header names; None for anyone, on an open server."""
        if not self.keys.any_made():
            if self.anonymous:
                return None  # open: a token sent anyway is not looked at (there are none to check it against)
            raise AuthenticationError(
                "This server needs an API key (`Authorization: Bearer <token>`); an operator makes one with "
                "`rag apikeys new NAME --role reader`."
            )
        if not authorization:
            raise AuthenticationError("Send an API key: `Authorization: Bearer <token>`.")
        scheme, _, token = authorization.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise AuthenticationError("The Authorization header must be `Bearer <token>`.", code="invalid_api_key")
        key = self.keys.verify(token)
        if key is None:
            raise AuthenticationError("The API key is not valid.", code="invalid_api_key")
        if not key.active:
            raise AuthenticationError(f"The API key {key.name!r} was revoked.", code="revoked_api_key")
        return Caller(key.name, key.role)

    def admit(self, authorization: str | None, client: str, needed: Role) -> Caller | None:
        caller = self.identify(authorization)
        if caller is not None and not allows(caller.role, needed):
            raise ForbiddenError(
                f"The API key {caller.name!r} has the role {caller.role}; this needs {needed} or above."
            )
        self.limiter.take(caller.bucket if caller is not None else f"address:{client}")
        return caller


@cache  # one dependency per role: FastAPI runs a dependency once per request, so a route never pays twice
def require(needed: Role) -> Callable[..., Awaitable[Caller | None]]:
    """A dependency admitting callers with role `needed` or above (and within their rate)."""

    async def dependency(
        request: Request, _: Annotated[HTTPAuthorizationCredentials | None, Security(BEARER)]
    ) -> Caller | None:
        gate: Gatekeeper = request.app.state.gatekeeper
        client = request.client.host if request.client is not None else "unknown"
        caller = gate.admit(request.headers.get("authorization"), client, needed)
        request.state.caller = caller
        return caller

    dependency.__name__ = f"require_{needed}"
    return dependency


class KeyFirst:
    """A request that brings a body (POST, PUT, PATCH) without a usable key is refused (401) before its body is
    read: otherwise anyone could hold connections open sending megabytes the server reads before asking who
    they are. Roles and rate limits are still checked per route (`require`); this only asks "is there a key"."""

    BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] in self.BODY_METHODS:
            gate: Gatekeeper = scope["app"].state.gatekeeper
            authorization = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"authorization"), None)
            try:
                gate.identify(authorization)
            except AuthenticationError as exc:
                refusal = JSONResponse(
                    error_body(exc.code, exc.message), status_code=exc.http_status, headers=exc.headers
                )
                await refusal(scope, receive, send)
                return
        await self.app(scope, receive, send)


def install(app: FastAPI, settings: Settings, *, anonymous: bool) -> None:
    """Attach the gatekeeper (keys from the operator's folder, buckets from settings), the key check before a body
    is read (outside the request limits, which read it) and CORS if origins are listed (outside both: a
    preflight needs no key)."""
    cfg = settings.api
    app.state.gatekeeper = Gatekeeper(
        ApiKeyStore(settings.api_keys_path), RateLimiter(cfg.rate_per_s, cfg.rate_burst), anonymous=anonymous
    )
    app.add_middleware(KeyFirst)
    if cfg.cors_origins:
        from starlette.middleware.cors import CORSMiddleware

        app.add_middleware(
            CORSMiddleware,
            allow_origins=cfg.cors_origins,
            allow_methods=["GET", "POST", "DELETE"],
            allow_headers=["authorization", "content-type"],
            expose_headers=["retry-after"],
            max_age=600,
        )
