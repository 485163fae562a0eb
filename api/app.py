"""FastAPI application: thin routes over `rag.answering.AnswerService`.

Model work runs on the generator queue's worker thread (never on the event loop); a full queue is
answered at once with 503 and `Retry-After`. Errors always carry a stable code and one sentence:
`{"error": {"code": ..., "message": ...}}` (api/errors.py), never an internal detail.

A request's work is stopped when its client disconnects or its deadline (`answer.deadline_s`, from the
moment it arrived) passes: a waiting job is dropped, a running one is cancelled at the next token, and
its generator slot is freed when the work has really stopped. Past the deadline the client gets 504
`deadline_exceeded`, or, on a stream already started, a final error event; never unchecked text.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Future
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, StreamingResponse

from api import responses
from api.errors import (
    SERVER_MESSAGES,
    ClientDisconnectedError,
    DeadlineExceededError,
    Redactor,
    error_body,
    install,
    public_error,
)
from api.limits import RECEIVED_AT, RequestLimits
from api.schemas import AnswerRequest, ChatCompletionRequest
from rag.answering import Answer, AnswerService, Delta
from rag.errors import InvalidInputError, NotFoundError, RagError
from rag.generation import GeneratorError
from rag.queueing import GenerationQueue, JobControl
from rag.retrieval import FILTER_FIELDS
from rag.settings import Settings

log = logging.getLogger(__name__)

ANY_ERRORS = (400, 408, 413, 431, 500)  # the limits hold on every route, and so may a failure
BODY_ERRORS = (*ANY_ERRORS, 422, 503, 504)
BUSY_HEADERS = {"Retry-After": {"description": "Seconds to wait (503 `busy` only).", "schema": {"type": "integer"}}}


class _State:
    def __init__(self, settings: Settings, service: AnswerService) -> None:
        self.settings = settings
        self.service = service
        self.queue = GenerationQueue(settings.answer.queue_size, retry_after_s=settings.answer.retry_after_s)
        self.ready = threading.Event()
        self.warm_error: str | None = None  # a stable code; the exception itself goes to the log only
        self.redact = Redactor(settings)

    @property
    def model_id(self) -> str:
        """The generator's name as clients see it (no upstream address, no path)."""
        return self.redact(self.service.generator.model_id)

    def warm_up(self) -> None:
        try:
            self.service.retriever.warm_up()
            self.service.generator.warm_up()
            self.ready.set()
        except Exception as exc:  # reported by /readyz as a code
            log.exception("warm-up failed")
            self.warm_error = exc.code if isinstance(exc, RagError) else "warm_up_failed"


