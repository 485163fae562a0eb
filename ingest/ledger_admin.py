"""Operator commands that change a ledger's standing, each explicit and never run implicitly by an ingest.

`sign_head` signs the head of a ledger whose chain verifies (once, for a ledger written before heads were
signed, or whose head file was lost); `reset` deletes a knowledge base's ledger, head and stored chunks so
that the next ingest starts a new one. Neither touches keys or trust files.
"""

from __future__ import annotations

import fcntl
import logging
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ingest.ledger import GENESIS, Ledger
from ingest.ledger_head import check_extends, check_signature
from rag.errors import LedgerError
from rag.protocols import VectorStore
from rag.settings import Settings

log = logging.getLogger(__name__)


@contextmanager
def ingest_lock(data_dir: Path) -> Iterator[None]:
    """The lock every writer of the data dir holds (`Ingestor` takes the same one)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    with (data_dir / "ingest.lock").open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def sign_head(ledger: Ledger, expect: dict[str, Any] | None = None) -> tuple[int, str] | None:
    """Sign the ledger's current head with its key (made if missing); (index, hash), or None if the head is
    already signed and the ledger verifies.

    Only the hash chain is checked, plus that it still reaches the head the key last signed for this ledger
    and `expect` (a head kept elsewhere): signing acknowledges every entry, so look at the ledger first."""
    key = ledger.key
    if key is None:
        raise LedgerError("sign_head needs the ledger key.")
    ledger.repair_torn_tail()
    if key.exists() and ledger.head_path.exists() and ledger.verify().ok:
        return None
    hashes, problems = ledger.chain()
    problems.extend(ledger.remembered_problems(hashes))
    if expect is not None:
        problems.extend(check_extends(key, expect, hashes))
    record = ledger.read_head_file()
    if key.exists() and record.get("signed") and not check_signature(key, record):
        # A validly signed head that the chain goes past: the entries after it were never acknowledged.
        problems.append(f"the head is signed at entry {record.get('index')}; entries after it are not acknowledged")
    if problems:
        raise LedgerError("Not signing the ledger head: " + "; ".join(problems[:3]))
    if not key.exists():
        key.create()
    key.ensure_public_file()
    signed = ledger.sign_tail()
    log.warning("signed the head of %s at entry %d", ledger.path, signed[0])
    return signed


@dataclass
class ResetReport:
    entries: int
    chunks: int


def reset(settings: Settings, ledger: Ledger, store: VectorStore) -> ResetReport:
    """Delete the ledger, its head, every stored chunk, the BM25 index and the quarantine report; the ledger key
    forgets the head it signed for this ledger. Keys and trust files are kept."""
    with ingest_lock(settings.data_dir):
        entries = sum(1 for _ in ledger.entries()) if ledger.path.exists() else 0
        ids = store.ids()
        store.delete(ids)
        for path in (ledger.path, ledger.head_path, settings.quarantine_path):
            path.unlink(missing_ok=True)
        shutil.rmtree(settings.lexical_path, ignore_errors=True)
        if ledger.key is not None and ledger.key.exists() and ledger.key.remembered(ledger.path) is not None:
            ledger.key.remember(ledger.path, None, None)
    log.warning("reset %s: %d ledger entries and %d chunks deleted", settings.data_dir, entries, len(ids))
    return ResetReport(entries=entries, chunks=len(ids))


def ledger_page(ledger: Ledger, offset: int, limit: int) -> tuple[list[dict[str, Any]], int, str]:
    """Entries `offset` to `offset + limit` (oldest first), how many there are and the last one's hash (the
    head); one pass over the file."""
    page: list[dict[str, Any]] = []
    total, head = 0, GENESIS
    for n, entry in enumerate(ledger.entries()):
        if offset <= n < offset + limit:
            page.append(entry)
        total, head = n + 1, str(entry.get("hash"))
    return page, total, head


@dataclass
class Check:
    """`rag ledger verify`'s outcome: the chain, the signed head, `expect`, and the store against the ledger."""

    ok: bool
    entries: int
    head: str
    problems: list[str]
    store_checked: bool


def check(settings: Settings, ledger: Ledger, store: VectorStore | None, expect: dict[str, Any] | None = None) -> Check:
    """Verify the ledger and, given a store, that it holds exactly what the ledger's live documents commit.

    Under the ingest lock: an ingest writes chunks before the entry that commits them, so look between two
    ingests, not during one."""
    from ingest.commitments import cross_check

    with ingest_lock(settings.data_dir):
        report = ledger.verify(expect=expect)
        problems = list(report.problems)
        if store is not None:
            problems.extend(cross_check(ledger.live(), store))
    return Check(not problems, report.entries, report.head, problems, store is not None)
