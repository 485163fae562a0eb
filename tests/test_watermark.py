"""The loop guard's green table against the detector's own green lists, on a small vocabulary."""

from __future__ import annotations

import random
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from rag import watermark
from rag.settings import WatermarkSettings

VOCAB = 600
SPECIAL = {0, 1}


class TinyTokenizer:
    """Token i decodes to a word; every seventh one to non-ASCII text, so it is never hot."""

    all_special_ids = sorted(SPECIAL)

    def batch_decode(self, ids: list[list[int]], skip_special_tokens: bool = True) -> list[str]:
        return ["" if i in SPECIAL else (f"é{i}" if i % 7 == 0 else f"w{i}") for (i,) in ids]

    @property
    def backend_tokenizer(self) -> Any:
        return SimpleNamespace(encode=lambda text, add_special_tokens: SimpleNamespace(ids=self.ids(text)))

    @staticmethod
    def ids(text: str) -> list[int]:
        return [int(word[1:]) for word in text.split()]


@pytest.fixture
def settings() -> WatermarkSettings:
    return WatermarkSettings(hot_prefixes=300, max_scored_tokens=10_000)


@pytest.fixture
def detector(settings: WatermarkSettings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    config = SimpleNamespace(vocab_size=VOCAB, bos_token_id=1, is_encoder_decoder=False)
    monkeypatch.setattr("rag.models.load_tokenizer_and_config", lambda name, root: (TinyTokenizer(), config))
    return watermark._Detector("tiny", settings, tmp_path)


def test_hot_prefixes_are_the_first_plain_ascii_tokens() -> None:
    hot = watermark.hot_prefix_ids(TinyTokenizer(), VOCAB, 10)
    assert hot == [2, 3, 4, 5, 6, 8, 9, 10, 11, 12]


def test_table_matches_the_detectors_green_lists(detector: Any) -> None:
    table, processor = detector.table, detector.detector.processor
    for prefix in (2, 3, 50, 299):
        green = set(processor._get_greenlist_ids(torch.tensor([prefix])).tolist())
        assert len(green) == int(VOCAB * 0.25)
        assert {t for t in range(VOCAB) if table.is_green(prefix, t)} == green
    assert table.is_green(7, 5) is None  # non-ASCII: not hot
    assert table.is_green(590, 5) is None  # past the hot count


def test_table_is_reused_and_a_torn_one_refused(detector: Any, settings: WatermarkSettings, tmp_path: Path) -> None:
    files = sorted((tmp_path / "watermark").iterdir())
    assert [f.suffix for f in files] == [".bits", ".json"]
    stamp = files[0].stat().st_mtime_ns
    again = watermark._Detector("tiny", settings, tmp_path)
    assert files[0].stat().st_mtime_ns == stamp and again.table.row_of == detector.table.row_of
    with files[0].open("ab") as handle:
        handle.write(b"\0")
    with pytest.raises(ValueError, match="expected"):
        watermark._Detector("tiny", settings, tmp_path)


def test_green_text_scores_high_and_random_text_near_zero(detector: Any) -> None:
    processor, rng = detector.detector.processor, random.Random(0)
    tokens = [2]
    while len(tokens) < 200:  # a "watermarked" text: every next token green for its prefix
        greens = processor._get_greenlist_ids(torch.tensor([tokens[-1]])).tolist()
        tokens.append(rng.choice([g for g in greens if 2 <= g < 300 and g % 7]))
    marked = detector.score(" ".join(f"w{t}" for t in tokens))
    assert marked.z_score > 10 and marked.scored_tokens > 150
    plain = [rng.randrange(2, 300) for _ in range(400)]
    human = detector.score(" ".join(f"w{t}" for t in plain))
    assert abs(human.z_score) < 3.5 and human.scored_tokens > 300


def test_check_names_the_model_and_the_z_score(settings: WatermarkSettings, detector: Any) -> None:
    check = watermark.WatermarkCheck(settings, Path("unused"), ("tiny",))
    check._detectors = [detector]
    processor, tokens = detector.detector.processor, [3]
    while len(tokens) < 120:
        greens = processor._get_greenlist_ids(torch.tensor([tokens[-1]])).tolist()
        tokens.append(next(g for g in greens if 2 <= g < 300 and g % 7 and g not in tokens))
    found = check.check(" ".join(f"w{t}" for t in tokens))
    assert found is not None and found[0] == "watermark_detected" and "tiny" in found[1] and "z=" in found[1]
    assert check.check("w2 w3 w4 w5") is None
