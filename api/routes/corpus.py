"""The corpus over its versions over HTTP (admin role): what `rag corpus report --json` prints."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request

from api import responses
from api.auth import require
from api.responses import ANY_ERRORS, AUTH_ERRORS
from api.state import current

router = APIRouter(dependencies=[Depends(require("admin"))])


@router.get(
    "/v1/corpus/report",
    response_model=None,
    responses={200: {"model": responses.CorpusReport}, **responses.errors(*ANY_ERRORS, *AUTH_ERRORS, 422)},
)
async def corpus_report(
    request: Request,
    gap_s: Annotated[float, Query(gt=0, le=86_400, description="Entries closer than this are one version.")] = 60.0,
) -> dict[str, Any]:
    """Every version the ledger's signed head can rebuild, oldest first, with its figures (counts, human share,
    diversity, near duplicates, embedding spread, topic clusters, tail) and the warnings it raises."""
    from ingest.corpus_report_view import collect

    state = current(request)
    return await asyncio.to_thread(collect, state.settings, gap_s=gap_s, store=state.service.retriever.store)
