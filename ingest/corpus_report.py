"""`rag corpus report`: the corpus of every version the ledger can rebuild, and warnings when it homogenises.

A version is the state after one burst of ledger entries: the ledger has no run marker, so entries less than
`version_gap_s` apart count as one ingest run. Counts, characters, the human share and the counts per origin,
signer and licence come from the ledger and are exact for every version. The text measures (lexical diversity,
near duplicates, embedding spread, tail coverage) need chunk texts, and the store holds only the current ones:
for a past version they are computed over its chunks still in the store (`text_coverage` says what share), so
they are approximate wherever a version's documents were since replaced or removed.

Each version is compared three ways: with the version before it (a sudden change), with the version `window`
versions back and with a baseline (cumulative drift: a slow flood of near copies, diversity or human share lost a
little at a time, each step under the per-version limits). The baseline is a pinned reference version
(`rag corpus report --pin-baseline` saves the latest one, with its rare words, in the data dir) or else the first
version. Tail loss is measured against the baseline's rare words: the share of them a version still holds. Only a
pinned baseline keeps the words of texts removed since (the store no longer has them). The same goes for the
embedding space: the baseline's chunk embeddings are grouped into up to CLUSTERS topic clusters (k-means), and
`topic_clusters_covered` is the share of those clusters a version still has a chunk nearest to; a version that
lost a whole topic (the tail in meaning, not only in words) shows it even when its words survive elsewhere.
"""

from __future__ import annotations

import re
import zlib
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np

from ingest.ledger import GONE_ACTIONS, LIVE_ACTIONS
from rag.settings import CorpusReportSettings

_WORD = re.compile(r"[^\W_]+", re.UNICODE)
MATTR_WINDOW = 500
DISTINCT_WINDOW = 1000
RARE_MAX = 2  # a word seen at most this often in every text the report can read is in the tail
SHINGLE = 3
CLUSTERS = 16  # topic clusters of the baseline (fewer for a small one: at least 4 chunks each)


@dataclass(frozen=True)
class ChunkText:
    """A stored chunk's text, and its embedding when the store keeps one."""

    text: str
    embedding: list[float] | None = None


@dataclass
class Version:
    number: int
    time: str
    ledger_index: int
    figures: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    present: list[str] = field(default_factory=list, repr=False)  # hashes of its chunks the store still holds


def versions_of(entries: Iterable[dict[str, Any]], gap_s: float) -> list[tuple[int, str, dict[str, dict[str, Any]]]]:
    """(last ledger index, time, live entries by doc id) after each burst of entries that changed the store."""
    out: list[tuple[int, str, dict[str, dict[str, Any]]]] = []
    live: dict[str, dict[str, Any]] = {}
    last_time: datetime | None = None
    changed, index, stamp = False, -1, ""
    for entry in entries:
        when = _parse(str(entry.get("time", "")))
        if changed and last_time is not None and when is not None and (when - last_time).total_seconds() > gap_s:
            out.append((index, stamp, dict(live)))
            changed = False
        action = entry.get("action")
        if action in LIVE_ACTIONS:
            live[entry["doc_id"]] = entry
            changed = True
        elif action in GONE_ACTIONS and entry.get("doc_id") in live:
            del live[entry["doc_id"]]
            changed = True
        last_time = when or last_time
        index, stamp = int(entry.get("index", index + 1)), str(entry.get("time", stamp))
    if changed:
        out.append((index, stamp, dict(live)))
    return out


@dataclass
class Baseline:
    """The version later ones are compared with: its figures and its rare words (seen at most RARE_MAX times)."""

    version: int
    time: str
    ledger_index: int
    figures: dict[str, Any]
    tail: set[str]
    pinned: bool = False
    centroids: list[list[float]] = field(default_factory=list)  # its topic clusters (unit vectors)

    def as_dict(self) -> dict[str, Any]:
        """What `--pin-baseline` saves (and `Baseline.load` reads back)."""
        return {
            "version": self.version,
            "time": self.time,
            "ledger_index": self.ledger_index,
            "figures": self.figures,
            "tail": sorted(self.tail),
            "centroids": [[round(x, 5) for x in c] for c in self.centroids],
        }

    @classmethod
    def load(cls, data: Mapping[str, Any]) -> Baseline:
        return cls(
            int(data["version"]),
            str(data["time"]),
            int(data["ledger_index"]),
            dict(data["figures"]),
            set(data.get("tail") or []),
            pinned=True,
            centroids=[[float(x) for x in c] for c in data.get("centroids") or []],
        )


