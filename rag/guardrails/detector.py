"""A zero-shot synthetic-text score at ingest: Fast-DetectGPT's analytic sampling discrepancy.

Bao et al. (ICLR 2024) compare the log-likelihood of the text's own tokens with what the model expects
of a token it would sample itself. With one model as sampler and scorer, both moments come from the
logits at each position t, exactly and without sampling:

    ll_t = log p(x_t | x_<t),   mu_t = sum_v p(v) log p(v),   var_t = sum_v p(v) log p(v)^2 - mu_t^2
    score = (sum_t ll_t - sum_t mu_t) / sqrt(sum_t var_t)

Text drawn from the model at temperature 1 scores about 0; people pick less expected words (negative);
decoding that sharpens the distribution (lower temperature, top-p, greedy) scores well above 0. The
score depends on the scoring model, its weights and the tokens scored, so the threshold in the settings
holds for the configuration it was measured with (README, `bench/detector.py`).

Windows: a document is cut into windows of `max_tokens // windows` tokens that tile it (the last one ends at
its end), each scored on its own; the document's score is the highest window score, so machine text between
human paragraphs is not averaged away. Cost: Gemma's 262k-entry output layer dominates, so at most `windows`
windows (`max_tokens` tokens) are scored: a longer document is scored on that many windows spread evenly over
it, and the share of its tokens they cover is recorded. Logits are computed a slice of positions at a time.
"""

from __future__ import annotations

import hashlib
import logging
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from rag.progress import step
from rag.settings import DetectorSettings

REASON = "synthetic_suspected"
FAILED = "detector_failed"
log = logging.getLogger(__name__)
POSITIONS_PER_SLICE = 64  # rows of logits held at once: 64 x 262k floats = 67 MB for Gemma


@dataclass(frozen=True)
class SyntheticScore:
    model: str
    score: float
    tokens: int
    seconds: float
    coverage: float = 1.0  # share of the document's tokens inside a scored window
    windows: int = 1
    pooled: float = 0.0  # the criterion over all scored windows together (for comparison)

    def flagged(self, threshold: float) -> bool:
        return self.tokens > 0 and self.score > threshold


@dataclass
class TokenStats:
    """Sums over scored positions: log-likelihood of the text, expected log-likelihood, its variance."""

    ll: float = 0.0
    mu: float = 0.0
    var: float = 0.0
    tokens: int = 0

    def add(self, other: TokenStats) -> None:
        self.ll += other.ll
        self.mu += other.mu
        self.var += other.var
        self.tokens += other.tokens

    @property
    def criterion(self) -> float:
        """The analytic sampling discrepancy; 0 when nothing was scored (or the model was certain throughout)."""
        if self.tokens == 0 or self.var <= 0.0:
            return 0.0
        return (self.ll - self.mu) / math.sqrt(self.var)


def token_stats(logits: Any, targets: Any) -> TokenStats:
    """Stats of rows `logits` [T, V] (row t predicts `targets[t]`), in float64 for the sums."""
    import torch

    # Two [T, V] temporaries besides the logits (Gemma: 1 MB a row): p log p is formed in place of p.
    log_probs = logits.to(torch.float32).log_softmax(-1)
    ll = log_probs.gather(-1, targets.reshape(-1, 1)).squeeze(-1)
    weighted = log_probs.exp()
    mu = torch.linalg.vecdot(weighted, log_probs)
    second = torch.linalg.vecdot(weighted.mul_(log_probs), log_probs)
    del weighted
    var = (second - mu * mu).clamp_min(0.0)
    return TokenStats(
        ll=float(ll.double().sum()),
        mu=float(mu.double().sum()),
        var=float(var.double().sum()),
        tokens=int(targets.numel()),
    )


class ScoringModel(Protocol):
    """A causal LM seen as: text → token ids, and ids → logits predicting each next id."""

    name: str
    bos_id: int | None

    def encode(self, text: str) -> list[int]: ...

    def logit_slices(self, ids: Sequence[int]) -> Iterator[tuple[int, Any]]:
        """(start, rows): rows [n, V] of logits at positions start..start+n-1 of `ids` (each predicts the next)."""
        ...


