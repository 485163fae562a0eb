"""The loop guard: ingest refuses text that carries this system's own generation watermark.

Detection is transformers' `WatermarkDetector` with the generator's `WatermarkingConfig` (same key),
run with each local generator's tokenizer. Two things keep it cheap enough for ingest:
- the detector's own cache keys on tensor identity and never hits; we cache each prefix token's
  green list (packed bits, LRU), so a prefix costs one `randperm` over the vocabulary per process;
- long documents are scored on up to `max_scored_tokens` tokens taken as windows spread over the
  whole text. A z-test over a few hundred tokens already separates watermarked text (z ≫ 4) from
  human text (z ≈ 0); see the README for the measured z-scores of the default corpus.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rag.settings import WatermarkSettings

WINDOWS = 4
CACHE_ENTRIES = 4096  # 32 KiB each for Gemma's 262k vocabulary


@dataclass(frozen=True)
class Detection:
    model: str
    z_score: float
    scored_tokens: int


class _Detector:
    def __init__(self, name: str, settings: WatermarkSettings, cache_root: Path) -> None:
        import numpy as np
        import torch
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
        self._np, self._torch = np, torch
        self._greens: OrderedDict[int, Any] = OrderedDict()
        self._lock = threading.Lock()
        self.detector._get_ngram_score_cached = self._is_green  # type: ignore[assignment]  # identity-keyed cache

    def _is_green(self, prefix: Any, target: int) -> bool:
        key = int(prefix[-1])
        with self._lock:
            packed = self._greens.get(key)
            if packed is None:
                ids = self.detector.processor._get_greenlist_ids(prefix).numpy()
                mask = self._np.zeros(self.detector.processor.vocab_size, dtype=bool)
                mask[ids] = True
                packed = self._np.packbits(mask)
                self._greens[key] = packed
                if len(self._greens) > CACHE_ENTRIES:
                    self._greens.popitem(last=False)
            else:
                self._greens.move_to_end(key)
        return bool(packed[target >> 3] >> (7 - (target & 7)) & 1)

    def score(self, text: str) -> Detection:
        ids: list[int] = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        limit = self.settings.max_scored_tokens
        if len(ids) > limit:
            width = limit // WINDOWS
            step = (len(ids) - width) / (WINDOWS - 1)
            ids = [t for w in range(WINDOWS) for t in ids[int(w * step) : int(w * step) + width]]
        if len(ids) < 2:
            return Detection(self.name, 0.0, 0)
        out: Any = self.detector(
            self._torch.tensor([ids], dtype=self._torch.long),  # type: ignore[arg-type]
            z_threshold=self.settings.z_threshold,
            return_dict=True,
        )
        z = float(out.z_score[0])
        return Detection(self.name, 0.0 if math.isnan(z) else z, len(ids) - 1)


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
                    f"(z={detection.z_score:.1f} over {detection.scored_tokens} tokens, "
                    f"threshold {self.settings.z_threshold})",
                )
        return None
