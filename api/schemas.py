"""Request bodies. Pydantic checks types; the domain (`AnswerService.validate`) checks meaning."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

FilterValue = str | list[str]
GROUNDED = (
    "Refused (422 `grounding_required`): every answer is checked against the signed sources. Only a server "
    "started with RAG_ANSWER__ALLOW_UNGROUNDED=true accepts `false`, and labels such answers as unchecked."
)


class _Text(BaseModel):
    """A request body whose every string is valid Unicode: JSON's `\\ud800` escapes decode to lone surrogates,
    which no encoder, tokenizer or store takes; such a body is refused here (422), not deep inside."""

    @model_validator(mode="before")
    @classmethod
    def _no_lone_surrogates(cls, data: Any) -> Any:
        pending = [data]
        while pending:
            value = pending.pop()
            if isinstance(value, str):
                if any("\ud800" <= ch <= "\udfff" for ch in value):
                    raise ValueError("A string holds a lone UTF-16 surrogate (`\\ud800`-`\\udfff`): not valid text")
            elif isinstance(value, dict):
                pending.extend(value.keys())
                pending.extend(value.values())
            elif isinstance(value, list):
                pending.extend(value)
        return data


class AnswerRequest(_Text):
    model_config = ConfigDict(extra="forbid", strict=True)  # strict: `"top_k": "3"` or `true` is not an integer

    question: str = Field(..., description="Up to 2,000 characters.")
    top_k: int | None = Field(None, description="Passages to retrieve, 1-20 (default 4).")
    filters: dict[str, FilterValue] | None = Field(
        None, description="Metadata filters: license, authors, origin, doc_id, signer_name, title."
    )
    grounded: bool | None = Field(None, description=GROUNDED)
    answer_mode: Literal["extract", "free", "quote"] | None = Field(
        None, description="extract = a verbatim span of a passage; quote = constrained to passage text."
    )


# Fields of OpenAI's chat API that this service accepts and ignores (it has no tools and decodes greedily).
# Any other unknown field is refused with 422 `unknown_field`: a misspelt `filters` or `answer_mode` silently
# ignored would give an answer the client did not ask for.
IGNORED = "Accepted for OpenAI compatibility and ignored."
MAX_TOKENS = (
    "Checked (an integer of 1 or more) and not applied: the generator's length is the server's setting "
    "(RAG_GENERATOR__MAX_NEW_TOKENS), an extract answer generates nothing, and a sentence cut short would be "
    "checked as if it were whole."
)


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    include_usage: bool | None = Field(None, description="Send a last chunk with `usage` and no choices.")
    include_obfuscation: bool | None = Field(None, description=IGNORED)


class ContentPart(BaseModel):
    """One part of a message's content. Text parts are read, joined by newlines; a part of another type (image_url,
    input_audio, file) in a turn the question is read from is refused with 422 `unsupported_content`."""

    model_config = ConfigDict(extra="allow", strict=True)  # other fields of a part (image_url, cache_control) pass

    type: str = Field(..., description="text; refusal (assistant); image_url, input_audio or file are not read.")
    text: str | None = Field(None, description="The text of a `text` part.")


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    role: Literal["system", "user", "assistant", "tool", "developer", "function"] = Field(
        ...,
        description="The question is read from user turns only. System and developer messages are accepted and never "
        "reach the reader: they cannot change the answer mode, switch grounding off or add instructions.",
    )
    content: str | list[ContentPart] | None = Field(
        None,
        description="A string or a list of parts; its text at most RAG_SERVER__MAX_MESSAGE_CHARS characters.",
    )
    name: Any = Field(None, description=IGNORED)
    tool_calls: Any = Field(None, description=IGNORED)
    tool_call_id: Any = Field(None, description=IGNORED)
    function_call: Any = Field(None, description=IGNORED)
    refusal: Any = Field(None, description=IGNORED)
    audio: Any = Field(None, description=IGNORED)


class ChatCompletionRequest(_Text):
    """The OpenAI chat completions body; OpenAI's other fields are accepted and ignored, unknown ones refused."""

    model_config = ConfigDict(extra="forbid", strict=True)

    model: str | None = Field(
        None,
        description="The id /v1/models lists (RAG_CHAT__MODEL_ID, `provenance-rag`) or the generator's former "
        "descriptive id; another is refused with 404 `unknown_model`. Absent: the one model.",
    )
    messages: list[ChatMessage] = Field(
        ..., min_length=1, description="At most RAG_SERVER__MAX_MESSAGES messages (default 64)."
    )
    stream: bool = False
    stream_options: StreamOptions | None = Field(None, description="`include_usage`: a last chunk with `usage`.")
    max_tokens: int | None = Field(None, ge=1, description=MAX_TOKENS)
    max_completion_tokens: int | None = Field(None, ge=1, description=MAX_TOKENS)
    n: int | None = Field(None, description="Choices: 1 only (422 `unsupported_n`); every answer is checked once.")
    temperature: float | None = None
    frequency_penalty: Any = Field(None, description=IGNORED)
    presence_penalty: Any = Field(None, description=IGNORED)
    logit_bias: Any = Field(None, description=IGNORED)
    logprobs: Any = Field(None, description=IGNORED)
    top_logprobs: Any = Field(None, description=IGNORED)
    seed: Any = Field(None, description=IGNORED)
    stop: Any = Field(None, description=IGNORED)
    top_p: Any = Field(None, description=IGNORED)
    user: Any = Field(None, description=IGNORED)
    tools: Any = Field(None, description=IGNORED)
    tool_choice: Any = Field(None, description=IGNORED)
    parallel_tool_calls: Any = Field(None, description=IGNORED)
    functions: Any = Field(None, description=IGNORED)
    function_call: Any = Field(None, description=IGNORED)
    response_format: Any = Field(None, description=IGNORED)
    metadata: Any = Field(None, description=IGNORED)
    store: Any = Field(None, description=IGNORED)
    service_tier: Any = Field(None, description=IGNORED)
    modalities: Any = Field(None, description=IGNORED)
    audio: Any = Field(None, description=IGNORED)
    prediction: Any = Field(None, description=IGNORED)
    reasoning_effort: Any = Field(None, description=IGNORED)
    verbosity: Any = Field(None, description=IGNORED)
    web_search_options: Any = Field(None, description=IGNORED)
    prompt_cache_key: Any = Field(None, description=IGNORED)
    safety_identifier: Any = Field(None, description=IGNORED)
    top_k: int | None = None
    filters: dict[str, FilterValue] | None = None
    answer_mode: Literal["extract", "free", "quote"] | None = None
    grounded: bool | None = Field(None, description=GROUNDED)
