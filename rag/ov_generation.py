"""The local generator on OpenVINO: the same model, exported once per machine, driven by transformers' `generate()`.

optimum-intel would do this, but every release so far pins transformers below the 5.23 this project uses, so the
export is done here with OpenVINO itself, the way optimum-intel does it: the torch model the GGUF converts to
(`rag.models.load_model`) is traced with its key/value cache as explicit inputs and outputs, the cache is then
moved inside the model as state (one infer request holds one sequence), and the weights are kept in float16 (the
default: answers identical to the float32 model's) or compressed by NNCF (int8, int4). The saved model lives under
the model cache and is built under a file lock, like the OpenVINO embedder.

`OpenVinoCausalLM` is a `PreTrainedModel` whose forward runs that compiled model, so `generate()` decodes as it
does for torch and every logits processor (the watermark, quote mode, the chosen tokens' log-probabilities) and
stopping criterion keeps working unchanged. Its forward returns the logits of the last position only.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import logging
import os
import shutil
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from rag.errors import BackendUnavailableError
from rag.progress import step

log = logging.getLogger(__name__)

RECIPE_VERSION = 1  # bump when the export or compression below changes: saved models are rebuilt
Weights = Literal["int8", "int4", "f16", "none"]
# The input ids of the traced example: long enough to cover a sliding window, and a past of its own.
_EXAMPLE_PAST, _EXAMPLE_NEW = 3, 5


def identity(name: str, gguf: Path, weights: Weights) -> dict[str, Any]:
    """What the saved model depends on: a change in any of it builds a new one."""
    import openvino as ov
    import transformers

    stat = gguf.stat()
    return {
        "recipe": RECIPE_VERSION,
        "model": name,
        "gguf": gguf.name,
        "gguf_bytes": stat.st_size,
        "gguf_mtime": int(stat.st_mtime),
        "weights": weights,
        "openvino": ov.get_version(),
        "transformers": transformers.__version__,
    }


def model_folder(folder: Path, name: str, ident: dict[str, Any]) -> Path:
    digest = hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]
    return folder / f"{name}-{ident['weights']}-{digest}"


def saved_model(
    name: str,
    cache_root: Path,
    weights: Weights,
    *,
    folder: Path | None = None,
    build: Callable[[Path], None] | None = None,
) -> Path:
    """The folder of the saved OpenVINO model of `name`, built first if this machine has none (one builder at a time).

    Saved under `folder` (default: `cache_root/openvino`, beside the converted torch model). `build(tmp)` writes
    the model into a fresh folder that becomes the saved one only when it returns, so a kill leaves a `.tmp`
    folder, never half a model. The default builder exports the torch model cached under `cache_root`.
    """
    from filelock import FileLock

    from rag.models import model_spec

    spec = model_spec(name)
    gguf = spec.locate()
    if not gguf.exists():
        raise BackendUnavailableError(f"Model file not found: {gguf}.", code="model_missing")
    folder = folder or cache_root / "openvino"
    ident = identity(spec.name, gguf, weights)
    target = model_folder(folder, spec.name, ident)
    if (target / "model.xml").exists():
        return target
    folder.mkdir(parents=True, exist_ok=True)
    with FileLock(str(folder / "build.lock")):
        if (target / "model.xml").exists():  # another process built it while we waited
            return target
        step(f"generator: exporting {spec.name} to OpenVINO ({weights} weights; once per machine, ~1 min)")
        tmp = folder / f"{target.name}.tmp{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        try:
            (build or functools.partial(export_to, spec.name, cache_root, weights))(tmp)
            (tmp / "identity.json").write_text(json.dumps(ident, indent=1))
            shutil.rmtree(target, ignore_errors=True)
            os.replace(tmp, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def export_to(name: str, cache_root: Path, weights: Weights, out: Path) -> None:
    """Export the torch model cached under `cache_root`, compress it, and save it with its tokenizer and configs."""
    import openvino as ov

    from rag.embedders import _OPENVINO_LOCK
    from rag.models import load_model

    model, tokenizer = load_model(name, cache_root)
    with _OPENVINO_LOCK:  # one thread at a time in OpenVINO's bindings (see rag.embedders)
        exported = compress(export(model), weights)
        ov.save_model(exported, str(out / "model.xml"), compress_to_fp16=weights == "f16")
    tokenizer.save_pretrained(str(out))
    model.config.save_pretrained(str(out))
    model.generation_config.save_pretrained(str(out))


def _shape(config: Any) -> tuple[int, int, int]:
    """(layers, key/value heads, head size) of a decoder config."""
    heads = int(config.num_attention_heads)
    head_dim = getattr(config, "head_dim", None) or int(config.hidden_size) // heads
    return int(config.num_hidden_layers), int(getattr(config, "num_key_value_heads", None) or heads), int(head_dim)


def export(model: Any) -> Any:
    """The torch causal LM as a stateful OpenVINO model: inputs `input_ids`, `attention_mask` (the whole sequence),
    `position_ids`, `beam_idx`; output `logits` of the last position; the key/value cache kept as state."""
    import warnings

    import numpy as np
    import openvino as ov
    import torch
    from openvino import opset13
    from openvino._offline_transformations import apply_make_stateful_transformation

    layers, kv_heads, head_dim = _shape(model.config)
    traced = _traceable(model).eval()
    past = tuple(torch.zeros(1, kv_heads, _EXAMPLE_PAST, head_dim) for _ in range(2 * layers))
    total = _EXAMPLE_PAST + _EXAMPLE_NEW
    example = {
        "input_ids": torch.ones(1, _EXAMPLE_NEW, dtype=torch.long),
        "attention_mask": torch.ones(1, total, dtype=torch.long),
        "position_ids": torch.arange(_EXAMPLE_PAST, total).view(1, -1),
        "past": past,
    }
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer notes on shape checks; the shapes stay dynamic inputs
        converted = ov.convert_model(traced, example_input=example)

    for port, name in zip(converted.inputs[:3], ("input_ids", "attention_mask", "position_ids"), strict=True):
        port.get_tensor().set_names({name})
    converted.outputs[0].get_tensor().set_names({"logits"})
    pairs: dict[str, str] = {}
    for n in range(2 * layers):
        part = f"{n // 2}.{'key' if n % 2 == 0 else 'value'}"
        converted.inputs[3 + n].get_tensor().set_names({f"past_key_values.{part}"})
        converted.inputs[3 + n].get_node().set_partial_shape(ov.PartialShape([-1, kv_heads, -1, head_dim]))
        converted.outputs[1 + n].get_tensor().set_names({f"present.{part}"})
        pairs[f"past_key_values.{part}"] = f"present.{part}"
    converted.validate_nodes_and_infer_types()

    # A Gather by `beam_idx` in front of each past tensor: the CPU plugin fuses ReadValue -> Gather -> Concat ->
    # attention into one attention node with its cache inside only when it finds this pattern (without it the
    # attention is decomposed and the cache copied every step).
    beam_idx = opset13.parameter(ov.PartialShape([-1]), ov.Type.i32, name="beam_idx")
    beam_idx.output(0).get_tensor().set_names({"beam_idx"})
    converted.add_parameters([beam_idx])
    for name in pairs:
        port = converted.input(name)
        consumers = port.get_target_inputs()
        gathered = opset13.gather(port, beam_idx, opset13.constant(0))
        for consumer in consumers:
            consumer.replace_source_output(gathered.output(0))
    converted.validate_nodes_and_infer_types()
    apply_make_stateful_transformation(converted, pairs)

    # Each state starts empty with the batch of `input_ids`: [batch, kv_heads, 0, head_dim].
    batch = opset13.gather(
        opset13.shape_of(converted.input("input_ids"), output_type="i64"), opset13.constant([0]), opset13.constant(0)
    )
    for op in converted.get_ops():
        if op.get_type_name() == "ReadValue":
            rest = opset13.constant(np.array([kv_heads, 0, head_dim], dtype=np.int64))
            zero = opset13.constant(0.0, dtype=op.get_output_element_type(0))
            op.set_arguments([opset13.broadcast(zero, opset13.concat([batch, rest], 0))])
    converted.validate_nodes_and_infer_types()
    return converted


def _traceable_class() -> type:
    import torch
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    class PastLayer(DynamicLayer):
        """A cache layer that starts from given tensors (a traced graph cannot concatenate to an empty 1-D tensor,
        which is how `DynamicLayer` starts)."""

        def __init__(self, keys: torch.Tensor, values: torch.Tensor) -> None:
            super().__init__()
            self.lazy_initialization(keys, values)
            self.keys, self.values = keys, values

    class Traceable(torch.nn.Module):
        """The model's forward with the cache as flat tensors and explicit masks, logits of the last position only.

        Every layer keeps its whole past; sliding-window layers see only their window through their mask, built as
        transformers builds it (`kv_idx > q_idx - sliding_window`, on cache positions).
        """

        def __init__(self, model: Any) -> None:
            super().__init__()
            self.model = model
            config = model.config
            self.layers = int(config.num_hidden_layers)
            self.window = getattr(config, "sliding_window", None)
            self.layer_types = set(getattr(config, "layer_types", None) or [])
            self.softcap = getattr(config, "final_logit_softcapping", None)

        def forward(
            self,
            input_ids: torch.Tensor,
            attention_mask: torch.Tensor,
            position_ids: torch.Tensor,
            past: tuple[torch.Tensor, ...],
        ) -> tuple[torch.Tensor, ...]:
            cache = DynamicCache()
            cache.layers = [PastLayer(past[2 * n], past[2 * n + 1]) for n in range(self.layers)]
            new, total = input_ids.shape[1], attention_mask.shape[1]
            keys = torch.arange(total).view(1, 1, 1, total)
            queries = torch.arange(total - new, total).view(1, 1, new, 1)
            causal = (keys <= queries) & (attention_mask[:, None, None, :] > 0)
            mask: Any = causal
            if "sliding_attention" in self.layer_types and self.window:
                sliding = causal & (keys > queries - self.window)
                mask = {"full_attention": causal, "sliding_attention": sliding}
            out = self.model.model(
                input_ids=input_ids,
                attention_mask=mask,
                position_ids=position_ids,
                past_key_values=cache,
                use_cache=True,
            )
            logits = self.model.lm_head(out.last_hidden_state[:, -1:, :])
            if self.softcap:
                logits = torch.tanh(logits / self.softcap) * self.softcap
            presents: list[torch.Tensor] = []
            for layer in out.past_key_values.layers:
                presents += [layer.keys, layer.values]
            return (logits, *presents)

    return Traceable


def _traceable(model: Any) -> Any:
    return _traceable_class()(model)


def compress(model: Any, weights: Weights) -> Any:
    """Weight-only compression with NNCF (data-free). int4 keeps the token table and output layer in int8; f16
    weights are stored as such when saved, none keeps float32."""
    if weights in ("f16", "none"):
        return model
    os.environ.setdefault("NNCF_CI", "1")  # NNCF's usage telemetry is opt-out; this is its off switch
    import nncf

    if weights == "int8":
        return nncf.compress_weights(model, mode=nncf.CompressWeightsMode.INT8_ASYM)
    return nncf.compress_weights(model, mode=nncf.CompressWeightsMode.INT4_ASYM, group_size=64, ratio=1.0)


# --- running it --------------------------------------------------------------------------------------------------


class OpenVinoState:
    """Stands where a key/value cache would in `generate()`: the cache itself is the infer request's state."""

    def __init__(self, length: int) -> None:
        self.length = length

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.length


