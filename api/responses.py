"""Response bodies as the OpenAPI schema documents them (documentation only: routes return plain dicts).

The schemathesis run (tests/test_api_fuzz.py) checks every live response against these, so they
cannot drift from what the service sends. Models allow extra fields: adding a field is not a break.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class ErrorDetail(_Open):
    field: str
    msg: str


class ErrorInfo(_Open):
    code: str = Field(..., description="Stable, machine-readable (README: error codes).")
    message: str = Field(..., description="One sentence for a person; never exception text, URLs or paths.")
    details: list[ErrorDetail] | None = Field(None, description="Every invalid field (422 `invalid_request`).")


class ErrorResponse(_Open):
    error: ErrorInfo


class Health(_Open):
    status: str


class Readiness(_Open):
    status: str = Field(..., description="ready, warming or failed")
    generator: str | None = None
    error: ErrorInfo | None = None


class Citation(_Open):
    n: int
    doc_id: str
    title: str
    chunk_id: str
    chunk_sha256: str
    signer_name: str
    signer_keyid: str
    license: str
    origin: str
    score: float
    excerpt: str


class Rejected(_Open):
    count: int
    reasons: dict[str, int]


class AnswerResponse(_Open):
    question: str
    answer: str
    abstained: bool
    reason: str | None
    citations: list[Citation]
    support: list[dict[str, Any]] = Field(..., description="Support of each released sentence only.")
    rejected: Rejected = Field(..., description="Sentences not released, as a count and reason codes; never text.")
    label: dict[str, Any] = Field(..., description="AI-generated label: generator, watermark, ledger head.")
    timings: dict[str, float]
    answer_mode: str
    grounded: bool


class Usage(_Open):
    """The model's tokens: what the reader read and what it generated (none for a quotation or a client task)."""

    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ChatMessageOut(_Open):
    role: str
    content: str = Field(..., description="The checked answer, then (RAG_CHAT__SOURCES_BLOCK) its sources block.")


class ChatChoice(_Open):
    index: int
    message: ChatMessageOut
    finish_reason: str


class ChatCompletion(_Open):
    id: str
    object: str
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage
    rag: dict[str, Any] = Field(
        ...,
        description="abstained, reason, citations, support, rejected, label, timings; for a client task answered by "
        "rules: client_task and label.",
    )


class Delta(_Open):
    role: str | None = None
    content: str | None = None


class ChunkChoice(_Open):
    index: int
    delta: Delta
    finish_reason: str | None


class ChatCompletionChunk(_Open):
    """One streamed event: text that passed the check, the sources block, the final chunk with `rag`
    (finish_reason stop), or with `stream_options.include_usage` a last chunk with `usage` and no choices."""

    id: str
    object: str
    created: int
    model: str
    choices: list[ChunkChoice]
    rag: dict[str, Any] | None = None
    usage: Usage | None = None


def stream_event_schema(chunk_ref: str, error_ref: str) -> dict[str, Any]:
    """One server-sent event of a streamed chat completion: a chunk, an error (the last before [DONE]), or [DONE]."""
    return {
        "type": "object",
        "required": ["data"],
        "properties": {
            "data": {
                "anyOf": [
                    {"const": "[DONE]"},
                    {
                        "type": "string",
                        "contentMediaType": "application/json",
                        "contentSchema": {"anyOf": [{"$ref": chunk_ref}, {"$ref": error_ref}]},
                    },
                ]
            },
            "event": {"type": "string"},
            "id": {"type": "string"},
            "retry": {"type": "integer"},
        },
    }


class Model(_Open):
    id: str = Field(..., description="A short stable slug (RAG_CHAT__MODEL_ID); requests name it in `model`.")
    object: str
    created: int
    owned_by: str
    name: str | None = None
    generator: str | None = Field(None, description="The generator behind the answers, without its address.")
    backend: str | None = Field(None, description="local or openai (a remote OpenAI-compatible server).")
    runtime: str | None = Field(None, description="What runs the local model: torch or openvino.")
    answer_mode: str | None = Field(None, description="The default answer mode: extract, free or quote.")
    aliases: list[str] | None = Field(None, description="Other ids requests may name (the former descriptive id).")


