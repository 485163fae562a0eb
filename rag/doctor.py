"""What runs on this machine and why: the CPU, and the embedder runtime chosen for it (`rag doctor`)."""

from __future__ import annotations

from typing import Any

from rag.embedder_choice import (
    MARGIN,
    MEAN_COSINE,
    MIN_COSINE,
    SHAPES,
    Choice,
    Measurer,
    cpu_description,
    disagreement,
    load_choice,
    machine_choice,
    machine_identity,
    record_path,
)
from rag.settings import Settings

# The flags a runtime's speed depends on: int8 dot products (VNNI, AMX, Arm's dot product and i8mm) and
# bfloat16 / float16 arithmetic.
INT8_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8", "asimddp", "i8mm")
BF16_FLAGS = ("avx512_bf16", "amx_bf16", "bf16")
OTHER_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512_fp16", "amx_tile", "asimd", "sve", "sve2")


def cpu_report() -> dict[str, Any]:
    name, flags = cpu_description()
    present = set(flags)
    return {
        "cpu": name,
        "int8_dot_products": [f for f in INT8_FLAGS if f in present],
        "bfloat16": [f for f in BF16_FLAGS if f in present],
        "vector": [f for f in OTHER_FLAGS if f in present],
        "flags_count": len(flags),
    }


def embedder_report(settings: Settings, *, remeasure: bool = False, measure: Measurer | None = None) -> dict[str, Any]:
    """The runtime of each shape with the reason, and the measurements behind it.

    With the default backend (auto) this measures when the machine has no record yet (or `remeasure`). With
    an explicit backend nothing is measured unless asked; the record, if any, still shows what auto would
    choose and whether the runtime set agrees with float32 here."""
    from rag.embedders import default_minilm_path
    from rag.wiring import embedder_runtime

    cfg = settings.embedder
    source = cfg.model_path or default_minilm_path()
    identity = machine_identity(source, batch_size=cfg.batch_size, threads=cfg.threads)
    path = record_path(settings.model_cache_dir, identity)
    choice: Choice | None = None
    if cfg.backend == "auto" or remeasure:
        choice = machine_choice(
            settings.model_cache_dir, source, batch_size=cfg.batch_size, threads=cfg.threads,
            measure=measure, remeasure=remeasure,
        )  # fmt: skip
    else:
        choice = load_choice(path)
    report: dict[str, Any] = {
        "backend": cfg.backend,
        "record": str(path) if choice is not None else None,
        "tolerance": {"min_cosine": MIN_COSINE, "mean_cosine": MEAN_COSINE, "margin": MARGIN},
        "shapes": {},
    }
    for shape in SHAPES:
        runtime = embedder_runtime(settings, serving=shape == "query")
        if cfg.backend == "auto" and choice is not None:
            why = choice.why[shape]
        else:
            why = f"{runtime}: set by RAG_EMBEDDER__BACKEND / RAG_EMBEDDER__QUANTIZE (overrides the measured choice)"
            measured = choice.measurement(runtime) if choice is not None else None
            if measured is not None and not measured.eligible(shape):
                why += f"; on this CPU its vectors differ from float32 beyond the tolerance ({disagreement(measured)})"
        report["shapes"][shape] = {"runtime": runtime, "why": why}
    if choice is not None:
        report["measured_at"] = choice.measured_at
        report["measure_seconds"] = choice.seconds
        report["auto_choice"] = {"ingest": choice.ingest, "query": choice.query}
        report["measurements"] = [
            {
                "runtime": m.runtime,
                "batched_cosine": list(m.ingest_cosine),
                "single_cosine": list(m.query_cosine),
                "ingest_eligible": m.eligible("ingest"),
                "query_eligible": m.eligible("query"),
                "ingest_s": m.ingest_s,
                "query_ms": m.query_ms,
                "error": m.error,
            }
            for m in choice.measurements
        ]
    return report
