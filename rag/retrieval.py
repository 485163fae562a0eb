"""Hybrid retrieval: dense (the vector store) and lexical (BM25 via bm25s), fused by reciprocal rank.

The BM25 index is rebuilt from the store when ingest or removal changes it (the ingestor's
`on_change` hook) and saved with the ledger head it reflects; queries load it once and never
rebuild it, unless the ledger moved on without it (a crash between ingest and rebuild, or an ingest in
another process that has not saved its index yet). A retrieved chunk is used only if the `ChunkGate`
admits it (the ledger's commitments, checked at answer time); a refused one makes room for the next. An
admitted chunk carries the metadata the ledger commits, and filters are applied to that.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import threading
from collections.abc import Callable, Container, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from rag.errors import InvalidInputError
from rag.protocols import Embedder, VectorStore
from rag.reader.asked import Rarity
from rag.types import StoredChunk

log = logging.getLogger(__name__)

# Questions of different lengths, for warm-up only: each new query length costs the first call more.
WARM_UP_QUERIES = (
    "What is it?",
    "Who wrote it and when?",
    "Which statement ends the loop early?",
    "How many people lived in the city at the start of the century?",
    "What did the committee decide about the proposal after the second vote in the spring?",
    "Why does the evaluation of the expression stop as soon as the result of the whole condition is known?",
)

FILTER_FIELDS = ("license", "authors", "origin", "doc_id", "signer_name", "title")
RRF_K = 60


class ChunkGate(Protocol):
    """Says which stored chunks may be served now (the ledger's commitments and the signers trusted now)."""

    def admit(self, chunk: StoredChunk) -> StoredChunk | None:
        """The chunk with the metadata the ledger commits for it (what citations show), or None to drop it."""
        ...


@dataclass(frozen=True)
class Hit:
    """A retrieved chunk with its fused score and the ranks that produced it."""

    chunk: StoredChunk
    fused: float
    dense_score: float | None
    dense_rank: int | None
    lexical_rank: int | None


def where_clause(filters: dict[str, Any] | None) -> dict[str, Any] | None:
    """Translate user filters into a Chroma `where`; unknown fields are refused, not ignored."""
    if not filters:
        return None
    unknown = sorted(set(filters) - set(FILTER_FIELDS))
    if unknown:
        raise InvalidInputError(
            f"Unknown filter field(s): {', '.join(unknown)}; allowed: {', '.join(FILTER_FIELDS)}.",
            code="unknown_filter",
        )
    clauses: list[dict[str, Any]] = []
    for key, value in filters.items():
        if isinstance(value, list):
            clauses.append({key: {"$in": [str(v) for v in value]}})
        else:
            clauses.append({key: str(value)})
    return clauses[0] if len(clauses) == 1 else {"$and": clauses}


def _matches(metadata: dict[str, Any], filters: dict[str, Any] | None) -> bool:
    if not filters:
        return True
    for key, value in filters.items():
        allowed = [str(v) for v in value] if isinstance(value, list) else [str(value)]
        if str(metadata.get(key)) not in allowed:
            return False
    return True


class LexicalIndex:
    """BM25 over every stored chunk, persisted in the data dir beside the ledger head it reflects."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._retriever: Any = None
        self._ids: list[str] = []
        self._head: str | None = None
        self._rarity: Rarity | None = None
        self._rarity_lock = threading.Lock()

    def rebuild(self, store: VectorStore, head: str, allowed: Container[str] | None = None) -> None:
        """Index the store's chunks (those in `allowed` only, when given: the ledger's commitments)."""
        import bm25s

        ids = [i for i in store.ids() if allowed is None or i in allowed]
        chunks = store.get(ids) if ids else []
        retriever = None
        if chunks:
            retriever = bm25s.BM25()
            retriever.index(
                bm25s.tokenize([c.text for c in chunks], stopwords="en", show_progress=False), show_progress=False
            )
        self._retriever, self._ids, self._head, self._rarity = retriever, [c.id for c in chunks], head, None
        self._save(retriever, head)

    def _save(self, retriever: Any, head: str) -> None:
        """Replace the saved index; an ingest in another process may be saving its own at the same moment,
        so each writes a private directory and a lost race only costs the loser its copy on disk."""
        self.directory.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=self.directory.name + ".", suffix=".tmp", dir=self.directory.parent))
        old = tmp.with_suffix(".old")
        try:
            if retriever is not None:
                retriever.save(str(tmp / "bm25"))
            (tmp / "meta.json").write_text(json.dumps({"head": head, "ids": self._ids}))
            if self.directory.exists():
                os.replace(self.directory, old)
            os.replace(tmp, self.directory)
        except OSError as exc:
            log.warning("BM25 index not saved (%s); the one in memory is used", exc)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.rmtree(old, ignore_errors=True)

    def load(self) -> str | None:
        """Load the saved index; returns the ledger head it reflects (None if there is none)."""
        meta = self.directory / "meta.json"
        if not meta.exists():
            return None
        import bm25s

        try:
            info = json.loads(meta.read_text())
            ids, head = [str(i) for i in info["ids"]], str(info["head"])
            if len(set(ids)) != len(ids):
                log.warning("the saved BM25 index names a chunk twice: rebuilt")
                return None
            retriever = bm25s.BM25.load(str(self.directory / "bm25")) if ids else None
            if retriever is not None and int(retriever.scores["num_docs"]) != len(ids):
                log.warning("the saved BM25 index does not hold the chunks its list names: rebuilt")
                return None  # also what a swap by another process between the two reads looks like
        except (OSError, ValueError, KeyError, TypeError):
            return None  # replaced under us by another process: rebuild
        self._retriever, self._ids, self._head, self._rarity = retriever, ids, head, None
        return head

    @property
    def head(self) -> str | None:
        return self._head

    def follow(self, store: VectorStore, head: str, allowed: Container[str] | None = None) -> None:
        """Reflect ledger `head`: keep the loaded index, else load the saved one, else rebuild from the store.

        With `allowed` (the chunk ids the ledger commits), an index that names any other chunk is rebuilt
        from the committed chunks only: a saved index is a file in the data dir, not trusted on its own."""
        if self._head != head and self.load() != head:
            self.rebuild(store, head, allowed)
        elif allowed is not None and not all(i in allowed for i in self._ids):
            log.warning("the BM25 index names chunks the ledger does not commit: rebuilt from committed chunks")
            self.rebuild(store, head, allowed)

    def rarity(self) -> Rarity:
        """How many indexed chunks hold each word (for `rag.reader.asked.focus`), worked out once per index
        from BM25's own postings: a word's count is the length of its column."""
        with self._rarity_lock:  # one computation at a time; a request that waited finds it done
            retriever, ids, rarity = self._retriever, self._ids, self._rarity
            if rarity is not None:
                return rarity
            rarity = Rarity()
            if retriever is not None and ids:
                pointers = retriever.scores["indptr"]
                columns = len(pointers) - 1
                counts = (
                    (word, int(pointers[i + 1] - pointers[i]))
                    for word, i in retriever.vocab_dict.items()
                    if isinstance(i, int) and 0 <= i < columns
                )
                rarity = Rarity.from_counts(len(ids), counts)
            if self._retriever is retriever:  # not replaced meanwhile (a rebuild resets the cache)
                self._rarity = rarity
            return rarity

    def search(self, query: str, k: int) -> list[tuple[str, float]]:
        if self._retriever is None or not self._ids:
            return []
        import bm25s

        tokens = bm25s.tokenize([query], stopwords="en", show_progress=False)
        if not tokens.vocab:
            return []
        k = min(k, len(self._ids))
        docs, scores = self._retriever.retrieve(tokens, k=k, show_progress=False)
        found: dict[str, float] = {}  # each chunk once: repeats must not add up in the fusion
        for d, s in zip(docs[0], scores[0], strict=True):
            if float(s) > 0 and 0 <= int(d) < len(self._ids):
                found.setdefault(self._ids[int(d)], float(s))
        return list(found.items())


class HybridRetriever:
    """Dense + BM25, fused with reciprocal rank fusion (k=60)."""

    def __init__(self, store: VectorStore, embedder: Embedder, lexical: LexicalIndex, *, candidates: int = 20) -> None:
        self.store = store
        self.embedder = embedder
        self.lexical = lexical
        self.candidates = candidates

    def retrieve(
        self,
        query: str,
        top_k: int = 4,
        filters: dict[str, Any] | None = None,
        *,
        admit: Callable[[StoredChunk], StoredChunk | None] | None = None,
    ) -> list[Hit]:
        """The `top_k` best fused hits; with `admit`, a refused chunk is skipped and the next one taken, and an
        admitted one is used as `admit` returns it (the committed metadata), filters checked on that."""
        where = where_clause(filters)
        # Ranks need only ids and scores; text and metadata are read for the winners alone.
        dense = self.store.query(self.embedder.embed([query])[0], self.candidates, where=where, content=False)
        lexical = self.lexical.search(query, self.candidates * 3 if filters else self.candidates)
        fused: dict[str, float] = {}
        dense_score = {c.id: c.score for c in dense}
        dense_rank = {c.id: r for r, c in enumerate(dense)}
        for rank, chunk in enumerate(dense):
            fused[chunk.id] = fused.get(chunk.id, 0.0) + 1.0 / (RRF_K + rank + 1)
        lexical_rank: dict[str, int] = {}
        for rank, (chunk_id, _) in enumerate(lexical):
            lexical_rank[chunk_id] = rank
            fused[chunk_id] = fused.get(chunk_id, 0.0) + 1.0 / (RRF_K + rank + 1)
        ranked = sorted(fused, key=lambda i: -fused[i])
        chosen: list[StoredChunk] = []
        start = 0
        while len(chosen) < top_k and start < len(ranked):
            page = ranked[start : start + top_k - len(chosen)]
            start += len(page)
            found = {c.id: c for c in self.store.get(page, vectors=admit is not None)}
            for i in page:
                got = found.get(i) if admit is None or i not in found else admit(found[i])
                # Dense hits passed the filter in the store; with a gate every hit is checked on what it admits.
                if got is not None and ((i in dense_rank and admit is None) or _matches(got.metadata, filters)):
                    chosen.append(got)
        return [
            Hit(
                chunk=chunk,
                fused=fused[chunk.id],
                dense_score=dense_score.get(chunk.id),
                dense_rank=dense_rank.get(chunk.id),
                lexical_rank=lexical_rank.get(chunk.id),
            )
            for chunk in chosen
        ]

    def warm_up(self) -> None:
        """Run a few retrievals: loads the embedder and primes its kernels, the vector index, the BM25
        index and SQLite's page cache, so that the first user query is not the slow one."""
        self.embedder.warm_up()
        if self.store.count() == 0:
            return
        for query in WARM_UP_QUERIES:
            self.retrieve(query, top_k=4)

    def dense_similarity(self, query: str, texts: Sequence[str]) -> list[float]:
        vectors = self.embedder.embed([query, *texts])
        q = vectors[0]
        return [sum(a * b for a, b in zip(q, v, strict=True)) for v in vectors[1:]]
