"""The documents the knowledge base serves, with their provenance as the ledger records it; curators add and
remove them over HTTP through the pipeline `rag ingest` and `rag remove` run (ingest/upload.py)."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import APIRouter, Depends, File, Form, Request, UploadFile
from fastapi.responses import JSONResponse

from api import responses
from api.auth import require
from api.responses import ANY_ERRORS, AUTH_ERRORS
from api.state import current, run_write, settings_of
from rag.errors import InvalidInputError, NotFoundError
from rag.settings import Settings

router = APIRouter()
CURATOR = [Depends(require("curator"))]
READER = [Depends(require("reader"))]
# A document and its manifest; a name, optionally. Anything more is refused while the form is parsed.
UPLOAD_FORM = {"max_files": 2, "max_fields": 1, "max_part_size": 4096}


@router.get(
    "/v1/documents",
    response_model=None,
    dependencies=READER,
    responses={200: {"model": responses.DocumentList}, **responses.errors(*ANY_ERRORS, *AUTH_ERRORS)},
)
async def documents(request: Request) -> dict[str, Any]:
    """The documents the knowledge base serves, with their provenance as the ledger records it."""
    docs = await asyncio.to_thread(_documents, settings_of(request))
    return {"documents": docs, "count": len(docs)}


@router.get(
    "/v1/documents/{doc_id:path}",
    response_model=None,
    dependencies=READER,
    responses={200: {"model": responses.Document}, **responses.errors(*ANY_ERRORS, *AUTH_ERRORS, 404)},
)
async def document(doc_id: str, request: Request) -> dict[str, Any]:
    """One document's provenance."""
    found = await asyncio.to_thread(_document, settings_of(request), doc_id)
    if found is None:
        raise NotFoundError(f"No document with id {doc_id!r} is in the knowledge base.", code="unknown_document")
    return found


@router.post(
    "/v1/documents",
    response_model=None,
    status_code=201,
    dependencies=CURATOR,
    form_limits=UPLOAD_FORM,  # type: ignore[arg-type]
    responses={
        201: {"model": responses.Upload, "description": "Admitted: the stored record."},
        200: {"model": responses.Upload, "description": "Replaced, or skipped (unchanged, or a duplicate)."},
        **responses.errors(*ANY_ERRORS, *AUTH_ERRORS, 422, 503),
    },
)
async def upload(
    request: Request,
    document: Annotated[UploadFile, File(description="The document (.md, .markdown, .txt, .html, .htm), UTF-8.")],
    manifest: Annotated[UploadFile, File(description="Its signed provenance manifest (`<name>.prov.json`).")],
    name: Annotated[
        str | None,
        Form(description="The id it was signed under, e.g. `guides/intro.md` (default: the document's file name)."),
    ] = None,
) -> JSONResponse:
    """Ingest one signed document exactly as `rag ingest` does (verification, policy, loop guard, chunking,
    ledger). Refused: 422 with the reason code (`digest_mismatch`, `unknown_signer`, `watermark_detected`...)."""
    from ingest.upload import document_id, ingest_upload

    state = current(request)
    doc_id = document_id(name if name is not None else document.filename or "")
    text, sidecar = await document.read(), await manifest.read()
    outcome = await run_write(state, lambda: ingest_upload(state.ingestor(), doc_id, text, sidecar))
    request.app.state.metrics.observe_ingest(outcome.report)
    if outcome.reason is not None:
        why = outcome.detail.rstrip(".") or "see the reason code"
        raise InvalidInputError(f"The document {doc_id!r} was refused ({outcome.reason}): {why}.", code=outcome.reason)
    body: dict[str, Any] = {"status": outcome.status, "doc_id": outcome.doc_id}
    if outcome.duplicate_of is not None:
        body["duplicate_of"] = outcome.duplicate_of
    else:
        body["document"] = await asyncio.to_thread(_document, state.settings, outcome.doc_id)
    return JSONResponse(body, status_code=201 if outcome.status == "accepted" else 200)


@router.delete(
    "/v1/documents/{doc_id:path}",
    response_model=None,
    dependencies=CURATOR,
    responses={200: {"model": responses.Removal}, **responses.errors(*ANY_ERRORS, *AUTH_ERRORS, 404, 503)},
)
async def remove(doc_id: str, request: Request) -> dict[str, Any]:
    """Remove a document and its chunks, as `rag remove` does: the ledger records it first."""
    state = current(request)
    before = await asyncio.to_thread(_document, state.settings, doc_id)
    removed = await run_write(state, lambda: state.ingestor().remove(doc_id))
    return {"status": "removed", "document": before or {"doc_id": removed.doc_id, "sha256": removed.sha256}}


def _documents(settings: Settings) -> list[dict[str, Any]]:
    from ingest.pipeline import Ingestor

    return Ingestor(settings, None, None).documents()


def _document(settings: Settings, doc_id: str) -> dict[str, Any] | None:
    return next((doc for doc in _documents(settings) if doc.get("doc_id") == doc_id), None)
