"""The detector's compact scoring model (int8 weight rows) against the float32 model it is read from."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from rag.guardrails import compact_scorer
from rag.guardrails.compact_scorer import CompactScoringModel, tied_table
from rag.guardrails.detector import TokenStats, TransformersScoringModel, token_stats


def tiny_gemma(folder: Path, *, tied: bool = True) -> Any:
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    torch.manual_seed(0)
    config = Gemma3TextConfig(
        vocab_size=512,
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=64,
        sliding_window=8,
        layer_types=["sliding_attention", "full_attention"],
        tie_word_embeddings=tied,
    )
    model = Gemma3ForCausalLM(config).eval()
    model.save_pretrained(str(folder))
    return model


def reference_stats(model: Any, ids: list[int], targets: torch.Tensor) -> TokenStats:
    exact = TokenStats()
    for start, rows in TransformersScoringModel("tiny", model, SimpleNamespace(bos_token_id=2)).logit_slices(ids):
        exact.add(token_stats(rows, targets[start : start + rows.shape[0]]))
    return exact


def test_compact_scores_match_the_float32_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Sums over blocks of the vocabulary (5 here) give the float32 model's stats within int8 rounding, and the
    scorer holds its weight matrices as int8 only."""
    monkeypatch.setattr(compact_scorer, "ROWS_PER_BLOCK", 100)
    model = tiny_gemma(tmp_path)
    compact = CompactScoringModel("tiny", tmp_path, SimpleNamespace(bos_token_id=2))
    ids = torch.randint(0, 512, (80,), generator=torch.Generator().manual_seed(1)).tolist()
    targets = torch.tensor(ids[1:], dtype=torch.long)

    got = compact.token_stats(ids[:-1], targets)
    exact = reference_stats(model, ids[:-1], targets)
    assert got.tokens == exact.tokens == 79
    for name in ("ll", "mu", "var"):
        assert math.isclose(getattr(got, name), getattr(exact, name), rel_tol=0.01), name
    assert abs(got.criterion - exact.criterion) < 0.05

    # the streamed sums are those of the whole logit rows of the same int8 weights
    whole = token_stats(next(iter(compact.logit_slices(ids[:-1])))[1], targets)
    for name in ("ll", "mu", "var"):
        assert math.isclose(getattr(got, name), getattr(whole, name), rel_tol=1e-4), name

    assert compact.rows.dtype == torch.int8 and tuple(compact.rows.shape) == (512, 128)
    float_weights = [p for p in compact.body.parameters() if p.dim() > 1 and p.numel() > 128]
    assert float_weights == []  # every matrix (layers and table) is int8; the skeleton's own table has one row


def test_a_model_with_its_own_output_layer_is_not_compacted(tmp_path: Path) -> None:
    tiny_gemma(tmp_path, tied=False)
    assert not tied_table(tmp_path)
    with pytest.raises(ValueError, match="not the token table"):
        CompactScoringModel("tiny", tmp_path, SimpleNamespace(bos_token_id=2))
