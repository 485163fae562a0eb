"""The loop guard: ingest refuses text that carries this system's own generation watermark.

Detection uses transformers' `WatermarkDetector` built from the generator's `WatermarkingConfig`
(same key, same left-hash seeding), with each local generator's tokenizer. The detector's green list
for a prefix token is one `randperm` over the vocabulary: 2 ms for Gemma's 262k tokens. Calling it per
document cost 68 ms a document (3x the rest of ingest), so the guard reads a precomputed table instead:

- the *hot* prefix tokens are the first `hot_prefixes` vocabulary entries that decode to plain ASCII
  text (Gemma: 66% of the token positions of SQuAD's Wikipedia passages; SmolLM2: 90%);
- their green lists come from the detector's own `processor._get_greenlist_ids`, packed one bit per
  vocabulary entry, and are written once per machine under the model cache (Gemma 512 MiB, ~35 s;
  SmolLM2 96 MiB, ~5 s); lookups are `pread`s, so the table never enters the process's memory;
- only (prefix, target) pairs with a hot prefix are scored, each distinct pair once. Which pairs are
  scored depends on the prefix alone, so on human text each scored target is still green with
  probability `greenlist_ratio` and the detector's z statistic keeps its meaning; watermarked text
  loses only the unscored share of its evidence (z scales with the square root of the pairs scored).

The verdict is deterministic: the same text gets the same z on every machine and in every order.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rag.progress import step
from rag.settings import WatermarkSettings

log = logging.getLogger(__name__)

WINDOWS = 4
TABLE_VERSION = 1


@dataclass(frozen=True)
class Detection:
    model: str
    z_score: float
    scored_tokens: int


def hot_prefix_ids(tokenizer: Any, vocab_size: int, count: int) -> list[int]:
    """The first `count` token ids that decode to non-empty printable ASCII (special tokens excluded)."""
    texts = tokenizer.batch_decode([[i] for i in range(vocab_size)], skip_special_tokens=True)
    special = set(tokenizer.all_special_ids)
    hot = [i for i, text in enumerate(texts) if text and text.isascii() and text.isprintable() and i not in special]
    return hot[:count]


class GreenTable:
    """Packed green-list bits of the hot prefix tokens, one row per prefix, read with `pread`."""

    def __init__(self, path: Path, hot_ids: list[int], vocab_size: int) -> None:
        self.row_bytes = (vocab_size + 7) // 8
        expected = len(hot_ids) * self.row_bytes
        if path.stat().st_size != expected:
            raise ValueError(f"{path} holds {path.stat().st_size} bytes, expected {expected}")
        self.row_of = {token: row for row, token in enumerate(hot_ids)}
        self._fd = os.open(path, os.O_RDONLY)

    def is_green(self, prefix: int, target: int) -> bool | None:
        """Whether `target` is green after `prefix`; None when `prefix` is not a hot token."""
        row = self.row_of.get(prefix)
        if row is None:
            return None
        byte = os.pread(self._fd, 1, row * self.row_bytes + (target >> 3))[0]
        return bool(byte >> (7 - (target & 7)) & 1)

    @classmethod
    def open(cls, name: str, detector: Any, tokenizer: Any, settings: WatermarkSettings, folder: Path) -> GreenTable:
        """Load the table for this model and key, building it first if this machine has none."""
        import numpy as np
        import torch

        processor = detector.processor
        identity = {
            "version": TABLE_VERSION,
            "model": name,
            "vocab_size": processor.vocab_size,
            "key": settings.key,
            "greenlist_ratio": settings.greenlist_ratio,
            "seeding": "lefthash-1",
            "hot_prefixes": settings.hot_prefixes,
            "torch": torch.__version__.split("+")[0],  # the permutation comes from torch's generator
        }
        digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]
        bits, index = folder / f"{name}-{digest}.bits", folder / f"{name}-{digest}.json"
        if bits.exists() and index.exists():
            return cls(bits, json.loads(index.read_text())["hot_ids"], processor.vocab_size)
        folder.mkdir(parents=True, exist_ok=True)
        hot = hot_prefix_ids(tokenizer, processor.vocab_size, settings.hot_prefixes)
        step(f"loop guard: building the watermark green table of {name} ({len(hot)} prefixes; once per machine)")
        tmp = bits.with_name(f"{bits.name}.{os.getpid()}.tmp")
        mask = np.zeros(processor.vocab_size, dtype=bool)
        with tmp.open("wb") as handle:
            for token in hot:
                mask[:] = False
                mask[processor._get_greenlist_ids(torch.tensor([token])).numpy()] = True
                handle.write(np.packbits(mask).tobytes())
        os.replace(tmp, bits)
        tmp_index = index.with_name(f"{index.name}.{os.getpid()}.tmp")
        tmp_index.write_text(json.dumps({**identity, "hot_ids": hot}))
        os.replace(tmp_index, index)  # written last: a table without its index is rebuilt
        return cls(bits, hot, processor.vocab_size)


class _Detector:
    def __init__(self, name: str, settings: WatermarkSettings, cache_root: Path) -> None:
        from transformers import WatermarkDetector

        from rag.generation import watermarking_config
        from rag.models import load_tokenizer_and_config

        self.name = name
        self.settings = settings
        self.tokenizer, config = load_tokenizer_and_config(name, cache_root)
        self.detector = WatermarkDetector(
            model_config=config,
            device="cpu",
            watermarking_config=watermarking_config(settings),
            ignore_repeated_ngrams=True,  # repeated code lines in human docs otherwise inflate z
        )
        self.table = GreenTable.open(name, self.detector, self.tokenizer, settings, cache_root / "watermark")

    def windows(self, text: str) -> list[list[int]]:
        """The token ids scored: the whole text, or `WINDOWS` windows spread over a long one."""
        # The Rust tokenizer directly: the Python wrapper costs more than the lookups.
        ids: list[int] = self.tokenizer.backend_tokenizer.encode(text, add_special_tokens=False).ids
        limit = self.settings.max_scored_tokens
        if len(ids) <= limit:
            return [ids]
        width = limit // WINDOWS
        step = (len(ids) - width) / (WINDOWS - 1)
        return [ids[int(w * step) : int(w * step) + width] for w in range(WINDOWS)]

    def score(self, text: str) -> Detection:
        import numpy as np

        # Each distinct (prefix, target) pair counts once, as with `ignore_repeated_ngrams`.
        pairs = {pair for window in self.windows(text) for pair in itertools.pairwise(window)}
        greens = [g for g in (self.table.is_green(p, t) for p, t in pairs) if g is not None]
        if not greens:
            return Detection(self.name, 0.0, 0)
        z = float(self.detector._compute_z_score(np.array([sum(greens)]), np.array([len(greens)]))[0])
        return Detection(self.name, 0.0 if math.isnan(z) else z, len(greens))


class WatermarkCheck:
    """A `ContentCheck` for the ingestor: reason `watermark_detected` above the z threshold."""

    def __init__(self, settings: WatermarkSettings, cache_root: Path, models: tuple[str, ...]) -> None:
        self.settings = settings
        self.cache_root = cache_root
        self.models = models
        self._detectors: list[_Detector] | None = None

    def detectors(self) -> list[_Detector]:
        if self._detectors is None:
            self._detectors = [_Detector(name, self.settings, self.cache_root) for name in self.models]
        return self._detectors

    def scores(self, text: str) -> list[Detection]:
        return [detector.score(text) for detector in self.detectors()]

    def check(self, text: str) -> tuple[str, str] | None:
        for detection in self.scores(text):
            if detection.z_score > self.settings.z_threshold:
                return (
                    "watermark_detected",
                    f"text carries the {detection.model} generation watermark "
                    f"(z={detection.z_score:.1f} over {detection.scored_tokens} token pairs, "
                    f"threshold {self.settings.z_threshold})",
                )
        return None
