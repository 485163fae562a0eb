"""The embedder runtime chosen by measurement (fake timings): the fastest agreeing runtime per shape, recorded
once per machine, measured again when the machine or the packages change; explicit settings override."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path

import pytest
from typer.testing import CliRunner

from rag import embedder_choice
from rag.embedder_choice import (
    MEAN_COSINE,
    MIN_COSINE,
    REFERENCE,
    Choice,
    Measurement,
    choose,
    load_choice,
    machine_choice,
    machine_identity,
    record_path,
)
from rag.embedders import MINILM_ID, OpenVinoEmbedder, SentenceTransformerEmbedder
from rag.settings import Settings
from tests.fakes import FakeEmbedder

EXACT = (1.0, 1.0)
CLOSE = (0.985, 0.997)  # within the tolerance
DRIFTING = (0.85, 0.995)  # one text far off: a mean alone would pass it


def fake(
    runtime: str,
    ingest_s: float,
    query_ms: float,
    batched: tuple[float, float] = EXACT,
    single: tuple[float, float] = EXACT,
) -> Measurement:
    return Measurement(runtime, batched, single, ingest_s, query_ms)


MEASURED = [
    fake("torch-f32", 10.0, 20.0),
    fake("torch-int8", 6.0, 9.0, batched=(0.945, 0.976), single=(0.957, 0.979)),  # fast, but off everywhere
    fake("openvino-f32", 7.0, 6.0),
    fake("openvino-bf16", 5.0, 7.0, batched=CLOSE, single=CLOSE),
    fake("openvino-int8", 3.0, 2.0, batched=CLOSE, single=DRIFTING),  # fastest; single texts drift
]
# As the measurement records it: a runtime is not timed in a shape it is not eligible for.
RECORDED = [*MEASURED[:-1], Measurement("openvino-int8", CLOSE, DRIFTING, 3.0, None)]


def test_the_fastest_agreeing_runtime_is_chosen_for_each_shape() -> None:
    ingest, query, why = choose(MEASURED)
    # int8 agrees in batches, so it embeds passages; its single texts drift, so it never serves queries.
    assert ingest == "openvino-int8"
    assert query == "openvino-f32"  # int8 (2 ms) and torch-int8 (9 ms... slower anyway) refused, bf16 slower
    assert "openvino-int8" in why["query"] and "single texts: min cosine 0.850" in why["query"]
    assert why["ingest"].startswith("openvino-int8: fastest agreeing runtime (openvino-int8 3")
    assert "torch-int8" in why["ingest"] and "batched: min cosine 0.945" in why["ingest"]


def test_a_fast_runtime_that_disagrees_is_refused_in_both_shapes() -> None:
    measured = [fake("torch-f32", 10.0, 20.0), fake("openvino-int8", 1.0, 1.0, batched=DRIFTING, single=DRIFTING)]
    assert choose(measured)[:2] == (REFERENCE, REFERENCE)
    # The tolerance is on every text (min) and on the mean: a uniform drift is refused too.
    uniform = (MIN_COSINE + 0.001, MEAN_COSINE - 0.001)
    assert choose([measured[0], fake("torch-int8", 1.0, 1.0, batched=uniform, single=uniform)])[:2] == (
        REFERENCE,
        REFERENCE,
    )
    assert Measurement("x", (MIN_COSINE, MEAN_COSINE), (MIN_COSINE, MEAN_COSINE)).agrees("query")


def test_the_reference_wins_a_near_tie_and_failures_are_never_chosen() -> None:
    near = [fake("torch-f32", 10.0, 10.0), fake("openvino-bf16", 9.8, 9.7, batched=CLOSE, single=CLOSE)]
    ingest, query, why = choose(near)
    assert (ingest, query) == (REFERENCE, REFERENCE)
    assert "less than 5% faster" in why["ingest"]
    broken = [fake("torch-f32", 10.0, 10.0), Measurement("openvino-int8", error="RuntimeError: no plugin")]
    assert choose(broken)[:2] == (REFERENCE, REFERENCE)
    assert choose([])[:2] == (REFERENCE, REFERENCE)


class FakeMeasurer:
    """Stands in for the child process: returns the given measurements and counts its calls."""

    def __init__(self, measurements: list[Measurement]) -> None:
        self.measurements = measurements
        self.calls = 0

    def __call__(self, cache_root: Path, source: Path, batch_size: int, threads: int | None) -> list[Measurement]:
        self.calls += 1
        return list(self.measurements)


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    source = tmp_path / "minilm"
    source.mkdir()
    (source / "model.safetensors").write_bytes(b"weights")
    return source


def test_measured_once_per_machine_and_read_afterwards(tmp_path: Path, model_dir: Path) -> None:
    measurer = FakeMeasurer(MEASURED)
    first = machine_choice(tmp_path / "cache", model_dir, measure=measurer)
    again = machine_choice(tmp_path / "cache", model_dir, measure=measurer)
    assert measurer.calls == 1
    assert (first.ingest, first.query) == (again.ingest, again.query) == ("openvino-int8", "openvino-f32")
    assert again.measurements == first.measurements and again.why == first.why
    saved = json.loads(next((tmp_path / "cache" / "embedder").glob("runtime-choice-*.json")).read_text())
    cpu, flags = embedder_choice.cpu_description()
    assert saved["machine"]["cpu"] == cpu and saved["machine"]["flags"] == flags
    assert saved["machine"]["packages"]["torch"] and saved["tolerance"]["min_cosine"] == MIN_COSINE
    machine_choice(tmp_path / "cache", model_dir, measure=measurer, remeasure=True)
    assert measurer.calls == 2


def test_another_cpu_or_other_packages_measure_again(
    tmp_path: Path, model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    measurer = FakeMeasurer(MEASURED)
    machine_choice(tmp_path, model_dir, measure=measurer)
    monkeypatch.setattr(embedder_choice, "cpu_description", lambda: ("AMD EPYC 7B13", ["avx2", "fma"]))
    machine_choice(tmp_path, model_dir, measure=measurer)
    machine_choice(tmp_path, model_dir, measure=measurer)
    assert measurer.calls == 2  # the AMD record is its own, and then read
    monkeypatch.setattr(embedder_choice, "PACKAGES", (*embedder_choice.PACKAGES, "pytest"))
    machine_choice(tmp_path, model_dir, measure=measurer)
    assert measurer.calls == 3
    assert len(list((tmp_path / "embedder").glob("runtime-choice-*.json"))) == 3


def test_a_damaged_record_is_measured_again(tmp_path: Path, model_dir: Path) -> None:
    measurer = FakeMeasurer(MEASURED)
    machine_choice(tmp_path, model_dir, measure=measurer)
    path = record_path(tmp_path, machine_identity(model_dir, batch_size=16, threads=None))
    path.write_text('{"version": 1, "ingest": ')
    assert load_choice(path) is None
    assert machine_choice(tmp_path, model_dir, measure=measurer).ingest == "openvino-int8"
    assert measurer.calls == 2 and load_choice(path) is not None


def record(settings: Settings, ingest: str, query: str, measurements: list[Measurement] | None = None) -> None:
    """A saved choice for this machine, as a measurement would leave it."""
    from rag.embedders import default_minilm_path

    identity = machine_identity(default_minilm_path(), batch_size=16, threads=None)
    choice = Choice(ingest, query, {"ingest": "fake", "query": "fake"}, tuple(measurements or MEASURED), identity)
    embedder_choice.save_choice(record_path(settings.model_cache_dir, identity), choice)


@pytest.fixture
def cache_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    monkeypatch.setenv("RAG_MODEL_CACHE_DIR", str(tmp_path / "models"))

    def no_measuring(*_: object) -> list[Measurement]:
        raise AssertionError("nothing should be measured here")

    monkeypatch.setattr(embedder_choice, "measure_in_child", no_measuring)
    return Settings()


def test_build_embedder_uses_the_recorded_choice_per_shape(cache_settings: Settings) -> None:
    from rag.wiring import build_embedder

    record(cache_settings, "openvino-int8", "torch-f32")
    ingest = build_embedder(cache_settings)
    query = build_embedder(cache_settings, serving=True)
    assert isinstance(ingest, OpenVinoEmbedder) and ingest.runtime == "openvino-int8" and not ingest.latency
    assert isinstance(query, SentenceTransformerEmbedder) and query.runtime == "torch-f32"
    assert ingest.model_id == query.model_id == MINILM_ID  # one model, whichever runtime


def test_an_explicit_backend_overrides_the_choice_without_measuring(
    cache_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    from rag.wiring import build_embedder

    monkeypatch.setenv("RAG_EMBEDDER__BACKEND", "openvino")
    monkeypatch.setenv("RAG_EMBEDDER__QUANTIZE", "bf16")
    served = build_embedder(Settings(), serving=True)  # no record exists and none is measured
    assert isinstance(served, OpenVinoEmbedder) and served.runtime == "openvino-bf16" and served.latency
    monkeypatch.setenv("RAG_EMBEDDER__BACKEND", "torch")
    monkeypatch.delenv("RAG_EMBEDDER__QUANTIZE")
    assert build_embedder(Settings()).runtime == "torch-int8"  # type: ignore[attr-defined]


def test_settings_refuse_a_precision_without_a_backend_or_one_torch_lacks() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="explicit backend"):
        Settings(embedder={"quantize": "int8"})
    with pytest.raises(ValidationError, match="torch runs"):
        Settings(embedder={"backend": "torch", "quantize": "bf16"})
    assert Settings().embedder.backend == "auto"


def test_doctor_prints_the_choice_why_and_the_timings(
    cache_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    from rag.cli import app

    record(cache_settings, "openvino-int8", "openvino-f32", RECORDED)
    result = CliRunner().invoke(app, ["doctor"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "ingest: openvino-int8" in result.output and "queries: openvino-f32" in result.output
    assert "CPU" in result.output and "torch-int8" in result.output and "query ms" in result.output
    int8_row = next(line for line in result.output.splitlines() if "openvino-int8" in line and "│" in line)
    assert "3.000" in int8_row and "–" in int8_row and "ingest" in int8_row
    as_json = json.loads(CliRunner().invoke(app, ["doctor", "--json"]).output)
    shapes = as_json["embedder"]["shapes"]
    assert shapes["ingest"]["runtime"] == "openvino-int8" and shapes["query"]["why"] == "fake"
    int8 = next(m for m in as_json["embedder"]["measurements"] if m["runtime"] == "openvino-int8")
    assert int8["ingest_eligible"] and not int8["query_eligible"] and int8["query_ms"] is None

    # Set explicitly where this CPU measured it as drifting: it runs, and the doctor says so.
    monkeypatch.setenv("RAG_EMBEDDER__BACKEND", "openvino")
    explicit = json.loads(CliRunner().invoke(app, ["doctor", "--json"]).output)["embedder"]["shapes"]
    assert explicit["query"]["runtime"] == "openvino-int8"
    assert (
        "overrides the measured choice" in explicit["query"]["why"] and "min cosine 0.850" in explicit["query"]["why"]
    )
    assert "differ" not in explicit["ingest"]["why"]


VECTORS: dict[str, list[float]] = {}


class PacedEmbedder:
    """A fake runtime for the measurement itself: the fake embedder's vectors after a fixed delay per call;
    `drift` bends the vectors of single texts (as static int8 did on this machine's short queries)."""

    dimension = 64

    def __init__(self, delay: float, drift: bool = False) -> None:
        self.delay, self.drift = delay, drift

    def warm_up(self) -> None:
        pass

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        missing = [t for t in texts if t not in VECTORS]
        VECTORS.update(zip(missing, FakeEmbedder().embed(missing), strict=True))  # made once: only the pace counts
        time.sleep(self.delay * max(1.0, len(texts) / 8))
        vectors = [VECTORS[t] for t in texts]
        if self.drift and len(texts) == 1:
            vectors = [[v + (0.3 if i % 2 else -0.3) for i, v in enumerate(vector)] for vector in vectors]
        return vectors


def test_the_measurement_checks_agreement_times_and_runs_off_close_contenders(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from rag import embedder_measure

    paces = {
        "torch-f32": PacedEmbedder(0.008),
        "openvino-f32": PacedEmbedder(0.002),
        "openvino-bf16": PacedEmbedder(0.0027),  # within 1.5x of f32: timed against it again
        "openvino-int8": PacedEmbedder(0.0005, drift=True),
    }
    built: list[tuple[str, bool]] = []

    def build(runtime: str, *_: object, serving: bool) -> PacedEmbedder:
        built.append((runtime, serving))
        return paces[runtime]

    monkeypatch.setattr(embedder_measure, "candidates", lambda: list(paces))
    monkeypatch.setattr(embedder_measure, "build", build)
    found = {m.runtime: m for m in embedder_measure.measure(tmp_path, tmp_path, rounds=3)}
    assert found["openvino-int8"].agrees("ingest") and not found["openvino-int8"].agrees("query")
    assert found["openvino-int8"].query_ms is None  # not eligible for queries: never timed there
    assert found["openvino-bf16"].query_cosine == (1.0, 1.0) and found["torch-f32"].ingest_cosine == (1.0, 1.0)
    assert found["openvino-f32"].query_ms < found["openvino-bf16"].query_ms < found["torch-f32"].query_ms  # type: ignore[operator]
    # The run-off held the two close contenders together, built as the server builds them.
    assert built.count(("openvino-f32", True)) == 2 and built.count(("openvino-bf16", True)) == 2
    assert built.count(("torch-f32", True)) == 0
    ingest, query, _ = choose(list(found.values()))
    assert (ingest, query) == ("openvino-int8", "openvino-f32")
