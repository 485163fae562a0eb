"""The detector's scoring model in a third of the memory: int8 weights, float32 arithmetic.

Scoring needs the whole next-token distribution at every position, so Gemma's 262k x 640 token table is
read in full for each window; in float32 it is 670 MB of the 1,070 MB model, and `rag ingest` held that
model beside the loop guard's tokenizers and the embedder (peak 2.3 GB). Here every weight matrix (the
token table, which is also Gemma's output layer, and each Linear) is kept as int8 with one float32 scale
per 64 weights of a row, and turned back into float32 a block of rows at a time right before its matrix
product: ~340 MB in all. Activations and logits stay float32 (no int8 kernels, so nothing CPU-specific).
The stats the detector needs (log-sum-exp, the first two moments, the text's own tokens) are summed a
block of 8,192 vocabulary rows at a time, so the [positions, 262k] logits never exist at once and the table
is de-quantised once per window. Weights are read from the cached safetensors file with `pread`, one
tensor (or 8,192 table rows) at a time: the float32 model is never in memory, not even while loading.

Against the float32 model, scores moved by at most 0.09 (9 texts; README, "Speed"); the threshold (1.5)
is ~0.5 above the highest human score measured and ~0.25 below the lowest Gemma score.
"""

from __future__ import annotations

import json
import math
import os
import struct
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from rag.guardrails.detector import TokenStats

ROWS_PER_BLOCK = 8192  # table rows de-quantised at once: 8,192 x 640 floats = 21 MB
GROUP = 64  # weights sharing one scale


class SafetensorsFile:
    """Reads tensors of one float32 safetensors file with `pread`: nothing is memory-mapped, so only what
    is read (and kept) counts in the process's memory."""

    def __init__(self, path: Path) -> None:
        self.path = path
        with path.open("rb") as f:
            size = struct.unpack("<Q", f.read(8))[0]
            header = json.loads(f.read(size))
        header.pop("__metadata__", None)
        self.base = 8 + size
        self.entries: dict[str, dict[str, Any]] = header

    def shape(self, name: str) -> list[int]:
        return list(self.entries[name]["shape"])

    def rows(self, name: str, start: int, stop: int) -> Any:
        """Rows start..stop-1 of a float32 tensor (its first dimension), as a float32 tensor."""
        import torch

        entry = self.entries[name]
        if entry["dtype"] != "F32":
            raise ValueError(f"{self.path.name}: {name} is {entry['dtype']}, expected F32")
        shape = entry["shape"]
        row = 4 * math.prod(shape[1:])
        offset = self.base + entry["data_offsets"][0] + start * row
        buffer = bytearray((stop - start) * row)
        fd = os.open(self.path, os.O_RDONLY)
        try:
            view, done = memoryview(buffer), 0
            while done < len(buffer):
                got = os.preadv(fd, [view[done:]], offset + done)
                if got <= 0:
                    raise OSError(f"{self.path}: short read of {name}")
                done += got
        finally:
            os.close(fd)
        return torch.frombuffer(buffer, dtype=torch.float32).reshape(stop - start, *shape[1:])

    def tensor(self, name: str) -> Any:
        return self.rows(name, 0, self.shape(name)[0]) if self.shape(name) else self.rows(name, 0, 1).reshape(())


