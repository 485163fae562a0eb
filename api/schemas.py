"""Request bodies. Pydantic checks types; the domain (`AnswerService.validate`) checks meaning."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

FilterValue = str | list[str]
GROUNDED = (
    "Refused (422 `grounding_required`): every answer is checked against the signed sources. Only a server "
    "started with RAG_ANSWER__ALLOW_UNGROUNDED=true accepts `false`, and labels such answers as unchecked."
)


class AnswerRequest(BaseModel):
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


# Fields of OpenAI's chat API that this service accepts and ignores (it has no tools, one model, greedy
# decoding and one choice). Any other unknown field is refused with 422 `unknown_field`: a misspelt
# `filters` or `answer_mode` silently ignored would give an answer the client did not ask for.
IGNORED = "Accepted for OpenAI compatibility and ignored."


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: str | None = Field(None, description="Text; at most RAG_SERVER__MAX_MESSAGE_CHARS characters.")
    name: Any = Field(None, description=IGNORED)
    tool_calls: Any = Field(None, description=IGNORED)
    tool_call_id: Any = Field(None, description=IGNORED)
    function_call: Any = Field(None, description=IGNORED)
    refusal: Any = Field(None, description=IGNORED)
    audio: Any = Field(None, description=IGNORED)


class ChatCompletionRequest(BaseModel):
    """The OpenAI chat completions body; OpenAI's other fields are accepted and ignored, unknown ones refused."""

    model_config = ConfigDict(extra="forbid", strict=True)

    model: str | None = None
    messages: list[ChatMessage] = Field(
        ..., min_length=1, description="At most RAG_SERVER__MAX_MESSAGES messages (default 64)."
    )
    stream: bool = False
    max_tokens: int | None = None
    temperature: float | None = None
    frequency_penalty: Any = Field(None, description=IGNORED)
    presence_penalty: Any = Field(None, description=IGNORED)
    logit_bias: Any = Field(None, description=IGNORED)
    logprobs: Any = Field(None, description=IGNORED)
    top_logprobs: Any = Field(None, description=IGNORED)
    max_completion_tokens: Any = Field(None, description=IGNORED)
    n: Any = Field(None, description=IGNORED)
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
    stream_options: Any = Field(None, description=IGNORED)
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
