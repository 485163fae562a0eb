"""`POST /v1/chat/completions`, OpenAI-compatible, streamed or not (the format itself: api/chat/).

A chat client's own housekeeping task (a title, tags, follow-ups) is answered by rules before anything is
queued. A question's text is released sentence by sentence, each only after it passed the check, then the
sources block (RAG_CHAT__SOURCES_BLOCK) and a final chunk with `rag`; past the deadline a started stream ends
with an error event, never with unchecked text."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from api import responses
from api.chat.messages import check_request, conversation_query, text_of
from api.chat.models import model_card, served_model
from api.chat.openai_format import DONE, ChunkWriter, completion, usage
from api.chat.sources import documents_base, register, sources_block
from api.chat.tasks import ClientTask, recognise, unwrap_question
from api.errors import SERVER_MESSAGES, DeadlineExceededError, public_error
from api.responses import ANY_ERRORS, BODY_ERRORS
from api.routes.answers import grounded_for
from api.schemas import ChatCompletionRequest
from api.state import ServiceState, control_for, current, public_answer, run_job, stop
from rag.answering import Answer, Delta
from rag.errors import RagError
from rag.generation import GeneratorError
from rag.queueing import JobControl

__all__ = ["conversation_query", "router"]

log = logging.getLogger(__name__)

router = APIRouter()

UNKNOWN_MODEL = {"model": responses.ErrorResponse, "description": "The request names another model (`unknown_model`)."}
RAG_KEYS = ("abstained", "reason", "citations", "support", "rejected", "label", "timings", "answer_mode")


@dataclass(frozen=True)
class Finished:
    """An answer as it may leave (`public`), with its sources block when it has one (registered already)."""

    answer: Answer
    public: dict[str, Any]
    sources: str | None


@router.post(
    "/v1/chat/completions",
    response_model=None,
    responses={
        200: {
            "model": responses.ChatCompletion,
            "content": {"text/event-stream": {"schema": {"type": "string"}}},
            "description": "A chat completion, or with `stream: true` OpenAI's chunk events (SSE).",
        },
        **responses.errors(*BODY_ERRORS),
        404: UNKNOWN_MODEL,
    },
)
async def chat(body: ChatCompletionRequest, request: Request) -> dict[str, Any] | StreamingResponse:
    """OpenAI-compatible; streamed text is released sentence by sentence, each only after it passed the check.

    Content may be a string or text parts; system and developer messages never reach the reader. A chat client's
    own task (title, tags, follow-ups, queries) is answered by rules and never queued. A cited answer's text ends
    with a sources block (title, link, signer, licence of each cited source, and what the answer is)."""
    state = current(request)
    settings = state.settings
    model = served_model(body.model, state)
    turns = [(m.role, text_of(m.content)) for m in body.messages]
    check_request(body, settings, turns)
    grounded = grounded_for(body, settings)
    include_usage = bool(body.stream and body.stream_options and body.stream_options.include_usage)
    task = recognise(turns)
    if task is not None:  # answered by rules: never queued, and the reader never sees it
        return _task_reply(task, model, stream=body.stream, include_usage=include_usage)
    question = conversation_query([(role, unwrap_question(text) if role == "user" else text) for role, text in turns])
    state.service.validate(question, body.top_k, body.filters, body.answer_mode)
    base = documents_base(settings.chat.public_url, str(request.base_url)) if settings.chat.sources_block else None
    kwargs: dict[str, Any] = {
        "top_k": body.top_k,
        "filters": body.filters,
        "grounded": grounded,
        "mode": body.answer_mode,
    }
    if not body.stream:
        result = await run_job(request, state, lambda: state.service.answer(question, **kwargs))
        done = await asyncio.to_thread(finish, state, result, base)
        content = done.answer.answer + (done.sources or "")
        return completion(model, content, _extras(done.public), usage(done.answer.timings))
    control = control_for(request, settings)
    events: asyncio.Queue[Delta | Finished | BaseException | None] = asyncio.Queue()
    loop = asyncio.get_running_loop()

    def deliver(event: Delta | Finished | BaseException | None) -> None:
        try:
            loop.call_soon_threadsafe(events.put_nowait, event)
        except RuntimeError:  # the event loop has closed (server shutdown): nobody is listening
            control.cancel.set()

    def produce() -> None:
        stream = state.service.events(question, **kwargs)
        try:
            for event in stream:
                if control.cancel.is_set():  # the client left or the deadline passed: stop here
                    break
                deliver(finish(state, event, base) if isinstance(event, Answer) else event)
        except BaseException as exc:  # delivered to the stream, which reports it
            deliver(exc)
        finally:
            getattr(stream, "close", lambda: None)()  # ends the generator's own work (and its generate thread)
            deliver(None)

    future = state.queue.submit(produce, control)  # raises ServiceBusyError before the stream starts
    writer = ChunkWriter(model, include_usage=include_usage)
    return StreamingResponse(_sse(events, writer, control, future, state), media_type="text/event-stream")


@router.get(
    "/v1/models/{model_id:path}",
    response_model=responses.Model,
    responses={**responses.errors(*ANY_ERRORS), 404: UNKNOWN_MODEL},
)
async def model(model_id: str, request: Request) -> dict[str, Any]:
    """One model of /v1/models by its id (or its former descriptive id); another is 404 `unknown_model`."""
    state = current(request)
    served_model(model_id, state)
    return model_card(state)


def finish(state: ServiceState, answer: Answer, base: str | None) -> Finished:
    """The answer as it may leave, and its sources block once registered as this service's output (a block that
    could not be registered is not sent; the answer and its `rag` field still are)."""
    public = public_answer(answer.as_dict(), state)
    block = sources_block(public, base) if base is not None else None
    if block is not None and not register(block, state.service.record_output, answer.passage_texts):
        block = None
    return Finished(answer, public, block)


def _extras(public: dict[str, Any]) -> dict[str, Any]:
    return {k: public[k] for k in RAG_KEYS}


def _task_reply(
    task: ClientTask, model: str, *, stream: bool, include_usage: bool
) -> dict[str, Any] | StreamingResponse:
    """A client task's answer, in the shape the client asked for (JSON or a title), made by rules."""
    rag = {
        "client_task": task.kind,
        "label": {"ai_generated": False, "generator": None, "notice": "Answered by rules; no model ran."},
    }
    if not stream:
        return completion(model, task.content, rag, usage())
    writer = ChunkWriter(model, include_usage=include_usage)

    async def events() -> AsyncIterator[str]:
        yield writer.chunk({"role": "assistant", "content": ""})
        yield writer.chunk({"content": task.content})
        yield writer.chunk({}, "stop", rag)
        if writer.include_usage:
            yield writer.usage(usage())
        yield DONE

    return StreamingResponse(events(), media_type="text/event-stream")