def build_report(
    entries: list[dict[str, Any]],
    chunks: Mapping[str, ChunkText],
    settings: CorpusReportSettings,
    *,
    human_floor: float,
    gap_s: float = 60.0,
    baseline: Baseline | None = None,
) -> dict[str, Any]:
    """Figures per version, oldest first, with the warnings each version raises against the one before, the
    version `settings.window` back and the baseline (`baseline`, a pinned one, or else the first version; only
    versions after it are compared with it)."""
    versions, vocabularies, first = _versions(entries, chunks, settings, human_floor, gap_s)
    base = baseline or first
    for i, version in enumerate(versions):
        kept = len(base.tail & vocabularies[i]) / len(base.tail) if base and base.tail else None
        version.figures["baseline_tail_kept"] = round(kept, 4) if kept is not None else None
        covered = _clusters_covered(base.centroids, [chunks[h].embedding for h in version.present]) if base else None
        version.figures["topic_clusters_covered"] = covered
    for i, version in enumerate(versions):
        if i:
            version.warnings = _warnings(versions[i - 1].figures, version.figures, settings)
        sudden = {w.split(" ", 1)[0] for w in version.warnings}
        start = versions[max(0, i - settings.window)]
        if start.number != version.number and (base is None or start.ledger_index != base.ledger_index):
            label = f"since version {start.number}"
            version.warnings += _drift(start.figures, version.figures, settings, label, sudden)
        if base is not None and version.ledger_index > base.ledger_index:
            label = f"since the {'pinned ' if base.pinned else ''}baseline (version {base.version}, {base.time[:16]})"
            version.warnings += _drift(base.figures, version.figures, settings, label, sudden)
            kept = version.figures["baseline_tail_kept"]
            if kept is not None and kept < 1 - settings.max_tail_loss:
                version.warnings.append(f"only {kept:.1%} of the baseline's rare words are left {label}: tail loss")
            covered = version.figures["topic_clusters_covered"]
            if covered is not None and covered < 1 - settings.max_tail_loss:
                k = len(base.centroids)
                version.warnings.append(
                    f"chunks near only {round(covered * k)} of the baseline's {k} topic clusters are left {label}: "
                    "whole topics lost"
                )
    return {
        "human_floor": human_floor,
        "version_gap_s": gap_s,
        "window": settings.window,
        "baseline": (
            {"version": base.version, "time": base.time, "ledger_index": base.ledger_index, "pinned": base.pinned}
            if base
            else None
        ),
        "approximate": "text measures of a past version use only its chunks still in the store (text_coverage)",
        "versions": [
            {"version": v.number, "time": v.time, "ledger_index": v.ledger_index, **v.figures, "warnings": v.warnings}
            for v in versions
        ],
        "warnings": [f"version {v.number}: {w}" for v in versions for w in v.warnings],
    }


def latest_baseline(
    entries: list[dict[str, Any]],
    chunks: Mapping[str, ChunkText],
    settings: CorpusReportSettings,
    *,
    human_floor: float,
    gap_s: float = 60.0,
) -> Baseline | None:
    """The latest version as a baseline to pin (None for an empty ledger)."""
    states = versions_of(entries, gap_s)
    if not states:
        return None
    index, stamp, live = states[-1]
    figures, _, present = _figures(live, chunks, _tail_words(chunks.values()), {}, settings, human_floor)
    centroids = topic_centroids([chunks[h].embedding for h in present])
    return Baseline(len(states), stamp, index, figures, _rare(live, chunks), pinned=True, centroids=centroids)


