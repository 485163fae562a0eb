"""The documents the knowledge base serves, with their provenance as the ledger records it."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Request

from api import responses
from api.responses import ANY_ERRORS
from api.state import settings_of
from rag.errors import NotFoundError
from rag.settings import Settings

router = APIRouter()


@router.get(
    "/v1/documents",
    response_model=None,
    responses={200: {"model": responses.DocumentList}, **responses.errors(*ANY_ERRORS)},
)
async def documents(request: Request) -> dict[str, Any]:
    """The documents the knowledge base serves, with their provenance as the ledger records it."""
    docs = await asyncio.to_thread(_documents, settings_of(request))
    return {"documents": docs, "count": len(docs)}


@router.get(
    "/v1/documents/{doc_id:path}",
    response_model=None,
    responses={200: {"model": responses.Document}, **responses.errors(*ANY_ERRORS, 404)},
)
async def document(doc_id: str, request: Request) -> dict[str, Any]:
    """One document's provenance."""
    for doc in await asyncio.to_thread(_documents, settings_of(request)):
        if doc.get("doc_id") == doc_id:
            return doc
    raise NotFoundError(f"No document with id {doc_id!r} is in the knowledge base.", code="unknown_document")


def _documents(settings: Settings) -> list[dict[str, Any]]:
    from ingest.pipeline import Ingestor

    return Ingestor(settings, None, None).documents()
