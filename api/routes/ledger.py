"""The ledger over HTTP (admin role): its entries, paged, and the check `rag ledger verify` runs."""

from __future__ import annotations

import asyncio
from dataclasses import asdict
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request

from api import responses
from api.auth import require
from api.responses import ANY_ERRORS, AUTH_ERRORS
from api.state import current

router = APIRouter(dependencies=[Depends(require("admin"))])
MAX_PAGE = 1000


@router.get(
    "/v1/ledger",
    response_model=None,
    responses={200: {"model": responses.LedgerPage}, **responses.errors(*ANY_ERRORS, *AUTH_ERRORS, 422)},
)
async def ledger(
    request: Request,
    offset: Annotated[int, Query(ge=0, description="Entries to skip, oldest first.")] = 0,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE, description=f"Entries to return (at most {MAX_PAGE}).")] = 100,
) -> dict[str, Any]:
    """Ledger entries, oldest first, as stored: each chained to the one before by its hash."""
    from ingest.ledger import Ledger
    from ingest.ledger_admin import ledger_page

    log = Ledger(current(request).settings.ledger_path)
    entries, total, head = await asyncio.to_thread(ledger_page, log, offset, limit)
    return {"entries": entries, "offset": offset, "limit": limit, "total": total, "head": head}


@router.get(
    "/v1/ledger/verify",
    response_model=None,
    responses={200: {"model": responses.LedgerCheck}, **responses.errors(*ANY_ERRORS, *AUTH_ERRORS)},
)
async def verify(request: Request) -> dict[str, Any]:
    """What `rag ledger verify` checks: the hash chain, the signed head, and that the store holds exactly the
    chunks the ledger commits. `ok` is false with each problem named; the check itself answers 200."""
    from ingest.ledger import Ledger
    from ingest.ledger_admin import check
    from ingest.ledger_head import LedgerKey

    state = current(request)
    settings = state.settings
    log = Ledger(settings.ledger_path, LedgerKey(settings.ledger_key_path))
    report = await asyncio.to_thread(check, settings, log, state.service.retriever.store)
    return {**asdict(report), "problems": [state.redact(problem) for problem in report.problems]}