def create_app(settings: Settings | None = None, service: AnswerService | None = None) -> FastAPI:
    settings = settings or Settings()
    holder: dict[str, _State] = {}
    redact = Redactor(settings)

    def state() -> _State:
        if "state" not in holder:
            from rag.wiring import build_answer_service

            holder["state"] = _State(settings, service or build_answer_service(settings))
        return holder["state"]

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        current = await asyncio.to_thread(state)
        threading.Thread(target=current.warm_up, name="warm-up", daemon=True).start()
        yield
        current.queue.shutdown()

    app = FastAPI(
        title="Provenance-first RAG",
        description="Answers grounded on signed, verified sources, with citations; abstains when unsupported.",
        version="0.1.0",
        lifespan=lifespan,
    )
    app.add_middleware(
        RequestLimits,
        max_body_bytes=settings.server.max_body_bytes,
        body_timeout_s=settings.server.body_timeout_s,
        max_header_bytes=settings.server.max_incomplete_event_bytes,
    )
    install(app, redact)

    @app.get("/healthz", response_model=responses.Health, responses=_errors(*ANY_ERRORS))
    async def healthz() -> dict[str, str]:
        """The process is up (it may still be loading models: see /readyz)."""
        return {"status": "ok"}

    @app.get(
        "/readyz",
        response_model=None,
        responses={**_errors(*ANY_ERRORS), 200: {"model": responses.Readiness}, 503: {"model": responses.Readiness}},
    )
    async def readyz() -> JSONResponse:
        """200 once the models are loaded; 503 while warming, or with an error code if loading failed."""
        current = state()
        if current.ready.is_set():
            return JSONResponse({"status": "ready", "generator": current.model_id})
        if current.warm_error is None:
            return JSONResponse({"status": "warming"}, status_code=503)
        message = SERVER_MESSAGES.get(current.warm_error, SERVER_MESSAGES["warm_up_failed"])
        return JSONResponse({"status": "failed", **error_body(current.warm_error, message)}, status_code=503)

    @app.post(
        "/v1/answer",
        response_model=None,
        responses={200: {"model": responses.AnswerResponse}, **_errors(*BODY_ERRORS)},
    )
    async def answer(body: AnswerRequest, request: Request) -> dict[str, Any]:
        """A checked, cited answer; `support` holds the released sentences, `rejected` only counts the others."""
        current = state()
        grounded = _grounded(body, settings)
        current.service.validate(body.question, body.top_k, body.filters, body.answer_mode)
        result = await _run(
            request,
            current,
            lambda: current.service.answer(
                body.question, top_k=body.top_k, filters=body.filters, grounded=grounded, mode=body.answer_mode
            ),
        )
        return _public_answer(result.as_dict(), current)

    @app.post(
        "/v1/chat/completions",
        response_model=None,
        responses={
            200: {
                "model": responses.ChatCompletion,
                "content": {"text/event-stream": {"schema": {"type": "string"}}},
                "description": "A chat completion, or with `stream: true` OpenAI's chunk events (SSE).",
            },
            **_errors(*BODY_ERRORS),
        },
    )
    async def chat(body: ChatCompletionRequest, request: Request) -> dict[str, Any] | StreamingResponse:
        """OpenAI-compatible; streamed text is released sentence by sentence, each only after it passed the check."""
        current = state()
        _check_messages(body, settings)
        grounded = _grounded(body, settings)
        question = conversation_query([(m.role, m.content or "") for m in body.messages])
        current.service.validate(question, body.top_k, body.filters, body.answer_mode)
        model = current.model_id
        kwargs: dict[str, Any] = {
            "top_k": body.top_k,
            "filters": body.filters,
            "grounded": grounded,
            "mode": body.answer_mode,
        }
        if not body.stream:
            result = await _run(request, current, lambda: current.service.answer(question, **kwargs))
            return _completion(result, model, current)
        control = _control(request, settings)
        events: asyncio.Queue[Delta | Answer | BaseException | None] = asyncio.Queue()
        loop = asyncio.get_running_loop()

        def deliver(event: Delta | Answer | BaseException | None) -> None:
            try:
                loop.call_soon_threadsafe(events.put_nowait, event)
            except RuntimeError:  # the event loop has closed (server shutdown): nobody is listening
                control.cancel.set()

        def produce() -> None:
            stream = current.service.events(question, **kwargs)
            try:
                for event in stream:
                    if control.cancel.is_set():  # the client left or the deadline passed: stop here
                        break
                    deliver(event)
            except BaseException as exc:  # delivered to the stream, which reports it
                deliver(exc)
            finally:
                getattr(stream, "close", lambda: None)()  # ends the generator's own work (and its generate thread)
                deliver(None)

        future = current.queue.submit(produce, control)  # raises ServiceBusyError before the stream starts
        return StreamingResponse(_sse(events, model, control, future, current), media_type="text/event-stream")

    @app.get("/v1/models", response_model=responses.ModelList, responses=_errors(*ANY_ERRORS))
    async def models() -> dict[str, Any]:
        """OpenAI-compatible model list: the one generator behind the service."""
        model = {"id": state().model_id, "object": "model", "created": 0, "owned_by": "provenance-first-rag"}
        return {"object": "list", "data": [model]}

    @app.get(
        "/v1/documents", response_model=None, responses={200: {"model": responses.DocumentList}, **_errors(*ANY_ERRORS)}
    )
    async def documents() -> dict[str, Any]:
        """The documents the knowledge base serves, with their provenance as the ledger records it."""
        docs = await asyncio.to_thread(_documents, settings)
        return {"documents": docs, "count": len(docs)}

    @app.get(
        "/v1/documents/{doc_id:path}",
        response_model=None,
        responses={200: {"model": responses.Document}, **_errors(*ANY_ERRORS, 404)},
    )
    async def document(doc_id: str) -> dict[str, Any]:
        """One document's provenance."""
        for doc in await asyncio.to_thread(_documents, settings):
            if doc.get("doc_id") == doc_id:
                return doc
        raise NotFoundError(f"No document with id {doc_id!r} is in the knowledge base.", code="unknown_document")

    def openapi() -> dict[str, Any]:
        """The schema, with the limits this server was started with."""
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
            _document_rules(schema, settings)
            _document_stream(schema)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app


