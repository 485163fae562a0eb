"""Measure the embedder runtimes on this machine: `python -m rag.embedder_measure CACHE MODEL OUT`.

Run by `rag.embedder_choice` in a child process of its own. Each candidate is built as the stack would use
it (batches on OpenVINO's throughput streams for ingest, one request on its latency stream for queries),
checked against the float32 reference on the calibration texts, timed once, and released before the next
is built, so at most one candidate's compiled kernels are held at a time (all at once held 2.5 GB). The
close contenders of each shape (within `CONTENDERS_WITHIN` of the fastest) are then timed against each
other in alternating rounds (the order rotates each round, so none always runs on the cooler machine),
and the median kept.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import re
import statistics
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from rag.embedder_choice import REFERENCE, RUNTIMES, SHAPES, Measurement, runtime_embedder
from rag.embedders import OpenVinoEmbedder, calibration_texts
from rag.progress import step
from rag.protocols import Embedder

ROUNDS = 3
# Runtimes whose first timing is within this factor of the fastest are timed again, against each other.
CONTENDERS_WITHIN = 1.5
MAX_CONTENDERS = 3
WHAT_IS_BUILT = {
    "torch-f32": "sentence-transformers in float32, the reference",
    "torch-int8": "torch with dynamic int8 Linear layers",
    "openvino-f32": "converted to OpenVINO once per machine, float32",
    "openvino-bf16": "the OpenVINO model computed in bfloat16",
    "openvino-f16": "the OpenVINO model computed in float16",
    "openvino-int8": "OpenVINO int8 weights and activations, calibrated once per machine (NNCF, ~30 s)",
}


def candidates() -> list[str]:
    """Every runtime this machine can run: bfloat16 and float16 only where OpenVINO says the CPU computes
    them, OpenVINO's only where it loads."""
    try:
        import openvino as ov

        capabilities = set(ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"))
    except Exception:  # no OpenVINO here: torch's runtimes remain
        return [r for r in RUNTIMES if r.startswith("torch-")]
    wanted = {"openvino-bf16": "BF16", "openvino-f16": "FP16"}
    return [r for r in RUNTIMES if r not in wanted or wanted[r] in capabilities]


def build(
    runtime: str, cache_root: Path, source: Path, batch_size: int, threads: int | None, serving: bool
) -> Embedder:
    """The embedder of one runtime name, as `rag.wiring.build_embedder` builds it."""
    return runtime_embedder(
        runtime, source, cache_root=cache_root, batch_size=batch_size, threads=threads, serving=serving
    )


def cosines(got: Sequence[Sequence[float]], reference: Sequence[Sequence[float]]) -> list[float]:
    import numpy as np

    a, b = np.asarray(got, dtype=np.float64), np.asarray(reference, dtype=np.float64)
    return [float(x) for x in np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))]


def query_texts() -> list[str]:
    """Short human-written texts like questions, one per Python reference topic: its heading and the first
    sentence of its body. Static int8 was measured to drift most on single short texts."""
    from pydoc_data.topics import topics

    out: list[str] = []
    for _, text in sorted(topics.items()):
        paragraphs = str(text).strip().split("\n\n")
        out.append(paragraphs[0].strip().splitlines()[0])
        for paragraph in paragraphs[1:]:
            flat = " ".join(paragraph.split())
            if len(flat) > 40 and flat[0].isalpha():
                out.append(re.split(r"(?<=[.?!:])\s", flat)[0][:200])
                break
    return out


def _spread(values: list[float]) -> tuple[float, float]:
    return round(min(values), 5), round(statistics.fmean(values), 5)


@dataclass(frozen=True)
class Workload:
    """What is embedded: every text for agreement, fewer for timing (two full batches; single questions)."""

    texts: list[str]
    queries: list[str]
    timed_passages: list[str]
    timed_queries: list[str]

    @classmethod
    def default(cls, batch_size: int) -> Workload:
        texts, queries = calibration_texts(), query_texts()
        return cls(texts, queries, [t for t in texts if len(t) >= 1000][: 2 * batch_size], queries[::6])


def time_shape(embedder: Embedder, shape: str, work: Workload) -> float:
    """Seconds for the timed passages in batches, or the median milliseconds of one short text."""
    if shape == "ingest":
        started = time.perf_counter()
        embedder.embed(work.timed_passages)
        return time.perf_counter() - started
    each = []
    for text in work.timed_queries:
        started = time.perf_counter()
        embedder.embed([text])
        each.append((time.perf_counter() - started) * 1000)
    return statistics.median(each)


def release(*embedders: Embedder) -> None:
    """Free a candidate's model and kernels before the next is built."""
    for embedder in embedders:
        if isinstance(embedder, OpenVinoEmbedder):
            embedder.release()
    gc.collect()


