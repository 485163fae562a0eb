"""The embedder runtime chosen by measurement, once per machine (`RAG_EMBEDDER__BACKEND=auto`, the default).

Which runtime of MiniLM is fastest depends on the CPU: static int8 on OpenVINO wins where the CPU has int8
dot-product instructions and can lose without them; bfloat16 only exists on some. So the first time the
embedder is built, every candidate runtime is built in a child process (its memory and threads go when it
ends), checked against the float32 reference on the calibration texts, and timed in the two shapes the
stack uses: ingest (passages in batches) and query (one short text). The fastest agreeing runtime of each
shape is recorded under the model cache with the CPU's name and flags and the package versions; later runs
read that record, and a new CPU, new flags or new packages (a new record name) measure again.

Agreement, and why agreeing runtimes are one model: a runtime agrees in a shape when each calibration
text's vector, embedded in that shape, has a cosine of at least `MIN_COSINE` to the reference's and their
mean is at least `MEAN_COSINE`. The tolerance sits between what kept retrieval as it was and what lost it
(`bench/embedder_agreement.py`, README "Speed"). The choice uses a runtime only in shapes where it agrees,
so every vector that enters or queries a collection is the reference model's within the tolerance: all
runtimes of MiniLM share one model id, the one a collection records (and checks, `embedder_mismatch`);
the runtime that built a collection is recorded beside it. An explicit RAG_EMBEDDER__BACKEND overrides the
choice, also in a shape where this machine measured the runtime as disagreeing (`rag doctor` says so).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from rag.embedders import MINILM_ID, OpenVinoEmbedder, SentenceTransformerEmbedder
from rag.progress import step

REFERENCE = "torch-f32"
# Candidates in the order they are built; bf16 and f16 only where OpenVINO reports the CPU can compute them.
RUNTIMES = ("torch-f32", "torch-int8", "openvino-f32", "openvino-bf16", "openvino-f16", "openvino-int8")
SHAPES = ("ingest", "query")
# Agreement with the reference, in each shape the runtime would be used in (README "Speed" has the figures
# they were set from): every text's cosine at least MIN_COSINE and their mean at least MEAN_COSINE.
MIN_COSINE = 0.97
MEAN_COSINE = 0.99
# A runtime other than the reference must beat it by this share to be chosen: timing noise on a shared
# machine should not trade exact vectors for nothing.
MARGIN = 0.05
MEASURE_VERSION = 1  # bump when the measurement or the candidates change: every machine measures again
PACKAGES = ("torch", "openvino", "nncf", "sentence-transformers", "transformers", "tokenizers", "numpy")


@dataclass(frozen=True)
class Measurement:
    """One runtime on this machine: its agreement with the reference and its time, in each shape."""

    runtime: str
    ingest_cosine: tuple[float, float] = (0.0, 0.0)  # min and mean over the calibration texts, in batches
    query_cosine: tuple[float, float] = (0.0, 0.0)  # min and mean over short texts, one at a time
    ingest_s: float | None = None  # seconds to embed the timed passages in batches (median of rounds)
    query_ms: float | None = None  # milliseconds to embed one short text (median)
    error: str | None = None  # why it could not be built or run here

    def agrees(self, shape: str) -> bool:
        """Whether its vectors in this shape are the reference's within the tolerance."""
        low, mean = self.ingest_cosine if shape == "ingest" else self.query_cosine
        return self.error is None and low >= MIN_COSINE and mean >= MEAN_COSINE

    def eligible(self, shape: str) -> bool:
        """Ingest embeds only batches of passages; a serving process embeds queries and also batches (the
        answer check's passages, uploaded documents), so its runtime must agree in both shapes."""
        return self.agrees("ingest") and (shape == "ingest" or self.agrees("query"))

    def time(self, shape: str) -> float | None:
        return self.ingest_s if shape == "ingest" else self.query_ms


@dataclass(frozen=True)
class Choice:
    """What was chosen for each shape and why, with every measurement behind it (the saved record)."""

    ingest: str
    query: str
    why: dict[str, str]
    measurements: tuple[Measurement, ...]
    machine: dict[str, Any] = field(default_factory=dict)
    measured_at: str = ""
    seconds: float = 0.0

    def runtime(self, shape: str) -> str:
        return self.ingest if shape == "ingest" else self.query

    def measurement(self, runtime: str) -> Measurement | None:
        return next((m for m in self.measurements if m.runtime == runtime), None)

    def as_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["tolerance"] = {"min_cosine": MIN_COSINE, "mean_cosine": MEAN_COSINE, "margin": MARGIN}
        data["version"] = MEASURE_VERSION
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Choice:
        measurements = tuple(measurement_from_json(m) for m in data["measurements"])
        return cls(
            data["ingest"], data["query"], dict(data["why"]), measurements,
            dict(data.get("machine", {})), str(data.get("measured_at", "")), float(data.get("seconds", 0.0)),
        )  # fmt: skip


