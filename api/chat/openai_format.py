"""OpenAI's chat completion bodies: the whole completion, the streamed chunks and `usage`.

`usage` counts the model's tokens: `prompt_tokens` what the reader read (its prompt), `completion_tokens` what
it generated (none for an extract answer: a quotation is chosen, not generated). The sources block and the
abstention message are this service's own words, not the model's, and are not counted; a client task answered
by rules costs nothing.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any


def usage(timings: dict[str, float] | None = None) -> dict[str, int]:
    timings = timings or {}
    prompt, completion = int(timings.get("prompt_tokens", 0)), int(timings.get("tokens", 0))
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def completion(model: str, content: str, rag: dict[str, Any], used: dict[str, int]) -> dict[str, Any]:
    """A whole (non-streamed) chat completion."""
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
        "usage": used,
        "rag": rag,
    }


class ChunkWriter:
    """The server-sent events of one streamed completion, all with one id. With `include_usage` every chunk has
    `usage: null` and a last chunk before [DONE] carries `usage` and no choices, as OpenAI's stream does."""

    def __init__(self, model: str, *, include_usage: bool = False) -> None:
        self.ident, self.created, self.model = f"chatcmpl-{uuid.uuid4().hex}", int(time.time()), model
        self.include_usage = include_usage

    def chunk(self, delta: dict[str, Any], finish: str | None = None, rag: dict[str, Any] | None = None) -> str:
        body = self._body([{"index": 0, "delta": delta, "finish_reason": finish}])
        if rag is not None:
            body["rag"] = rag
        return event(body)

    def usage(self, used: dict[str, int]) -> str:
        """The usage chunk (send it only when `include_usage`)."""
        return event({**self._body([]), "usage": used})

    def _body(self, choices: list[dict[str, Any]]) -> dict[str, Any]:
        body: dict[str, Any] = {
            "id": self.ident,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": choices,
        }
        if self.include_usage:
            body["usage"] = None
        return body


def event(body: dict[str, Any]) -> str:
    return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"


DONE = "data: [DONE]\n\n"