def conversation_query(messages: list[tuple[str, str]]) -> str:
    """The retrieval query: the last user turn, with the one before it when the last is a short follow-up."""
    users = [text.strip() for role, text in messages if role == "user" and text.strip()]
    if not users:
        return ""
    last = users[-1]
    if len(users) > 1 and len(last.split()) < 5:
        return f"{users[-2]} {last}"
    return last


def _errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    documented = responses.errors(*statuses)
    if 503 in documented:
        documented[503]["headers"] = BUSY_HEADERS
    return documented


def _control(request: Request, settings: Settings) -> JobControl:
    """A job control whose deadline runs from the moment the request arrived."""
    received = request.scope.get(RECEIVED_AT, time.monotonic())
    return JobControl(deadline=received + settings.answer.deadline_s)


async def _run(request: Request, current: _State, job: Callable[[], Answer]) -> Answer:
    """Run `job` on the generator queue; stop it if the client leaves or the deadline passes first."""
    control = _control(request, current.settings)
    future = current.queue.submit(job, control)
    result = asyncio.wrap_future(future)
    gone: asyncio.Future[None] = asyncio.ensure_future(_disconnected(request))
    waiting: set[asyncio.Future[Any]] = {result, gone}
    try:
        done, _ = await asyncio.wait(waiting, timeout=control.remaining(), return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
        if not result.done():
            _stop(control, future)
            result.cancel()  # nobody waits for it any more (and a late exception is not reported twice)
    if result in done:
        return result.result()
    if gone in done:
        raise ClientDisconnectedError("The client disconnected before its answer was ready.")
    raise DeadlineExceededError(SERVER_MESSAGES["deadline_exceeded"])


def _stop(control: JobControl, future: Future[Any]) -> None:
    control.cancel.set()  # a running job stops at its next token
    future.cancel()  # a waiting one is dropped, and its slot freed at once


async def _disconnected(request: Request) -> None:
    """Returns when the client has gone (the body has been read: only a disconnect can arrive)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


def _documents(settings: Settings) -> list[dict[str, Any]]:
    from ingest.pipeline import Ingestor

    return Ingestor(settings, None, None).documents()


def _grounded(body: AnswerRequest | ChatCompletionRequest, settings: Settings) -> bool:
    """Grounding is the server's setting: a request may ask for none only where the operator allowed it."""
    if "grounded" not in body.model_fields_set:
        return True
    if not settings.answer.allow_ungrounded:
        raise InvalidInputError(
            "Grounding cannot be switched off over HTTP: every answer is checked, so send no `grounded` field.",
            code="grounding_required",
        )
    return body.grounded is not False


def _check_messages(body: ChatCompletionRequest, settings: Settings) -> None:
    limits = settings.server
    if len(body.messages) > limits.max_messages:
        raise InvalidInputError(
            f"The request has {len(body.messages)} messages; the limit is {limits.max_messages}.",
            code="too_many_messages",
        )
    for n, message in enumerate(body.messages):
        if message.content is not None and len(message.content) > limits.max_message_chars:
            raise InvalidInputError(
                f"Message {n} has {len(message.content)} characters; the limit is {limits.max_message_chars}.",
                code="message_too_long",
            )


def _document_rules(schema: dict[str, Any], settings: Settings) -> None:
    """Write what this server accepts into the request schemas (its size limits, the filter fields, the
    grounding rule), so that clients and fuzzers see the rules the service applies, not only the types."""
    models = schema.get("components", {}).get("schemas", {})
    for name in ("AnswerRequest", "ChatCompletionRequest"):
        fields = models.get(name, {}).get("properties", {})
        if "top_k" in fields:
            fields["top_k"].update(minimum=1, maximum=20)
        if "filters" in fields:
            fields["filters"]["propertyNames"] = {"enum": list(FILTER_FIELDS)}
        if "grounded" in fields and not settings.answer.allow_ungrounded:
            fields["grounded"] = {"not": {}, "description": fields["grounded"].get("description", "")}
    question = models.get("AnswerRequest", {}).get("properties", {}).get("question")
    if question is not None:
        question.update(maxLength=settings.answer.max_question_chars, pattern=r"\S")
    messages = models.get("ChatCompletionRequest", {}).get("properties", {}).get("messages")
    if messages is not None:
        messages["maxItems"] = settings.server.max_messages
        messages["contains"] = {  # the question is the last user turn: there must be one with text
            "type": "object",
            "properties": {"role": {"const": "user"}, "content": {"type": "string", "pattern": r"\S"}},
            "required": ["role", "content"],
        }
    content = models.get("ChatMessage", {}).get("properties", {}).get("content")
    if content is not None:
        for option in content.get("anyOf", [content]):
            if option.get("type") == "string":
                option["maxLength"] = settings.server.max_message_chars


def _document_stream(schema: dict[str, Any]) -> None:
    """Describe each event of a streamed chat completion (FastAPI only knows the JSON body)."""
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    chunk = responses.ChatCompletionChunk.model_json_schema(ref_template="#/components/schemas/{model}")
    components.update(chunk.pop("$defs", {}))
    components["ChatCompletionChunk"] = chunk
    ok = schema["paths"]["/v1/chat/completions"]["post"]["responses"]["200"]
    ok["content"]["text/event-stream"] = {
        "schema": responses.stream_event_schema(
            "#/components/schemas/ChatCompletionChunk", "#/components/schemas/ErrorResponse"
        )
    }


def _public_answer(data: dict[str, Any], current: _State) -> dict[str, Any]:
    """An answer as it may leave: the label names the generator without its upstream address."""
    label = data.get("label")
    if isinstance(label, dict) and isinstance(label.get("generator"), str):
        data["label"] = {**label, "generator": current.redact(label["generator"])}
    return data


def _extras(result: Answer, current: _State) -> dict[str, Any]:
    data = _public_answer(result.as_dict(), current)
    keys = ("abstained", "reason", "citations", "support", "rejected", "label", "timings", "answer_mode")
    return {k: data[k] for k in keys}


def _completion(result: Answer, model: str, current: _State) -> dict[str, Any]:
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": result.answer}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 0, "completion_tokens": int(result.timings.get("tokens", 0)), "total_tokens": 0},
        "rag": _extras(result, current),
    }


