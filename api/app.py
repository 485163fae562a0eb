"""FastAPI application: thin routes over `rag.answering.AnswerService`.

Model work runs on the generator queue's worker thread (never on the event loop); a full queue is
answered at once with 503 and `Retry-After`. Errors always carry a stable code and one sentence:
`{"error": {"code": ..., "message": ...}}`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse

from api.schemas import AnswerRequest, ChatCompletionRequest
from rag.answering import Answer, AnswerService, Delta
from rag.errors import InvalidInputError, NotFoundError, RagError
from rag.queueing import GenerationQueue, ServiceBusyError
from rag.settings import Settings

log = logging.getLogger(__name__)


class _State:
    def __init__(self, settings: Settings, service: AnswerService) -> None:
        self.settings = settings
        self.service = service
        self.queue = GenerationQueue(settings.answer.queue_size, retry_after_s=settings.answer.retry_after_s)
        self.ready = threading.Event()
        self.warm_error: str | None = None

    def warm_up(self) -> None:
        try:
            self.service.retriever.warm_up()
            self.service.generator.warm_up()
            self.ready.set()
        except Exception as exc:  # reported by /readyz
            log.exception("warm-up failed")
            self.warm_error = str(exc)


def create_app(settings: Settings | None = None, service: AnswerService | None = None) -> FastAPI:
    settings = settings or Settings()
    holder: dict[str, _State] = {}

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

    @app.exception_handler(RagError)
    async def _rag_error(_: Request, exc: RagError) -> JSONResponse:
        headers = {"Retry-After": str(exc.retry_after_s)} if isinstance(exc, ServiceBusyError) else None
        return JSONResponse(_error(exc.code, exc.message), status_code=exc.http_status, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        if any(e.get("type") == "json_invalid" for e in errors):
            return JSONResponse(_error("invalid_json", "The request body is not valid JSON."), status_code=400)
        first = errors[0] if errors else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or "body"
        message = f"Invalid request field `{where}`: {first.get('msg', 'invalid value')}."
        body = _error("invalid_request", message)
        details = [{"field": ".".join(map(str, e.get("loc", ()))), "msg": e.get("msg")} for e in errors]
        body["error"]["details"] = details
        return JSONResponse(body, status_code=422)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        current = state()
        if current.ready.is_set():
            return JSONResponse({"status": "ready", "generator": current.service.generator.model_id})
        status = "failed" if current.warm_error else "warming"
        return JSONResponse({"status": status, "error": current.warm_error}, status_code=503)

    @app.post("/v1/answer")
    async def answer(body: AnswerRequest) -> dict[str, Any]:
        """A checked, cited answer; `support` holds the released sentences, `rejected` only counts the others."""
        current = state()
        grounded = _grounded(body, settings)
        current.service.validate(body.question, body.top_k, body.filters, body.answer_mode)
        result = await _run(
            current,
            lambda: current.service.answer(
                body.question, top_k=body.top_k, filters=body.filters, grounded=grounded, mode=body.answer_mode
            ),
        )
        return result.as_dict()

    @app.post("/v1/chat/completions", response_model=None)
    async def chat(body: ChatCompletionRequest) -> dict[str, Any] | StreamingResponse:
        """OpenAI-compatible; streamed text is released sentence by sentence, each only after it passed the check."""
        current = state()
        grounded = _grounded(body, settings)
        question = conversation_query([(m.role, m.content or "") for m in body.messages])
        current.service.validate(question, body.top_k, body.filters, body.answer_mode)
        model = current.service.generator.model_id
        kwargs: dict[str, Any] = {
            "top_k": body.top_k,
            "filters": body.filters,
            "grounded": grounded,
            "mode": body.answer_mode,
        }
        if not body.stream:
            result = await _run(current, lambda: current.service.answer(question, **kwargs))
            return _completion(result, model)
        events: asyncio.Queue[Delta | Answer | BaseException | None] = asyncio.Queue()
        loop = asyncio.get_running_loop()

        def produce() -> None:
            try:
                for event in current.service.events(question, **kwargs):
                    loop.call_soon_threadsafe(events.put_nowait, event)
            except BaseException as exc:  # delivered to the stream, which reports it
                loop.call_soon_threadsafe(events.put_nowait, exc)
            finally:
                loop.call_soon_threadsafe(events.put_nowait, None)

        current.queue.submit(produce)  # raises ServiceBusyError before the stream starts
        return StreamingResponse(_sse(events, model), media_type="text/event-stream")

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": state().service.generator.model_id, "object": "model"}]}

    @app.get("/v1/documents")
    async def documents() -> dict[str, Any]:
        docs = await asyncio.to_thread(_documents, settings)
        return {"documents": docs, "count": len(docs)}

    @app.get("/v1/documents/{doc_id:path}")
    async def document(doc_id: str) -> dict[str, Any]:
        for doc in await asyncio.to_thread(_documents, settings):
            if doc.get("doc_id") == doc_id:
                return doc
        raise NotFoundError(f"No document with id {doc_id!r} is in the knowledge base.", code="unknown_document")

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


async def _run(current: _State, job: Callable[[], Answer]) -> Answer:
    return await asyncio.wrap_future(current.queue.submit(job))


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


def _error(code: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message}}


def _extras(result: Answer) -> dict[str, Any]:
    data = result.as_dict()
    keys = ("abstained", "reason", "citations", "support", "rejected", "label", "timings", "answer_mode")
    return {k: data[k] for k in keys}


def _completion(result: Answer, model: str) -> dict[str, Any]:
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": result.answer}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 0, "completion_tokens": int(result.timings.get("tokens", 0)), "total_tokens": 0},
        "rag": _extras(result),
    }


async def _sse(events: asyncio.Queue[Delta | Answer | BaseException | None], model: str) -> AsyncIterator[str]:
    """OpenAI chunk format. Text arrives here only after its sentence passed the groundedness check."""
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

    yield chunk({"role": "assistant", "content": ""})
    released = False
    while True:
        event = await events.get()
        if event is None:
            break
        if isinstance(event, Delta):
            released = True
            yield chunk({"content": event.text})
        elif isinstance(event, Answer):
            if event.abstained and not released:
                yield chunk({"content": event.answer})
            yield chunk({}, "stop", _extras(event))
        else:
            code = event.code if isinstance(event, RagError) else "generation_failed"
            message = event.message if isinstance(event, RagError) else "The answer could not be generated."
            yield f"data: {json.dumps(_error(code, message))}\n\n"
    yield "data: [DONE]\n\n"
