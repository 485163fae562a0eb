"""The OpenAPI schema with the rules this server applies, not only the types: its size limits, the
filter fields, the grounding rule and each streamed event, so that clients and fuzzers see them."""

from __future__ import annotations

from typing import Any

from api import responses
from rag.retrieval import FILTER_FIELDS
from rag.settings import Settings


def document_rules(schema: dict[str, Any], settings: Settings) -> None:
    """Write what this server accepts into the request schemas."""
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
    chat = models.get("ChatCompletionRequest", {}).get("properties", {})
    messages = chat.get("messages")
    if messages is not None:
        messages["maxItems"] = settings.server.max_messages
        text = {"type": "string", "pattern": r"\S"}
        text_part = {
            "type": "object",
            "properties": {"type": {"const": "text"}, "text": text},
            "required": ["type", "text"],
        }
        messages["contains"] = {  # the question is the last user turn: there must be one with text
            "type": "object",
            "properties": {
                "role": {"const": "user"},
                "content": {"anyOf": [text, {"type": "array", "contains": text_part}]},
            },
            "required": ["role", "content"],
        }
    if "n" in chat:
        chat["n"].update(minimum=1, maximum=1)
    schemas = [models.get("ChatMessage", {}).get("properties", {}).get("content"), _part_text(models)]
    for content in (c for c in schemas if c is not None):
        for option in content.get("anyOf", [content]):
            if option.get("type") == "string":
                option["maxLength"] = settings.server.max_message_chars


def _part_text(models: dict[str, Any]) -> dict[str, Any] | None:
    """A text part's `text` (the message's limit holds for its parts' text together, so for each one too)."""
    text: dict[str, Any] | None = models.get("ContentPart", {}).get("properties", {}).get("text")
    return text


def document_stream(schema: dict[str, Any]) -> None:
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
