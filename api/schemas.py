"""Request bodies. Pydantic checks types; the domain (`AnswerService.validate`) checks meaning."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

FilterValue = str | list[str]
GROUNDED = (
    "Refused (422 `grounding_required`): every answer is checked against the signed sources. Only a server "
    "started with RAG_ANSWER__ALLOW_UNGROUNDED=true accepts `false`, and labels such answers as unchecked."
)


class AnswerRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    question: str = Field(..., description="Up to 2,000 characters.")
    top_k: int | None = Field(None, description="Passages to retrieve, 1-20 (default 4).")
    filters: dict[str, FilterValue] | None = Field(
        None, description="Metadata filters: license, authors, origin, doc_id, signer_name, title."
    )
    grounded: bool | None = Field(None, description=GROUNDED)
    answer_mode: Literal["free", "quote"] | None = Field(None, description="quote = constrained to passage text.")


class ChatMessage(BaseModel):
    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: str | None = None


class ChatCompletionRequest(BaseModel):
    """The OpenAI chat completions body; sampling knobs are accepted and ignored (decoding is greedy)."""

    model_config = ConfigDict(extra="allow")

    model: str | None = None
    messages: list[ChatMessage] = Field(..., min_length=1)
    stream: bool = False
    max_tokens: int | None = None
    temperature: float | None = None
    top_k: int | None = None
    filters: dict[str, FilterValue] | None = None
    answer_mode: Literal["free", "quote"] | None = None
    grounded: bool | None = Field(None, description=GROUNDED)