def first_pass(
    runtime: str, env: tuple[Path, Path, int, int | None], work: Workload, reference: Any
) -> tuple[Measurement, Any]:
    """Build one runtime, check its agreement in both shapes, time it once in each shape it is eligible for,
    release it. `reference` holds the float32 vectors (None while measuring the reference itself)."""
    batched = build(runtime, *env, serving=False)
    single = batched if runtime.startswith("torch-") else build(runtime, *env, serving=True)
    try:
        vectors = batched.embed(work.texts)  # also warms the kernels of every padded length timed below
        if reference is None:
            # The reference's vectors of the short texts, in one call: padding is masked, so they are its
            # single-text vectors (to ~1e-7), without 158 calls (a minute of torch on a loaded host).
            reference = (vectors, dict(zip(work.queries, batched.embed(work.queries), strict=True)))
        batched_cosine = _spread(cosines(vectors, reference[0]))
        # A runtime that disagrees in batches is eligible for neither shape: a few single texts say enough.
        queries = work.queries if Measurement(runtime, batched_cosine).agrees("ingest") else work.queries[:12]
        singles = [single.embed([text])[0] for text in queries]
        single_cosine = _spread(cosines(singles, [reference[1][text] for text in queries]))
        found = Measurement(runtime, batched_cosine, single_cosine)
        times = {
            shape: time_shape(batched if shape == "ingest" else single, shape, work)
            for shape in SHAPES
            if found.eligible(shape)
        }
        return replace(found, ingest_s=times.get("ingest"), query_ms=times.get("query")), reference
    finally:
        release(batched, single)


def measure(
    cache_root: Path, source: Path, batch_size: int = 16, threads: int | None = None, rounds: int = ROUNDS
) -> list[Measurement]:
    work = Workload.default(batch_size)
    env = (cache_root, source, batch_size, threads)
    results: dict[str, Measurement] = {}
    reference: Any = None
    for runtime in candidates():
        step(f"embedder: building {runtime} ({WHAT_IS_BUILT[runtime]})")
        if reference is None and runtime != REFERENCE:
            results[runtime] = Measurement(runtime, error="the reference could not be built, so agreement is unknown")
            continue
        try:
            results[runtime], vectors = first_pass(runtime, env, work, reference)
        except Exception as exc:  # one runtime that cannot run here must not stop the others
            results[runtime] = Measurement(runtime, error=f"{type(exc).__name__}: {str(exc).strip()[:200]}")
            step(f"embedder: {runtime} cannot run here: {results[runtime].error}")
            continue
        reference = vectors
    for shape in SHAPES:
        names = contenders(list(results.values()), shape)
        if len(names) > 1 and rounds > 1:
            step(f"embedder: timing {', '.join(names)} against each other for {shape}, {rounds} alternating rounds")
            for name, value in runoff(names, shape, env, work, rounds).items():
                kept = results[name]
                results[name] = replace(kept, ingest_s=value) if shape == "ingest" else replace(kept, query_ms=value)
    return list(results.values())


def contenders(measured: list[Measurement], shape: str) -> list[str]:
    """The eligible runtimes whose single timing came within `CONTENDERS_WITHIN` of the fastest (at most
    `MAX_CONTENDERS`, which bounds the memory of holding them together)."""
    timed = sorted((m for m in measured if m.eligible(shape) and m.time(shape)), key=lambda m: m.time(shape) or 0.0)
    if not timed:
        return []
    best = timed[0].time(shape) or 0.0
    return [m.runtime for m in timed if (m.time(shape) or 0.0) <= best * CONTENDERS_WITHIN][:MAX_CONTENDERS]


def runoff(
    names: list[str], shape: str, env: tuple[Path, Path, int, int | None], work: Workload, rounds: int
) -> dict[str, float]:
    """The contenders held together and timed in alternating rounds; the median of each."""
    built = {name: build(name, *env, serving=shape == "query") for name in names}
    try:
        for embedder in built.values():
            time_shape(embedder, shape, work)  # warm: the kernels of these shapes were freed with the first pass
        timings: dict[str, list[float]] = {name: [] for name in names}
        for number in range(rounds):
            shift = number % len(names)
            for name in names[shift:] + names[:shift]:
                timings[name].append(time_shape(built[name], shape, work))
        digits = 4 if shape == "ingest" else 3
        return {name: round(statistics.median(values), digits) for name, values in timings.items()}
    finally:
        release(*built.values())


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("cache_root", type=Path)
    parser.add_argument("model", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--rounds", type=int, default=ROUNDS)
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # models come from installed packages only
    found = measure(args.cache_root, args.model, args.batch_size, args.threads, args.rounds)
    data: list[dict[str, Any]] = [asdict(m) for m in found]
    args.out.write_text(json.dumps(data), encoding="utf-8")


if __name__ == "__main__":
    main()