async def _sse(
    events: asyncio.Queue[Delta | Finished | BaseException | None],
    writer: ChunkWriter,
    control: JobControl,
    future: Future[Any],
    state: ServiceState,
) -> AsyncIterator[str]:
    """OpenAI chunk format. Text arrives here only after its sentence passed the groundedness check; the sources
    block follows the last sentence, then the chunk with `rag` (and `usage` when asked for).

    When the client disconnects, Starlette cancels this generator: `finally` stops the work."""

    def error(exc: RagError) -> str:
        return f"data: {json.dumps(public_error(exc, state.redact)[1], ensure_ascii=False)}\n\n"

    try:
        yield writer.chunk({"role": "assistant", "content": ""})
        released = False
        while True:
            try:
                event = await asyncio.wait_for(events.get(), control.remaining())
            except TimeoutError:
                stop(control, future)
                yield error(DeadlineExceededError(SERVER_MESSAGES["deadline_exceeded"]))
                break
            if event is None:
                break
            if isinstance(event, Delta):
                released = True
                yield writer.chunk({"content": event.text})
            elif isinstance(event, Finished):
                if event.answer.abstained and not released:
                    yield writer.chunk({"content": event.answer.answer})
                if event.sources:
                    yield writer.chunk({"content": event.sources})
                yield writer.chunk({}, "stop", _extras(event.public))
                if writer.include_usage:
                    yield writer.usage(usage(event.answer.timings))
            else:
                if not isinstance(event, RagError):
                    log.error("streamed answer failed", exc_info=event)
                    event = GeneratorError(SERVER_MESSAGES["generator_failed"])
                elif event.http_status >= 500:
                    log.error("streamed answer failed: %s: %s", event.code, event.message)
                yield error(event)
        yield DONE
    finally:
        stop(control, future)  # the client left, or the stream is over: either way no work goes on
