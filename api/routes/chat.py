"""`POST /v1/chat/completions`, OpenAI-compatible, streamed or not.

Streamed text is released sentence by sentence, each only after it passed the check; past the deadline
a stream already started ends with an error event, never with unchecked text."""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from concurrent.futures import Future
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from api import responses
from api.errors import SERVER_MESSAGES, DeadlineExceededError, public_error
from api.responses import BODY_ERRORS
from api.routes.answers import grounded_for
from api.schemas import ChatCompletionRequest
from api.state import ServiceState, control_for, current, public_answer, run_job, stop
from rag.answering import Answer, Delta
from rag.errors import InvalidInputError, RagError
from rag.generation import GeneratorError
from rag.queueing import JobControl
from rag.settings import Settings

log = logging.getLogger(__name__)

router = APIRouter()


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
    },
)
async def chat(body: ChatCompletionRequest, request: Request) -> dict[str, Any] | StreamingResponse:
    """OpenAI-compatible; streamed text is released sentence by sentence, each only after it passed the check."""
    state = current(request)
    settings = state.settings
    _check_messages(body, settings)
    grounded = grounded_for(body, settings)
    question = conversation_query([(m.role, m.content or "") for m in body.messages])
    state.service.validate(question, body.top_k, body.filters, body.answer_mode)
    model = state.model_id
    kwargs: dict[str, Any] = {
        "top_k": body.top_k,
        "filters": body.filters,
        "grounded": grounded,
        "mode": body.answer_mode,
    }
    if not body.stream:
        result = await run_job(request, state, lambda: state.service.answer(question, **kwargs))
        return _completion(result, model, state)
    control = control_for(request, settings)
    events: asyncio.Queue[Delta | Answer | BaseException | None] = asyncio.Queue()
    loop = asyncio.get_running_loop()

    def deliver(event: Delta | Answer | BaseException | None) -> None:
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
                deliver(event)
        except BaseException as exc:  # delivered to the stream, which reports it
            deliver(exc)
        finally:
            getattr(stream, "close", lambda: None)()  # ends the generator's own work (and its generate thread)
            deliver(None)

    future = state.queue.submit(produce, control)  # raises ServiceBusyError before the stream starts
    return StreamingResponse(_sse(events, model, control, future, state), media_type="text/event-stream")


def conversation_query(messages: list[tuple[str, str]]) -> str:
    """The retrieval query: the last user turn, with the one before it when the last is a short follow-up."""
    users = [text.strip() for role, text in messages if role == "user" and text.strip()]
    if not users:
        return ""
    last = users[-1]
    if len(users) > 1 and len(last.split()) < 5:
        return f"{users[-2]} {last}"
    return last


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


def _extras(result: Answer, state: ServiceState) -> dict[str, Any]:
    data = public_answer(result.as_dict(), state)
    keys = ("abstained", "reason", "citations", "support", "rejected", "label", "timings", "answer_mode")
    return {k: data[k] for k in keys}


def _completion(result: Answer, model: str, state: ServiceState) -> dict[str, Any]:
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": result.answer}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 0, "completion_tokens": int(result.timings.get("tokens", 0)), "total_tokens": 0},
        "rag": _extras(result, state),
    }


async def _sse(
    events: asyncio.Queue[Delta | Answer | BaseException | None],
    model: str,
    control: JobControl,
    future: Future[Any],
    state: ServiceState,
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
        return f"data: {json.dumps(public_error(exc, state.redact)[1], ensure_ascii=False)}\n\n"

    try:
        yield chunk({"role": "assistant", "content": ""})
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
                yield chunk({"content": event.text})
            elif isinstance(event, Answer):
                if event.abstained and not released:
                    yield chunk({"content": event.answer})
                yield chunk({}, "stop", _extras(event, state))
            else:
                if not isinstance(event, RagError):
                    log.error("streamed answer failed", exc_info=event)
                    event = GeneratorError(SERVER_MESSAGES["generator_failed"])
                elif event.http_status >= 500:
                    log.error("streamed answer failed: %s: %s", event.code, event.message)
                yield error(event)
        yield "data: [DONE]\n\n"
    finally:
        stop(control, future)  # the client left, or the stream is over: either way no work goes on