def measurement_from_json(data: dict[str, Any]) -> Measurement:
    known = {k: v for k, v in data.items() if k in Measurement.__dataclass_fields__}
    for key in ("ingest_cosine", "query_cosine"):
        if key in known:
            low, mean = known[key]
            known[key] = (float(low), float(mean))
    return Measurement(**known)


def choose(measurements: Sequence[Measurement]) -> tuple[str, str, dict[str, str]]:
    """The fastest eligible runtime for each shape, and a sentence saying why. The reference always agrees;
    another runtime must be faster than it by `MARGIN`. A fast runtime that disagrees is never chosen."""
    chosen: dict[str, str] = {}
    why: dict[str, str] = {}
    for shape in SHAPES:
        timed = sorted(
            (m for m in measurements if m.eligible(shape) and m.time(shape) is not None), key=lambda m: _time(m, shape)
        )
        refused = [m for m in measurements if m.error is None and not m.eligible(shape)]
        chosen[shape] = _pick(shape, timed)
        why[shape] = _why(shape, chosen[shape], timed, refused)
    return chosen["ingest"], chosen["query"], why


def _time(measurement: Measurement, shape: str) -> float:
    value = measurement.time(shape)
    return float("inf") if value is None else value


def _pick(shape: str, timed: list[Measurement]) -> str:
    if not timed:
        return REFERENCE
    best = timed[0]
    reference = next((m for m in timed if m.runtime == REFERENCE), None)
    if reference is not None and _time(best, shape) > _time(reference, shape) * (1 - MARGIN):
        return REFERENCE
    return best.runtime


def _why(shape: str, name: str, timed: list[Measurement], refused: list[Measurement]) -> str:
    unit = "s for the timed passages" if shape == "ingest" else "ms a query"
    if not timed:
        return f"{name}: the reference, since no runtime could be timed here"
    ranking = ", ".join(f"{m.runtime} {_time(m, shape):.3g}" for m in timed)
    text = f"{name}: fastest agreeing runtime ({ranking} {unit})"
    if name == REFERENCE and timed[0].runtime != REFERENCE:
        text = f"{name}: the reference; {timed[0].runtime} was less than {MARGIN:.0%} faster ({ranking} {unit})"
    if refused:
        text += "; not eligible, vectors differ from float32 beyond the tolerance: " + ", ".join(
            f"{m.runtime} ({disagreement(m)})" for m in refused
        )
    return text


def disagreement(measurement: Measurement) -> str:
    """Where a runtime's vectors differ from the reference's, in words."""
    parts = []
    for shape, (low, mean) in (("batched", measurement.ingest_cosine), ("single texts", measurement.query_cosine)):
        if low < MIN_COSINE or mean < MEAN_COSINE:
            parts.append(f"{shape}: min cosine {low:.3f}, mean {mean:.4f}")
    return "; ".join(parts) or "agrees"


# --- the machine a record holds for ---------------------------------------------------------------


def cpu_description() -> tuple[str, list[str]]:
    """The CPU's model name and its feature flags, as the kernel reports them (x86 `flags`, ARM `Features`)."""
    name, flags = "", ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as info:
            for line in info:
                key, _, value = line.partition(":")
                key = key.strip()
                if key in ("model name", "Model", "Hardware", "cpu model") and not name:
                    name = value.strip()
                elif key in ("flags", "Features") and not flags:
                    flags = value.strip()
                if name and flags:
                    break
    except OSError:
        pass
    return name or platform.processor() or platform.machine(), sorted(set(flags.split()))


def machine_identity(model_source: Path, *, batch_size: int, threads: int | None) -> dict[str, Any]:
    """Everything the measured choice depends on: a record holds only while all of it is unchanged."""
    cpu, flags = cpu_description()
    weights = model_source / "model.safetensors"

    def version(package: str) -> str | None:
        try:
            return metadata.version(package)
        except metadata.PackageNotFoundError:
            return None

    return {
        "version": MEASURE_VERSION,
        "cpu": cpu,
        "flags": flags,
        "arch": platform.machine(),
        "cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "packages": {name: version(name) for name in PACKAGES},
        "model": {"source": str(model_source), "bytes": weights.stat().st_size if weights.exists() else 0},
        "batch_size": batch_size,
        "threads": threads,
    }


def record_path(cache_root: Path, identity: dict[str, Any]) -> Path:
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]
    return cache_root / "embedder" / f"runtime-choice-{digest}.json"