def _versions(
    entries: list[dict[str, Any]],
    chunks: Mapping[str, ChunkText],
    settings: CorpusReportSettings,
    human_floor: float,
    gap_s: float,
) -> tuple[list[Version], list[set[str]], Baseline | None]:
    """Every version's figures and vocabulary, and the first version as a baseline."""
    states = versions_of(entries, gap_s)
    tail = _tail_words(chunks.values())
    signatures: dict[str, Any] = {}
    versions: list[Version] = []
    vocabularies: list[set[str]] = []
    first: Baseline | None = None
    for number, (index, stamp, live) in enumerate(states, start=1):
        figures, vocabulary, present = _figures(live, chunks, tail, signatures, settings, human_floor)
        versions.append(Version(number, stamp, index, figures, present=present))
        vocabularies.append(vocabulary)
        if first is None:
            centroids = topic_centroids([chunks[h].embedding for h in present])
            first = Baseline(number, stamp, index, dict(figures), _rare(live, chunks), centroids=centroids)
    return versions, vocabularies, first


def _figures(
    live: dict[str, dict[str, Any]],
    chunks: Mapping[str, ChunkText],
    tail: set[str],
    signatures: dict[str, Any],
    settings: CorpusReportSettings,
    human_floor: float,
) -> tuple[dict[str, Any], set[str], list[str]]:
    """A version's figures, the set of words its readable chunks hold, and those chunks' hashes."""
    docs = list(live.values())
    chars = sum(int(e.get("chars", 0)) for e in docs)
    human = sum(int(e.get("chars", 0)) for e in docs if e.get("origin") == "human")
    hashes = [str(h) for e in docs for h in (e.get("chunk_sha256") or [])]
    n_chunks = sum(int(e.get("chunks", 0)) for e in docs)
    present = [h for h in hashes if h in chunks]
    texts = [chunks[h].text for h in present]
    words = [w for t in texts for w in _words(t)]
    share = human / chars if chars else 0.0
    vocabulary = set(words)
    figures: dict[str, Any] = {
        "documents": len(docs),
        "chunks": n_chunks,
        "characters": chars,
        "human_share": round(share, 4),
        "below_floor": share < human_floor if chars else False,
        "origins": dict(Counter(str(e.get("origin")) for e in docs).most_common()),
        "signers": dict(Counter(str(e.get("signer_name") or e.get("signer_keyid", "")) for e in docs).most_common()),
        "licenses": dict(Counter(str(e.get("license")) for e in docs).most_common()),
        "text_coverage": round(len(present) / n_chunks, 4) if n_chunks else 1.0,
        "distinct_1": _distinct(words, 1),
        "distinct_2": _distinct(words, 2),
        "mattr": _mattr(words),
        "compression_ratio": _compression(texts),
        "near_duplicate_rate": _near_duplicates(present, chunks, signatures, settings.near_duplicate_threshold),
        "embedding_spread": _spread([chunks[h].embedding for h in present]),
        "tail_coverage": round(len(tail & vocabulary) / len(tail), 4) if tail else None,
        "synthetic": _synthetic(docs),
    }
    return figures, vocabulary, present


def _warnings(before: dict[str, Any], after: dict[str, Any], settings: CorpusReportSettings) -> list[str]:
    found = []
    for name in ("mattr", "distinct_2"):
        old, new = before.get(name), after.get(name)
        if old and new is not None and (old - new) / old > settings.max_diversity_drop:
            limit = settings.max_diversity_drop
            found.append(f"{name} fell {old:.3f} → {new:.3f} (more than {limit:.0%}): homogenising")
    drop = before["human_share"] - after["human_share"]
    if before["characters"] and drop > settings.max_human_share_drop:
        found.append(f"human share fell {before['human_share']:.3f} → {after['human_share']:.3f}")
    if after["below_floor"]:
        found.append(f"human share {after['human_share']:.3f} is under the floor")
    rise = (after["near_duplicate_rate"] or 0.0) - (before["near_duplicate_rate"] or 0.0)
    if rise > settings.max_near_duplicate_rise:
        found.append(
            f"near-duplicate rate rose {before['near_duplicate_rate']:.3f} → {after['near_duplicate_rate']:.3f}: "
            "a flood of near copies"
        )
    return found


