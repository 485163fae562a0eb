"""What a chat request says, read as OpenAI's chat format allows: `content` is a string or a list of parts.

Only text is read. Text parts are joined; an image, audio or file part in a turn the question is read from is
refused with a code naming it (this service answers from signed text only). The question is the last user turn,
with the one before it when the last is a short follow-up. System and developer messages are accepted and never
reach the reader: they cannot ask for another answer mode, switch grounding off or add instructions.
"""

from __future__ import annotations

from collections.abc import Sequence

from api.schemas import ChatCompletionRequest, ChatMessage, ContentPart
from rag.errors import InvalidInputError
from rag.settings import Settings

FOLLOW_UP_WORDS = 5  # a last user turn shorter than this is read with the one before it ("and for lists?")
TEXT_PARTS = ("text", "refusal")  # an assistant's refusal part is text too (never part of the question)


def text_of(content: str | list[ContentPart] | None) -> str:
    """The message's text: a string as it is, text parts joined by newlines, other parts left out."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "\n".join(part.text or "" for part in content if part.type in TEXT_PARTS and part.text)


def non_text_parts(message: ChatMessage) -> list[str]:
    """The types of the parts that are not text (image_url, input_audio, file, ...)."""
    if not isinstance(message.content, list):
        return []
    return [part.type for part in message.content if part.type not in TEXT_PARTS]


def question_turns(turns: Sequence[tuple[str, str]]) -> list[int]:
    """Positions of the user turns the question is read from: the last one with text, and the one before it
    when the last is a short follow-up."""
    users = [i for i, (role, text) in enumerate(turns) if role == "user" and text.strip()]
    if len(users) > 1 and len(turns[users[-1]][1].split()) < FOLLOW_UP_WORDS:
        return users[-2:]
    return users[-1:]


def conversation_query(turns: Sequence[tuple[str, str]]) -> str:
    """The retrieval query: the last user turn, with the one before it when the last is a short follow-up."""
    return " ".join(turns[i][1].strip() for i in question_turns(turns))


def check_request(body: ChatCompletionRequest, settings: Settings, turns: Sequence[tuple[str, str]]) -> None:
    """Refuse, with a stable code, what this service cannot honour: several choices, too many or too long
    messages, and parts that are not text where the question is read."""
    limits = settings.server
    if body.n is not None and body.n != 1:
        raise InvalidInputError(
            f"`n` is {body.n}; this service gives one checked answer per request, so `n` must be 1 or absent.",
            code="unsupported_n",
        )
    if len(body.messages) > limits.max_messages:
        raise InvalidInputError(
            f"The request has {len(body.messages)} messages; the limit is {limits.max_messages}.",
            code="too_many_messages",
        )
    for n, (_, text) in enumerate(turns):
        if len(text) > limits.max_message_chars:
            raise InvalidInputError(
                f"Message {n} has {len(text)} characters; the limit is {limits.max_message_chars}.",
                code="message_too_long",
            )
    users = [i for i, message in enumerate(body.messages) if message.role == "user"]
    for n in sorted({*question_turns(turns), *users[-1:]}):  # the last user turn, even one without text
        kinds = non_text_parts(body.messages[n])
        if kinds:
            raise InvalidInputError(
                f"Message {n} has a content part of type {kinds[0][:40]!r}; this service answers from signed text only "
                "(images, audio and files are not read). Send the question as text.",
                code="unsupported_content",
            )