def load_choice(path: Path) -> Choice | None:
    """The saved choice, or None when there is none (or it cannot be read: then it is measured again)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return Choice.from_json(data) if data.get("version") == MEASURE_VERSION else None
    except (OSError, ValueError, KeyError, TypeError):
        return None


def save_choice(path: Path, choice: Choice) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(choice.as_json(), indent=1), encoding="utf-8")
    os.replace(tmp, path)  # whole or absent, never half a record


# --- choosing --------------------------------------------------------------------------------------

Measurer = Callable[[Path, Path, int, int | None], list[Measurement]]


def machine_choice(
    cache_root: Path,
    model_source: Path,
    *,
    batch_size: int = 16,
    threads: int | None = None,
    measure: Measurer | None = None,
    remeasure: bool = False,
) -> Choice:
    """This machine's choice: read from its record, or measured now (once: concurrent first starts wait for
    the one measuring) and recorded."""
    from filelock import FileLock

    identity = machine_identity(model_source, batch_size=batch_size, threads=threads)
    path = record_path(cache_root, identity)
    if not remeasure and (saved := load_choice(path)) is not None:
        return saved
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path.parent / "runtime-choice.lock")):
        if not remeasure and (saved := load_choice(path)) is not None:
            return saved  # another process measured while we waited
        step(
            "embedder: measuring which runtime of MiniLM is fastest on this CPU "
            f"({identity['cpu']}; once per machine, about a minute)"
        )
        started = time.perf_counter()
        measurements = (measure or measure_in_child)(cache_root, model_source, batch_size, threads)
        ingest, query, why = choose(measurements)
        choice = Choice(
            ingest, query, why, tuple(measurements), identity,
            time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), round(time.perf_counter() - started, 1),
        )  # fmt: skip
        save_choice(path, choice)
        step(
            f"embedder: chose {ingest} for ingest, {query} for queries ({choice.seconds:.0f} s; `rag doctor` shows why)"
        )
        return choice


def measure_in_child(
    cache_root: Path, model_source: Path, batch_size: int, threads: int | None, rounds: int | None = None
) -> list[Measurement]:
    """Run the measurement in a child process: the candidates' models, compiled kernels and thread pools are
    gone when it ends, so the process that goes on to ingest or serve holds only the runtime it uses."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "measurements.json"
        command = [sys.executable, "-m", "rag.embedder_measure", str(cache_root), str(model_source), str(out)]
        command += ["--batch-size", str(batch_size), *(["--threads", str(threads)] if threads else [])]
        command += ["--rounds", str(rounds)] if rounds else []
        done = subprocess.run(command, stdout=subprocess.DEVNULL, check=False)  # its progress lines show on stderr
        if done.returncode != 0 or not out.exists():
            step(f"embedder: the measurement failed (exit {done.returncode}); using the reference, {REFERENCE}")
            return [Measurement(REFERENCE, error=f"measurement failed, exit {done.returncode}")]
        return [measurement_from_json(m) for m in json.loads(out.read_text(encoding="utf-8"))]


# --- runtimes by name, and the model they share --------------------------------------------------------

# Ids collections recorded before the runtimes of MiniLM shared one: each names a runtime of MiniLM.
LEGACY_IDS = frozenset({f"{MINILM_ID}+int8", f"{MINILM_ID}+openvino-int8", f"{MINILM_ID}+openvino"})


def same_model(recorded: str, current: str) -> bool:
    """Whether vectors recorded under `recorded` and those of `current` may share an index."""

    def canonical(model: str) -> str:
        return MINILM_ID if model in LEGACY_IDS else model

    return canonical(recorded) == canonical(current)


def runtime_embedder(
    runtime: str,
    source: Path | None,
    *,
    cache_root: Path,
    batch_size: int = 16,
    threads: int | None = None,
    serving: bool = False,
) -> SentenceTransformerEmbedder | OpenVinoEmbedder:
    """The embedder of a runtime name, `backend-precision` (`openvino-int8`, `torch-f32`, ...). `serving`:
    tuned for short requests (OpenVINO's latency hint) rather than batches of passages."""
    backend, _, precision = runtime.partition("-")
    quantize = "none" if precision == "f32" else precision
    if backend == "torch":
        return SentenceTransformerEmbedder(source, batch_size=batch_size, quantize=quantize, threads=threads)
    if backend == "openvino":
        return OpenVinoEmbedder(
            source, cache_root=cache_root, batch_size=batch_size, quantize=quantize, threads=threads, latency=serving
        )
    raise ValueError(f"Unknown embedder runtime {runtime!r}.")