async def _sse(
    events: asyncio.Queue[Delta | Answer | BaseException | None],
    model: str,
    control: JobControl,
    future: Future[Any],
    current: _State,
) -> AsyncIterator[str]:
    """OpenAI chunk format. Text arrives here only after its sentence passed the groundedness check.

    When the client disconnects, Starlette cancels this generator: `finally` stops the work."""
    ident, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())

    def chunk(delta: dict[str, Any], finish: str | None = None, extra: dict[str, Any] | None = None) -> str:
        body: dict[str, Any] = {
            "id": ident,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        }
        if extra is not None:
            body["rag"] = extra
        return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"

    def error(exc: RagError) -> str:
        return f"data: {json.dumps(public_error(exc, current.redact)[1], ensure_ascii=False)}\n\n"

    try:
        yield chunk({"role": "assistant", "content": ""})
        released = False
        while True:
            try:
                event = await asyncio.wait_for(events.get(), control.remaining())
            except TimeoutError:
                _stop(control, future)
                yield error(DeadlineExceededError(SERVER_MESSAGES["deadline_exceeded"]))
                break
            if event is None:
                break
            if isinstance(event, Delta):
                released = True
                yield chunk({"content": event.text})
            elif isinstance(event, Answer):
                if event.abstained and not released:
                    yield chunk({"content": event.answer})
                yield chunk({}, "stop", _extras(event, current))
            else:
                if not isinstance(event, RagError):
                    log.error("streamed answer failed", exc_info=event)
                    event = GeneratorError(SERVER_MESSAGES["generator_failed"])
                elif event.http_status >= 500:
                    log.error("streamed answer failed: %s: %s", event.code, event.message)
                yield error(event)
        yield "data: [DONE]\n\n"
    finally:
        _stop(control, future)  # the client left, or the stream is over: either way no work goes on