def windows(ids: Sequence[int], limit: int, count: int) -> list[list[int]]:
    """The ids scored: windows of `limit // count` ids tiling the text (the last one ending at its end), or,
    when more than `count` would be needed, `count` of those spread evenly over it. A text no longer than one
    window is one window."""
    if not ids:
        return []
    count = max(1, min(count, limit))
    width = max(1, limit // count)
    if len(ids) <= width:
        return [list(ids)]
    starts = [*range(0, len(ids) - width, width), len(ids) - width]
    if len(starts) > count:
        step = (len(starts) - 1) / max(count - 1, 1)
        starts = [starts[round(w * step)] for w in range(count)] if count > 1 else [starts[0]]
    return [list(ids[start : start + width]) for start in starts]


def coverage(total: int, limit: int, count: int) -> float:
    """The share of `total` ids that `windows` scores (1.0 when it tiles the whole text)."""
    if total == 0:
        return 1.0
    count = max(1, min(count, limit))
    width = max(1, limit // count)
    tiles = max(1, math.ceil(total / width))
    return 1.0 if tiles <= count else min(1.0, count * width / total)


class FastDetectScorer:
    """Scores text with one `ScoringModel` (analytic Fast-DetectGPT, the model as sampler and scorer)."""

    def __init__(self, model: ScoringModel, settings: DetectorSettings) -> None:
        self.model = model
        self.settings = settings

    def window_stats(self, text: str) -> tuple[list[TokenStats], int]:
        """The stats of each scored window, and the number of tokens in the text."""
        import torch

        ids = self.model.encode(text)
        found = []
        for window in windows(ids, self.settings.max_tokens, self.settings.windows):
            # With a BOS first, every token of the window is predicted; without, the first one is context.
            scored = [self.model.bos_id, *window] if self.model.bos_id is not None else window
            if len(scored) < 2:
                continue
            targets = torch.tensor(scored[1:], dtype=torch.long)
            direct = getattr(self.model, "token_stats", None)  # a model that sums without whole logit rows
            if direct is not None:
                found.append(direct(scored[:-1], targets))
                continue
            stats = TokenStats()
            for start, rows in self.model.logit_slices(scored[:-1]):
                stats.add(token_stats(rows, targets[start : start + rows.shape[0]]))
                del rows  # before the next slice is computed, not after
            found.append(stats)
        return found, len(ids)

    def stats(self, text: str) -> TokenStats:
        """The stats of all scored windows pooled."""
        total = TokenStats()
        for stats in self.window_stats(text)[0]:
            total.add(stats)
        return total

    def score(self, text: str) -> SyntheticScore:
        """The highest window score (0 when nothing was scored), with the pooled one beside it."""
        started = time.perf_counter()
        found, length = self.window_stats(text)
        pooled = TokenStats()
        for stats in found:
            pooled.add(stats)
        best = max((stats.criterion for stats in found if stats.tokens), default=0.0)
        return SyntheticScore(
            self.model.name,
            best,
            pooled.tokens,
            time.perf_counter() - started,
            coverage=coverage(length, self.settings.max_tokens, self.settings.windows),
            windows=len(found),
            pooled=pooled.criterion,
        )


class TransformersScoringModel:
    """A local causal LM from `rag.models` (or a generator's already loaded copy) as a `ScoringModel`."""

    def __init__(self, name: str, model: Any, tokenizer: Any) -> None:
        self.name = name
        self.model = model
        self.tokenizer = tokenizer
        self.bos_id = tokenizer.bos_token_id
        self._lock = threading.Lock()

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer.backend_tokenizer.encode(text, add_special_tokens=False).ids)

    def logit_slices(self, ids: Sequence[int]) -> Iterator[tuple[int, Any]]:
        import torch

        cap = getattr(self.model.config, "final_logit_softcapping", None)
        with self._lock, torch.inference_mode():
            hidden = self.model.model(input_ids=torch.tensor([list(ids)], dtype=torch.long)).last_hidden_state[0]
            for start in range(0, hidden.shape[0], POSITIONS_PER_SLICE):
                rows = self.model.lm_head(hidden[start : start + POSITIONS_PER_SLICE]).float()
                if cap:  # Gemma 2 style soft-capping, applied as the model's own forward would
                    rows = torch.tanh(rows / cap) * cap
                yield start, rows


def load_scoring_model(settings: DetectorSettings, cache_root: Path, generator: Any = None) -> ScoringModel:
    """The scoring model: the generator's own loaded copy when it is the same local model, else the compact
    int8-row copy of `compact_scorer` (~340 MB for Gemma instead of 1,070 MB: what `rag ingest` loads).

    A generator running a quantised head (`compact-table`, `int8-head`) scores with those approximate logits;
    the threshold was measured with the float32 weights, and both approximations stay well within its margin
    (README)."""
    spec = getattr(generator, "spec", None)
    if spec is not None and spec.name == settings.model and hasattr(generator, "warm_up"):
        generator.warm_up()
        return TransformersScoringModel(settings.model, generator._model, generator._tokenizer)
    from rag.guardrails.compact_scorer import load_compact_scoring_model

    compact = load_compact_scoring_model(settings.model, cache_root)
    if compact is not None:
        return compact
    from rag.models import load_model

    model, tokenizer = load_model(settings.model, cache_root)
    return TransformersScoringModel(settings.model, model, tokenizer)


class SyntheticTextCheck:
    """The ingest check: scores each new document, marks it (`flag`) or holds it (`quarantine`, reason
    `synthetic_suspected`) unless a curator admitted that very text under that id (`admitted()`: pairs of
    document id and text digest)."""

    def __init__(
        self,
        settings: DetectorSettings,
        scorer: Callable[[], FastDetectScorer],
        admitted: Callable[[], set[tuple[str, str]]] = set,
    ) -> None:
        self.settings = settings
        self._scorer_factory = scorer
        self._scorer: FastDetectScorer | None = None
        self.admitted = admitted
        self._cache: OrderedDict[str, SyntheticScore] = OrderedDict()

    def scorer(self) -> FastDetectScorer:
        if self._scorer is None:
            step(
                f"detector: loading {self.settings.model} to score each new document for machine-written text "
                "(seconds a document on 2 cores; RAG_DETECTOR__POLICY=off skips it)"
            )
            self._scorer = self._scorer_factory()
        return self._scorer

    def score(self, text: str) -> SyntheticScore:
        """Scored once per text: the decision and the note of one document share it."""
        digest = _digest(text)
        found = self._cache.get(digest)
        if found is None:
            found = self.scorer().score(text)
            self._cache[digest] = found
            while len(self._cache) > 64:
                self._cache.popitem(last=False)
        return found

    def is_admitted(self, doc_id: str | None, text: str) -> bool:
        return doc_id is not None and (doc_id, _digest(text)) in self.admitted()

    def check(self, text: str, doc_id: str | None = None) -> tuple[str, str] | None:
        """Under `quarantine`: hold a document that scores above the threshold, or that could not be scored
        (`detector_failed`: only that document; the next ingest decides again)."""
        if self.settings.policy != "quarantine":
            return None
        try:
            scored = self.score(text)
        except Exception as error:  # a broken scorer holds this document, it does not stop the ingest
            log.exception("synthetic-text detector failed; the document is held (%s)", FAILED)
            return FAILED, f"the synthetic-text detector failed ({_short(error)}); held until it scores again"
        if not scored.flagged(self.settings.threshold):
            return None
        if self.is_admitted(doc_id, text):
            return None
        return (
            REASON,
            f"reads like machine text (Fast-DetectGPT score {scored.score:.2f} with {scored.model}, highest of "
            f"{scored.windows} windows over {scored.tokens} tokens ({scored.coverage:.0%} of the text), threshold "
            f"{self.settings.threshold}); held for a curator: rag admit DOC_ID",
        )

    def note(self, text: str, doc_id: str | None = None) -> dict[str, Any]:
        """What the ledger entry of an admitted document records about its score (nothing with policy `off`)."""
        if self.settings.policy == "off":
            return {}
        try:
            scored = self.score(text)
        except Exception as error:  # policy `flag`: admitted unscored, the error recorded
            log.exception("synthetic-text detector failed; the document is admitted unscored")
            return {"synthetic": {"error": _short(error)}}
        note: dict[str, Any] = {
            "score": round(scored.score, 4),
            "model": scored.model,
            "tokens": scored.tokens,
            "windows": scored.windows,
            "coverage": round(scored.coverage, 4),
            "threshold": self.settings.threshold,
            "flagged": scored.flagged(self.settings.threshold),
        }
        if note["flagged"] and self.is_admitted(doc_id, text):
            note["admitted_by_curator"] = True
        return {"synthetic": note}


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _short(error: BaseException) -> str:
    text = f"{type(error).__name__}: {error}"
    return text if len(text) <= 200 else text[:199] + "…"
