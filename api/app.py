"""FastAPI application: thin routes (api/routes/) over `rag.answering.AnswerService` and the ingest code.

Model work runs on the generator queue's worker thread (never on the event loop); a full queue is
answered at once with 503 and `Retry-After`. Errors always carry a stable code and one sentence:
`{"error": {"code": ..., "message": ...}}` (api/errors.py), never an internal detail. A request's work
stops when its client disconnects or its deadline passes (api/state.py): 504 `deadline_exceeded`, or on
a stream already started a final error event; never unchecked text. Who may call which route is
api/auth.py (API keys with roles, rate limits, CORS); what the service does is counted in api/metrics.py.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import Depends, FastAPI
from fastapi.openapi.utils import get_openapi

from api import auth, responses
from api.errors import Redactor, install
from api.limits import RequestLimits
from api.metrics import RequestMetrics, ServiceMetrics
from api.metrics import router as metrics_router
from api.openapi_rules import document_rules, document_stream
from api.routes import answers, chat, corpus, documents, health, ledger
from api.routes.chat import conversation_query
from api.state import ServiceState
from api.web import page
from rag.answering import AnswerService
from rag.settings import Settings

__all__ = ["conversation_query", "create_app"]


def create_app(
    settings: Settings | None = None, service: AnswerService | None = None, *, anonymous: bool = True
) -> FastAPI:
    """The app. `anonymous`: whether requests without an API key are served while no key was ever made (every
    role); `rag serve` decides it from the address it binds (api/server.py). Once a key exists, all need one."""
    settings = settings or Settings()
    holder: dict[str, ServiceState] = {}
    lock = threading.Lock()

    def service_state() -> ServiceState:
        with lock:
            if "state" not in holder:
                from rag.wiring import build_answer_service

                state = ServiceState(settings, service or build_answer_service(settings))
                state.service.observers.append(metrics.observe_answer)
                holder["state"] = state
            return holder["state"]

    metrics = ServiceMetrics(service_state)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        state = await asyncio.to_thread(service_state)
        threading.Thread(target=state.warm_up, name="warm-up", daemon=True).start()
        yield
        state.queue.shutdown()

    app = FastAPI(
        title="Provenance-first RAG",
        description="Answers grounded on signed, verified sources, with citations; abstains when unsupported.",
        version="0.1.0",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.service_state = service_state
    app.state.metrics = metrics
    app.add_middleware(
        RequestLimits,
        max_body_bytes=settings.server.max_body_bytes,
        body_timeout_s=settings.server.body_timeout_s,
        max_header_bytes=settings.server.max_incomplete_event_bytes,
        max_upload_bytes=settings.server.max_upload_bytes,
    )
    auth.install(app, settings, anonymous=anonymous)  # the key check, then CORS (if listed), wrap the limits
    app.add_middleware(RequestMetrics, metrics=metrics, routes=lambda: app.routes)  # outermost: sees every refusal
    install(app, Redactor(settings))
    for module in (health, documents, page, ledger, corpus):  # each of their routes states the role it needs, if any
        app.include_router(module.router)
    app.include_router(metrics_router)
    reader = [Depends(auth.require("reader"))]
    for module in (answers, chat):  # every route here answers questions: readers and above
        app.include_router(module.router, dependencies=reader, responses=responses.errors(*responses.AUTH_ERRORS))

    def openapi() -> dict[str, Any]:
        """The schema, with the limits this server was started with."""
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
            document_rules(schema, settings)
            document_stream(schema)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app