def quantize_rows(weight: Any) -> tuple[Any, Any]:
    """(int8 weight, float32 scales [rows, columns / GROUP]): each group of `GROUP` consecutive weights of a
    row * 127 / its largest magnitude, rounded. Per-group (not per-row) scales keep small weights apart."""
    import torch

    rows, columns = weight.shape
    groups = weight.reshape(rows, columns // GROUP, GROUP)
    scale = groups.abs().amax(dim=2).clamp_min(1e-12) / 127.0
    return torch.round(groups / scale[:, :, None]).to(torch.int8).reshape(rows, columns), scale.to(torch.float32)


def dequantize(rows: Any, scale: Any, out: Any = None) -> Any:
    """Float32 weights back from `quantize_rows`' pair (into `out` when given)."""
    import torch

    count, columns = rows.shape
    if out is None:
        out = torch.empty((count, columns), dtype=torch.float32)
    out.copy_(rows)
    out.view(count, columns // GROUP, GROUP).mul_(scale[:, :, None])
    return out


def _int8_linear_class() -> Any:
    import torch

    class Int8Linear(torch.nn.Module):
        """A bias-free Linear whose weight is int8 rows and a scale per row, de-quantised for each product."""

        def __init__(self, rows: Any, scale: Any) -> None:
            super().__init__()
            self.rows, self.scale = rows, scale  # plain attributes: never parameters, never trained

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.nn.functional.linear(x, dequantize(self.rows, self.scale))

    return Int8Linear


class CompactScoringModel:
    """A local causal LM from its cached safetensors, all weight matrices int8 rows (see the module doc)."""

    def __init__(self, name: str, folder: Path, tokenizer: Any) -> None:
        import torch
        from transformers import AutoConfig, AutoModelForCausalLM
        from transformers.initialization import no_init_weights

        self.name = name
        self.tokenizer = tokenizer
        self.bos_id = tokenizer.bos_token_id
        self._lock = threading.Lock()
        config = AutoConfig.from_pretrained(str(folder))
        self.cap = getattr(config, "final_logit_softcapping", None)
        weights = SafetensorsFile(folder / "model.safetensors")
        table_name = "model.embed_tokens.weight"
        if not tied_table(folder):
            raise ValueError(f"{name}: the output layer is not the token table; score with the float32 model")
        vocab, width = weights.shape(table_name)
        config.vocab_size = 1  # the skeleton's own table: one row; the real one is held below
        with no_init_weights():
            model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        model.eval()
        int8_linear = _int8_linear_class()
        modules = dict(model.named_modules())
        for key in weights.entries:
            if key == table_name or not key.endswith(".weight"):
                continue
            path = key.removesuffix(".weight")
            module = modules[path]
            tensor = weights.tensor(key)
            if isinstance(module, torch.nn.Linear) and module.bias is None:
                parent, _, leaf = path.rpartition(".")
                setattr(modules[parent], leaf, int8_linear(*quantize_rows(tensor)))
            else:
                module.weight = torch.nn.Parameter(tensor.clone(), requires_grad=False)
            del tensor
        self.rows = torch.empty((vocab, width), dtype=torch.int8)
        self.scale = torch.empty((vocab, width // GROUP), dtype=torch.float32)
        for start in range(0, vocab, ROWS_PER_BLOCK):
            stop = min(start + ROWS_PER_BLOCK, vocab)
            self.rows[start:stop], self.scale[start:stop] = quantize_rows(weights.rows(table_name, start, stop))
        embed = model.get_input_embeddings()
        factor = getattr(embed, "embed_scale", None)
        self.embed_scale = float(factor) if factor is not None else 1.0
        self.body = model.model
        from rag.runtime import release_freed_memory

        release_freed_memory()

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer.backend_tokenizer.encode(text, add_special_tokens=False).ids)

    def logit_slices(self, ids: Sequence[int]) -> Iterator[tuple[int, Any]]:
        """All logits at once (for the `ScoringModel` protocol; `token_stats` is what the scorer uses)."""
        import torch

        with self._lock, torch.inference_mode():
            hidden = self._hidden(ids)
            out = torch.empty((hidden.shape[0], self.rows.shape[0]), dtype=torch.float32)
            for start, logits in self._logit_blocks(hidden):
                out[:, start : start + logits.shape[1]] = logits
            yield 0, out

    def token_stats(self, ids: Sequence[int], targets: Any) -> TokenStats:
        """`detector.token_stats` of the logits at each position of `ids` (position t predicts `targets[t]`),
        taken a block of vocabulary rows at a time: the [positions, 262k] logits never exist at once, and the
        table is de-quantised once per window, not once per slice of positions."""
        import torch

        with self._lock, torch.inference_mode():
            hidden = self._hidden(ids)
            count = hidden.shape[0]
            top = torch.full((count,), -math.inf, dtype=torch.float64)
            total = torch.zeros(count, dtype=torch.float64)  # sum of exp(l - top)
            first = torch.zeros(count, dtype=torch.float64)  # sum of exp(l - top) * l
            second = torch.zeros(count, dtype=torch.float64)  # sum of exp(l - top) * l^2
            target = torch.empty(count, dtype=torch.float32)
            for start, logits in self._logit_blocks(hidden):
                inside = ((targets >= start) & (targets < start + logits.shape[1])).nonzero().squeeze(-1)
                target[inside] = logits[inside, targets[inside] - start]
                peak = logits.amax(dim=1)
                weights = (logits - peak[:, None]).exp_()
                s0 = weights.sum(dim=1).double()
                s1 = torch.linalg.vecdot(weights, logits).double()
                s2 = torch.linalg.vecdot(weights.mul_(logits), logits).double()
                merged = torch.maximum(top, peak.double())
                old, new = (top - merged).exp(), (peak.double() - merged).exp()
                total, first, second = total * old + s0 * new, first * old + s1 * new, second * old + s2 * new
                top = merged
            lse = top + total.log()
            mean = first / total
            var = (second / total - mean * mean).clamp_min(0.0)
            return TokenStats(
                ll=float((target.double() - lse).sum()),
                mu=float((mean - lse).sum()),
                var=float(var.sum()),
                tokens=count,
            )

    def _hidden(self, ids: Sequence[int]) -> Any:
        import torch

        index = torch.tensor(list(ids), dtype=torch.long)
        embeds = dequantize(self.rows[index], self.scale[index]) * self.embed_scale
        return self.body(inputs_embeds=embeds[None]).last_hidden_state[0]

    def _logit_blocks(self, hidden: Any) -> Iterator[tuple[int, Any]]:
        """(start, logits [positions, block]) for vocabulary rows start..start+block-1, soft-capped if the model is."""
        import torch

        vocab, width = self.rows.shape
        buffer = torch.empty((ROWS_PER_BLOCK, width), dtype=torch.float32)  # reused: no allocation per block
        for start in range(0, vocab, ROWS_PER_BLOCK):
            stop = min(start + ROWS_PER_BLOCK, vocab)
            rows = dequantize(self.rows[start:stop], self.scale[start:stop], buffer[: stop - start])
            logits = hidden @ rows.T
            if self.cap:  # Gemma 2 style soft-capping, applied as the model's own forward would
                logits = torch.tanh(logits / self.cap) * self.cap
            yield start, logits


def tied_table(folder: Path) -> bool:
    """Whether the model in `folder` computes its logits with its token table (Gemma 3 and SmolLM2 do)."""
    config = json.loads((folder / "config.json").read_text())
    text = config.get("text_config") or {}
    tied = config.get("tie_word_embeddings", text.get("tie_word_embeddings", True))
    return bool(tied) and "lm_head.weight" not in SafetensorsFile(folder / "model.safetensors").entries


def load_compact_scoring_model(name: str, cache_root: Path) -> CompactScoringModel | None:
    """The compact scorer of local model `name`, from its converted cache (made first if missing); None when
    the model's output layer is not its token table."""
    from rag.models import _cache_dir, load_model, load_tokenizer_and_config, model_spec

    spec = model_spec(name)
    folder = _cache_dir(spec, spec.locate(), cache_root)
    if not (folder / "model.safetensors").exists():
        load_model(name, cache_root)  # converts the GGUF once per machine (the float32 model is dropped)
    if not tied_table(folder):
        return None
    tokenizer, _ = load_tokenizer_and_config(name, cache_root)
    return CompactScoringModel(name, folder, tokenizer)
