"""`POST /v1/answer`: one question, one checked and cited answer."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from api import responses
from api.responses import BODY_ERRORS
from api.schemas import AnswerRequest, ChatCompletionRequest
from api.state import current, public_answer, run_job
from rag.errors import InvalidInputError
from rag.settings import Settings

router = APIRouter()


@router.post(
    "/v1/answer",
    response_model=None,
    responses={200: {"model": responses.AnswerResponse}, **responses.errors(*BODY_ERRORS)},
)
async def answer(body: AnswerRequest, request: Request) -> dict[str, Any]:
    """A checked, cited answer; `support` holds the released sentences, `rejected` only counts the others."""
    state = current(request)
    grounded = grounded_for(body, state.settings)
    state.service.validate(body.question, body.top_k, body.filters, body.answer_mode)
    result = await run_job(
        request,
        state,
        lambda: state.service.answer(
            body.question, top_k=body.top_k, filters=body.filters, grounded=grounded, mode=body.answer_mode
        ),
    )
    return public_answer(result.as_dict(), state)


def grounded_for(body: AnswerRequest | ChatCompletionRequest, settings: Settings) -> bool:
    """Grounding is the server's setting: a request may ask for none only where the operator allowed it."""
    if "grounded" not in body.model_fields_set:
        return True
    if not settings.answer.allow_ungrounded:
        raise InvalidInputError(
            "Grounding cannot be switched off over HTTP: every answer is checked, so send no `grounded` field.",
            code="grounding_required",
        )
    return body.grounded is not False