def _drift(
    start: dict[str, Any], now: dict[str, Any], settings: CorpusReportSettings, label: str, sudden: set[str]
) -> list[str]:
    """Cumulative drift from `start` beyond the drift limits, for figures the version's own step did not warn of
    (`sudden`: first words of its step warnings)."""
    found = []
    for name in ("mattr", "distinct_2"):
        old, new = start.get(name), now.get(name)
        if name not in sudden and old and new is not None and (old - new) / old > settings.max_drift_diversity_drop:
            found.append(f"{name} fell {old:.3f} → {new:.3f} {label}: homogenising")
    drop = (start.get("human_share") or 0.0) - (now.get("human_share") or 0.0)
    if "human" not in sudden and start.get("characters") and drop > settings.max_drift_human_share_drop:
        found.append(f"human share fell {start['human_share']:.3f} → {now['human_share']:.3f} {label}")
    rise = (now.get("near_duplicate_rate") or 0.0) - (start.get("near_duplicate_rate") or 0.0)
    if "near-duplicate" not in sudden and rise > settings.max_drift_near_duplicate_rise:
        found.append(
            f"near-duplicate rate rose {start.get('near_duplicate_rate') or 0.0:.3f} → "
            f"{now.get('near_duplicate_rate') or 0.0:.3f} {label}: a slow flood of near copies"
        )
    return found


def _rare(live: dict[str, dict[str, Any]], chunks: Mapping[str, ChunkText]) -> set[str]:
    """The words a version's readable chunks hold at most RARE_MAX times (its tail)."""
    texts = [chunks[h] for e in live.values() for h in (e.get("chunk_sha256") or []) if h in chunks]
    return _tail_words(texts)


def _words(text: str) -> list[str]:
    return [w.casefold() for w in _WORD.findall(text)]


def _distinct(words: list[str], n: int, window: int = DISTINCT_WINDOW) -> float | None:
    """Distinct n-grams per n-gram, averaged over windows of `window` words (the raw ratio falls as a corpus grows)."""
    spans = [words[i : i + window] for i in range(0, max(1, len(words) - window + 1), window)]
    ratios = []
    for span in spans:
        grams = list(zip(*(span[i:] for i in range(n)), strict=False))
        if grams:
            ratios.append(len(set(grams)) / len(grams))
    return round(sum(ratios) / len(ratios), 4) if ratios else None


def _mattr(words: list[str], window: int = MATTR_WINDOW) -> float | None:
    """Moving-average type-token ratio: distinct words per window, averaged over every window position."""
    if not words:
        return None
    if len(words) <= window:
        return round(len(set(words)) / len(words), 4)
    counts = Counter(words[:window])
    total = len(counts)
    for i in range(window, len(words)):
        out, inn = words[i - window], words[i]
        counts[out] -= 1
        if counts[out] == 0:
            del counts[out]
        counts[inn] += 1
        total += len(counts)
    return round(total / (len(words) - window + 1) / window, 4)


def _compression(texts: list[str]) -> float | None:
    """Raw bytes per zlib-compressed byte: higher means more repetitive text."""
    data = "\n".join(texts).encode()
    return round(len(data) / len(zlib.compress(data, 9)), 4) if data else None