class ModelList(_Open):
    object: str
    data: list[Model]


class Document(_Open):
    doc_id: str
    sha256: str
    chunks: int


class DocumentList(_Open):
    documents: list[Document]
    count: int


class Upload(_Open):
    status: str = Field(..., description="accepted (201), replaced, skipped_unchanged or skipped_duplicate (200).")
    doc_id: str
    document: Document | None = Field(None, description="The stored record, as `GET /v1/documents/{id}` gives it.")
    duplicate_of: str | None = Field(None, description="skipped_duplicate: the live document with the same text.")


class Removal(_Open):
    status: str = Field(..., description="removed")
    document: Document = Field(..., description="What was removed (the ledger's `remove` entry records it).")


class LedgerPage(_Open):
    entries: list[dict[str, Any]] = Field(..., description="Ledger entries, oldest first, as stored (hash-chained).")
    offset: int
    limit: int
    total: int
    head: str = Field(..., description="Hash of the last entry (the corpus version).")


class LedgerCheck(_Open):
    ok: bool
    entries: int
    head: str
    problems: list[str] = Field(..., description="Each problem found (edited, dropped or reordered entries, drift).")
    store_checked: bool


class CorpusReport(_Open):
    human_floor: float
    version_gap_s: float
    window: int
    baseline: dict[str, Any] | None = Field(..., description="The version later ones are compared with.")
    versions: list[dict[str, Any]] = Field(..., description="Each version's figures and warnings, oldest first.")
    warnings: list[str]


def errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` entries for error statuses, all with the one error model."""
    text = {
        400: "The body is not valid JSON (`invalid_json`) or its Content-Length is invalid.",
        404: "No such document (`unknown_document`).",
        401: "No API key, or one that is not valid or was revoked (`missing_api_key`, `invalid_api_key`, "
        "`revoked_api_key`).",
        403: "The API key's role may not do this (`insufficient_role`): reader < curator < admin.",
        408: "The body did not arrive within RAG_SERVER__BODY_TIMEOUT_S (`body_timeout`).",
        413: "The body is larger than RAG_SERVER__MAX_BODY_BYTES (`request_too_large`); it was not read.",
        431: "The request line and headers are too large (`headers_too_large`).",
        429: "Over the key's rate (RAG_API__RATE_PER_S, RAG_API__RATE_BURST): `rate_limited`, with Retry-After.",
        422: "A field is invalid, missing or unknown (`invalid_request`, `unknown_field`, `empty_question`, "
        "`question_too_long`, `too_many_messages`, `message_too_long`, `invalid_top_k`, `unknown_filter`, "
        "`grounding_required`, ...).",
        500: "An unexpected failure (`internal_error`, `ledger_corrupt`, ...); details only in the server log.",
        503: "The generator queue is full (`busy`, with Retry-After) or a backend failed (`generator_failed`).",
        504: "The answer was not ready within RAG_ANSWER__DEADLINE_S (`deadline_exceeded`).",
    }
    documented: dict[int | str, dict[str, Any]] = {
        status: {"model": ErrorResponse, "description": text[status]} for status in statuses
    }
    if 503 in documented:
        documented[503]["headers"] = BUSY_HEADERS
    if 429 in documented:
        documented[429]["headers"] = RETRY_HEADERS
    if 401 in documented:
        documented[401]["headers"] = CHALLENGE_HEADERS
    return documented


ANY_ERRORS = (400, 408, 413, 431, 500)  # the limits hold on every route, and so may a failure
BODY_ERRORS = (*ANY_ERRORS, 422, 503, 504)
AUTH_ERRORS = (401, 403, 429)  # every route that needs a role (api/auth.py)
RETRY_HEADERS = {"Retry-After": {"description": "Seconds until the key may call again.", "schema": {"type": "integer"}}}
CHALLENGE_HEADERS = {"WWW-Authenticate": {"description": "`Bearer`.", "schema": {"type": "string"}}}
BUSY_HEADERS = {"Retry-After": {"description": "Seconds to wait (503 `busy` only).", "schema": {"type": "integer"}}}