def compile_config(threads: int | None, precision: str | None) -> dict[str, Any]:
    """Latency: one stream, one sequence. `precision` pins the type of the activations and of the cache kept in
    the state; None leaves the CPU plugin's choice (bfloat16 activations where the CPU has them, and an 8-bit
    cache: on a tiny model that moved logits by up to 0.1, against 5e-6 with a float32 cache)."""
    config: dict[str, Any] = {"PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1}
    if precision:
        config["INFERENCE_PRECISION_HINT"] = precision
        config["KV_CACHE_PRECISION"] = precision
    if threads:
        config["INFERENCE_NUM_THREADS"] = threads
    return config


def load(
    name: str,
    cache_root: Path,
    weights: Weights = "f16",
    *,
    threads: int | None = None,
    precision: str | None = "f32",
) -> tuple[Any, Any]:
    """(OpenVinoCausalLM, tokenizer) for a local generator, exporting it first if this machine has none."""
    try:
        import openvino  # noqa: F401
    except ImportError as exc:  # pragma: no cover - install problem
        raise BackendUnavailableError(
            "OpenVINO is missing: pip install openvino nncf (or set RAG_GENERATOR__RUNTIME=torch)."
        ) from exc
    folder = saved_model(name, cache_root, weights)
    return load_folder(folder, threads=threads, precision=precision)


def load_folder(folder: Path, *, threads: int | None = None, precision: str | None = "f32") -> tuple[Any, Any]:
    import openvino as ov
    from transformers import AutoConfig, AutoTokenizer, GenerationConfig

    from rag.embedders import _OPENVINO_LOCK

    config = AutoConfig.from_pretrained(str(folder))
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    with _OPENVINO_LOCK:  # one thread at a time in OpenVINO's bindings (see rag.embedders)
        compiled = ov.Core().compile_model(str(folder / "model.xml"), "CPU", compile_config(threads, precision))
    model = openvino_causal_lm_class()(config, compiled)
    if (folder / "generation_config.json").exists():
        model.generation_config = GenerationConfig.from_pretrained(str(folder))
    return model, tokenizer


@functools.cache
def openvino_causal_lm_class() -> type:
    """`OpenVinoCausalLM`, defined on first use (it subclasses transformers' classes, imported lazily)."""
    import numpy as np
    import torch
    from transformers import GenerationMixin, PreTrainedModel
    from transformers.modeling_outputs import CausalLMOutputWithPast

    from rag.embedders import _OPENVINO_LOCK

    class OpenVinoCausalLM(PreTrainedModel, GenerationMixin):
        """A compiled stateful OpenVINO decoder behind transformers' model interface, for `generate()`.

        One infer request holds one sequence's cache, so `generate()` calls take turns (a lock). `forward` returns
        the last position's logits only: a model to generate with, not to score every position of a text.
        """

        main_input_name = "input_ids"
        _supports_sdpa = True  # nothing runs in torch; this only lets the config's attention setting stand

        def __init__(self, config: Any, compiled: Any) -> None:
            super().__init__(copy.deepcopy(config))
            self.compiled = compiled
            self.request = compiled.create_infer_request()
            self._length = 0
            self._turn = threading.RLock()
            # `PreTrainedModel.device` and `.dtype` read the parameters: one empty tensor says CPU, float32.
            self.anchor = torch.nn.Parameter(torch.zeros(0), requires_grad=False)

        def _prepare_cache_for_generation(self, *args: Any, **kwargs: Any) -> None:  # type: ignore[override]
            """No transformers cache: the cache is the infer request's state."""

        def generate(self, *args: Any, **kwargs: Any) -> Any:
            with self._turn:
                return super().generate(*args, **kwargs)  # type: ignore[misc]

        def forward(
            self,
            input_ids: torch.Tensor,
            attention_mask: torch.Tensor | None = None,
            position_ids: torch.Tensor | None = None,
            past_key_values: OpenVinoState | None = None,
            use_cache: bool | None = None,
            **kwargs: Any,
        ) -> Any:
            with self._turn:
                past = 0 if past_key_values is None else past_key_values.get_seq_length()
                if past and past != self._length:
                    raise RuntimeError("The OpenVINO generator's state belongs to another sequence.")
                batch, new = input_ids.shape
                if attention_mask is None:
                    mask = np.ones((batch, past + new), dtype=np.int64)
                else:
                    mask = attention_mask.numpy().astype(np.int64)
                if position_ids is None:
                    positions = np.broadcast_to(np.arange(past, past + new, dtype=np.int64), (batch, new))
                else:
                    positions = position_ids.numpy().astype(np.int64)
                inputs = {
                    "input_ids": input_ids.numpy().astype(np.int64),
                    "attention_mask": mask,
                    "position_ids": positions,
                    "beam_idx": np.arange(batch, dtype=np.int32),
                }
                with _OPENVINO_LOCK:
                    if not past:
                        self.request.reset_state()
                    self.request.infer(inputs)
                    logits = torch.from_numpy(self.request.get_tensor("logits").data.copy())
                self._length = past + new
                state = OpenVinoState(self._length)
                return CausalLMOutputWithPast(logits=logits, past_key_values=state)  # type: ignore[arg-type]

    return OpenVinoCausalLM
