"""Liveness and readiness (open to all), and the OpenAI-compatible model list (reader role)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse

from api import responses
from api.auth import require
from api.errors import SERVER_MESSAGES, error_body
from api.responses import ANY_ERRORS, AUTH_ERRORS
from api.state import current

router = APIRouter()


@router.get("/healthz", response_model=responses.Health, responses=responses.errors(*ANY_ERRORS))
async def healthz() -> dict[str, str]:
    """The process is up (it may still be loading models: see /readyz)."""
    return {"status": "ok"}


@router.get(
    "/readyz",
    response_model=None,
    responses={
        **responses.errors(*ANY_ERRORS),
        200: {"model": responses.Readiness},
        503: {"model": responses.Readiness},
    },
)
async def readyz(request: Request) -> JSONResponse:
    """200 once the models are loaded; 503 while warming, or with an error code if loading failed."""
    state = current(request)
    if state.ready.is_set():
        return JSONResponse({"status": "ready", "generator": state.model_id})
    if state.warm_error is None:
        return JSONResponse({"status": "warming"}, status_code=503)
    message = SERVER_MESSAGES.get(state.warm_error, SERVER_MESSAGES["warm_up_failed"])
    return JSONResponse({"status": "failed", **error_body(state.warm_error, message)}, status_code=503)


@router.get(
    "/v1/models",
    response_model=responses.ModelList,
    dependencies=[Depends(require("reader"))],
    responses=responses.errors(*ANY_ERRORS, *AUTH_ERRORS),
)
async def models(request: Request) -> dict[str, Any]:
    """OpenAI-compatible model list: one model with a short stable id, the generator behind it in other fields."""
    from api.chat.models import model_card  # the chat format's own module (README, Chat clients)

    return {"object": "list", "data": [model_card(current(request))]}
