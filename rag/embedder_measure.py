"""Measure the embedder runtimes on this machine: `python -m rag.embedder_measure CACHE MODEL OUT`.

Run by `rag.embedder_choice` in a child process of its own. Each candidate is built as the stack would use
it (batches on OpenVINO's throughput streams for ingest, one request on its latency stream for queries),
checked against the float32 reference on the calibration texts, then timed in alternating rounds (the
order rotates each round, so none always runs on the cooler machine) and the median kept.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from rag.embedder_choice import REFERENCE, RUNTIMES, Measurement
from rag.embedders import calibration_texts, runtime_embedder
from rag.progress import step
from rag.protocols import Embedder

ROUNDS = 3
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


def measure(
    cache_root: Path, source: Path, batch_size: int = 16, threads: int | None = None, rounds: int = ROUNDS
) -> list[Measurement]:
    texts, queries = calibration_texts(), query_texts()
    timed_passages = [t for t in texts if len(t) >= 1000][: 2 * batch_size]  # full-length chunks, two batches
    timed_queries = queries[::6]
    pairs: dict[str, tuple[Embedder, Embedder]] = {}
    agreement: dict[str, tuple[tuple[float, float], tuple[float, float]]] = {}
    errors: dict[str, str] = {}
    reference: tuple[list[list[float]], list[list[float]]] | None = None
    for runtime in candidates():
        step(f"embedder: building {runtime} ({WHAT_IS_BUILT[runtime]})")
        try:
            batched = build(runtime, cache_root, source, batch_size, threads, serving=False)
            single = (
                batched
                if runtime.startswith("torch-")
                else build(runtime, cache_root, source, batch_size, threads, True)
            )
            vectors = batched.embed(texts)  # also warms the kernels of every padded length timed below
            singles = [single.embed([text])[0] for text in queries]
        except Exception as exc:  # one runtime that cannot run here must not stop the others
            errors[runtime] = f"{type(exc).__name__}: {str(exc).strip()[:200]}"
            step(f"embedder: {runtime} cannot run here: {errors[runtime]}")
            continue
        if runtime == REFERENCE:
            reference = (vectors, singles)
        if reference is None:
            errors[runtime] = "the reference could not be built, so agreement is unknown"
            continue
        agreement[runtime] = (_spread(cosines(vectors, reference[0])), _spread(cosines(singles, reference[1])))
        pairs[runtime] = (batched, single)
    step(f"embedder: timing {len(pairs)} runtimes, {rounds} alternating rounds")
    timings = _time_rounds(pairs, timed_passages, timed_queries, rounds)
    out = [
        Measurement(
            name,
            agreement[name][0],
            agreement[name][1],
            round(statistics.median(timings[name]["ingest"]), 4),
            round(statistics.median(timings[name]["query"]), 3),
        )
        for name in pairs
    ]
    return out + [Measurement(name, error=error) for name, error in errors.items()]


def _time_rounds(
    pairs: dict[str, tuple[Embedder, Embedder]], passages: list[str], queries: list[str], rounds: int
) -> dict[str, dict[str, list[float]]]:
    """Each round times every runtime once in each shape, in an order rotated by one per round."""
    timings: dict[str, dict[str, list[float]]] = {name: {"ingest": [], "query": []} for name in pairs}
    order = list(pairs)
    for number in range(rounds):
        shift = number % len(order) if order else 0
        for name in order[shift:] + order[:shift]:
            batched, single = pairs[name]
            started = time.perf_counter()
            batched.embed(passages)
            timings[name]["ingest"].append(time.perf_counter() - started)
            each = []
            for text in queries:
                started = time.perf_counter()
                single.embed([text])
                each.append((time.perf_counter() - started) * 1000)
            timings[name]["query"].append(statistics.median(each))
    return timings


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
