"""The one model this service offers to OpenAI clients: a short stable id, the generator behind it in other fields.

Clients show the id in menus and send it back in `model`. Earlier versions listed the generator's description
(`gemma3-270m (Gemma 3 270M base, ...)`) as the id; requests naming it are still served, so that a client that
saved it keeps working. A request naming any other model is refused (404 `unknown_model`), as OpenAI does: a
client pointed at the wrong server or model should hear so."""

from __future__ import annotations

from typing import Any

from api.state import ServiceState
from rag.errors import NotFoundError


def model_card(state: ServiceState) -> dict[str, Any]:
    """The model as /v1/models lists it."""
    settings = state.settings
    local = settings.generator.backend == "local"
    mode = settings.answer.answer_mode
    if mode == "extract" and state.service.reader is None:
        mode = "free"  # what the service answers with when no mode is asked for (extract needs the local model)
    return {
        "id": settings.chat.model_id,
        "object": "model",
        "created": 0,
        "owned_by": "provenance-first-rag",
        "name": settings.chat.model_id,
        "generator": state.model_id,
        "backend": settings.generator.backend,
        "runtime": settings.generator.runtime if local else None,
        "answer_mode": mode,
        "aliases": [state.model_id],
    }


def served_model(requested: str | None, state: ServiceState) -> str:
    """The model id answers carry; a request naming a model this server does not serve is refused."""
    slug = state.settings.chat.model_id
    if requested is None or requested in (slug, state.model_id):
        return slug
    raise NotFoundError(
        f"This server serves one model, {slug!r}; the request names {requested[:80]!r} (see GET /v1/models).",
        code="unknown_model",
    )