def _near_duplicates(
    present: list[str], chunks: Mapping[str, ChunkText], cache: dict[str, Any], threshold: float
) -> float | None:
    """Share of chunks with a near copy (estimated Jaccard of word 3-grams ≥ threshold) elsewhere in the version."""
    from datasketch import MinHash, MinHashLSH

    if not present:
        return None
    template = MinHash(num_perm=64, seed=7)
    for h in present:
        if h not in cache:
            words = _words(chunks[h].text)
            grams = {" ".join(words[i : i + SHINGLE]).encode() for i in range(max(1, len(words) - SHINGLE + 1))}
            sig = MinHash(num_perm=64, seed=7, permutations=template.permutations, scheme=template.scheme)
            sig.update_batch(list(grams))
            cache[h] = sig
    lsh = MinHashLSH(threshold=threshold, num_perm=64)
    copies = Counter(present)
    for h in copies:
        lsh.insert(h, cache[h])
    near = {h for h in copies if any(o != h and cache[h].jaccard(cache[o]) >= threshold for o in lsh.query(cache[h]))}
    return round(sum(1 for h in present if copies[h] > 1 or h in near) / len(present), 4)


def _spread(embeddings: list[list[float] | None]) -> float | None:
    """Mean cosine distance of the chunks' embeddings to their centroid (0 when every chunk says the same)."""
    vectors = [e for e in embeddings if e is not None]
    if len(vectors) < 2:
        return None
    matrix = np.asarray(vectors, dtype=np.float64)
    matrix /= np.linalg.norm(matrix, axis=1, keepdims=True) + 1e-12
    centroid = matrix.mean(axis=0)
    centroid /= np.linalg.norm(centroid) + 1e-12
    return round(float(np.mean(1.0 - matrix @ centroid)), 4)


def _unit(embeddings: Iterable[list[float] | None]) -> np.ndarray:
    vectors = [e for e in embeddings if e is not None]
    matrix = np.asarray(vectors, dtype=np.float64).reshape(len(vectors), -1)
    return matrix / (np.linalg.norm(matrix, axis=1, keepdims=True) + 1e-12)


def topic_centroids(embeddings: list[list[float] | None], clusters: int = CLUSTERS) -> list[list[float]]:
    """Up to `clusters` topic clusters of a version's chunks (k-means on unit vectors, seeded: the same corpus
    gives the same clusters), at least 4 chunks a cluster; none for fewer than 8 chunks."""
    matrix = _unit(embeddings)
    k = min(clusters, len(matrix) // 4)
    if k < 2:
        return []
    from sklearn.cluster import KMeans

    centres = KMeans(n_clusters=k, n_init=4, random_state=0).fit(matrix).cluster_centers_
    centres /= np.linalg.norm(centres, axis=1, keepdims=True) + 1e-12
    return [[float(x) for x in c] for c in centres]


def _clusters_covered(centroids: list[list[float]], embeddings: list[list[float] | None]) -> float | None:
    """The share of the baseline's topic clusters that some chunk of this version is nearest to."""
    matrix = _unit(embeddings)
    if not centroids or not len(matrix):
        return None if not centroids else 0.0
    centres = np.asarray(centroids, dtype=np.float64)
    if centres.shape[1] != matrix.shape[1]:
        return None  # another embedder's vectors: not comparable
    nearest = np.argmax(matrix @ centres.T, axis=1)
    return round(len(set(nearest.tolist())) / len(centres), 4)


def _tail_words(chunks: Iterable[ChunkText]) -> set[str]:
    counts = Counter(w for c in chunks for w in _words(c.text))
    return {w for w, n in counts.items() if n <= RARE_MAX}


def _synthetic(docs: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The detector's per-document scores, if the ledger holds them (`synthetic`: a score or {"score": ...})."""
    scores = []
    for entry in docs:
        value = entry.get("synthetic")
        value = value.get("score") if isinstance(value, dict) else value
        if isinstance(value, int | float) and not isinstance(value, bool):
            scores.append(float(value))
    if not scores:
        return None
    arr = np.asarray(scores)
    flagged = sum(1 for e in docs if isinstance(e.get("synthetic"), dict) and e["synthetic"].get("flagged"))
    quantiles = {"mean": arr.mean(), "p50": np.median(arr), "p90": np.quantile(arr, 0.9), "max": arr.max()}
    return {"scored": len(scores), **{k: round(float(v), 4) for k, v in quantiles.items()}, "flagged": flagged}


def _parse(stamp: str) -> datetime | None:
    try:
        return datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    except ValueError:
        return None
