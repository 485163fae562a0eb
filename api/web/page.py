"""The chat page at `/`: plain HTML, CSS and JavaScript shipped inside this package, no build step.

Nothing is fetched from another host, so the page works offline. The script writes answer and document
text with `textContent` only; the Content-Security-Policy (no inline script or style, no other origin)
is the second line of defence should that ever slip. The page is public: what it asks for goes through
the API, which applies whatever access rules the server has.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import cache
from importlib.resources import files

from fastapi import APIRouter, Request
from fastapi.responses import Response
from starlette.exceptions import HTTPException

router = APIRouter(include_in_schema=False)  # a page, not part of the API contract (or its fuzzing)

CONTENT_TYPES = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
    "icon.svg": "image/svg+xml",
}
ASSETS = frozenset(CONTENT_TYPES) - {"index.html"}
CSP = "; ".join(
    [
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self'",
        "connect-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    ]
)
# Revalidated on every load (a 304 when unchanged): a page served by a newer version of the package must
# never meet a stale script.
HEADERS = {
    "Content-Security-Policy": CSP,
    "Cache-Control": "no-cache",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}


@dataclass(frozen=True)
class StaticFile:
    body: bytes
    content_type: str
    etag: str


@cache
def static_file(name: str) -> StaticFile:
    """One of the page's files, read from the installed package once."""
    body = (files("api.web") / "static" / name).read_bytes()
    etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
    return StaticFile(body, CONTENT_TYPES[name], etag)


def serve(name: str, request: Request) -> Response:
    page = static_file(name)
    headers = {**HEADERS, "ETag": page.etag}
    if page.etag in request.headers.get("if-none-match", ""):
        return Response(status_code=304, headers=headers)
    return Response(page.body, media_type=page.content_type, headers=headers)


@router.api_route("/", methods=["GET", "HEAD"])
async def index(request: Request) -> Response:
    """The chat page."""
    return serve("index.html", request)


@router.api_route("/static/{name}", methods=["GET", "HEAD"])
async def asset(name: str, request: Request) -> Response:
    """The page's script, style sheet and icon; nothing else is served from here."""
    if name not in ASSETS:
        raise HTTPException(status_code=404)
    return serve(name, request)
