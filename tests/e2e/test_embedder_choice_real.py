"""The measured embedder choice with the real runtimes: every candidate this machine offers is built and
measured in a child process (as on first use), the float runtimes agree with float32 in both shapes, the
choice is eligible in its shape, and a real Chroma collection built by one runtime is queried by another."""

from __future__ import annotations

from pathlib import Path

import pytest

from rag.embedder_choice import MIN_COSINE, REFERENCE, Measurement, choose, measure_in_child, runtime_embedder
from rag.embedder_measure import candidates
from rag.embedders import MINILM_ID, default_minilm_path
from rag.settings import Settings
from rag.stores import ChromaStore
from rag.types import Chunk
from tests.conftest import pydoc_text

pytestmark = pytest.mark.slow

TOPICS = ["assert", "pass", "while", "break", "global"]
QUESTIONS = [
    "What happens to assert statements when optimisation is requested?",
    "Which statement is a null operation that does nothing?",
    "How does a while loop repeat execution while an expression is true?",
    "What terminates the nearest enclosing loop?",
    "Which statement declares that identifiers are interpreted as module-level names?",
]


@pytest.fixture(scope="module")
def measured() -> list[Measurement]:
    # The machine's model cache: the OpenVINO models built there once are reused (a fresh cache would
    # calibrate int8 again); one timing round is enough to check the mechanism.
    return measure_in_child(Settings().model_cache_dir, default_minilm_path(), 16, None, rounds=1)


def test_every_candidate_is_built_timed_and_the_float_ones_agree(measured: list[Measurement]) -> None:
    by_name = {m.runtime: m for m in measured}
    assert set(by_name) == set(candidates()) and {REFERENCE, "torch-int8", "openvino-int8"} <= set(by_name)
    assert all(m.error is None for m in measured), [m.error for m in measured if m.error]
    assert by_name[REFERENCE].ingest_cosine == by_name[REFERENCE].query_cosine == (1.0, 1.0)
    for name in ("openvino-f32", "openvino-bf16", "openvino-f16"):
        if name in by_name:  # float arithmetic of the same graph: far inside the tolerance in both shapes
            assert by_name[name].agrees("ingest") and by_name[name].agrees("query"), by_name[name]
            assert min(by_name[name].ingest_cosine[0], by_name[name].query_cosine[0]) > 0.999
    # int8 runs agree in batches of passages (what it would embed at ingest), within the tolerance.
    assert by_name["openvino-int8"].ingest_cosine[0] >= MIN_COSINE, by_name["openvino-int8"]
    # A runtime is timed only in the shapes it is eligible for (an ineligible one is never chosen there).
    for shape in ("ingest", "query"):
        assert all((m.time(shape) or 0) > 0 for m in measured if m.eligible(shape)), shape
        assert all(m.time(shape) is None for m in measured if not m.eligible(shape)), shape


def test_the_choice_is_eligible_and_one_runtime_queries_anothers_collection(
    measured: list[Measurement], tmp_path: Path
) -> None:
    ingest, query, why = choose(measured)
    by_name = {m.runtime: m for m in measured}
    assert by_name[ingest].eligible("ingest") and by_name[query].eligible("query"), why
    cache, source = Settings().model_cache_dir, default_minilm_path()
    pairs = {(ingest, query), ("openvino-int8", REFERENCE), (REFERENCE, "openvino-f32")}
    for number, (writer, reader) in enumerate(sorted(pairs)):
        store = ChromaStore.open(path=tmp_path / str(number), embedder=MINILM_ID, runtime=writer)
        passages = [pydoc_text(topic)[:1200] for topic in TOPICS]
        vectors = runtime_embedder(writer, source, cache_root=cache).embed(passages)
        store.upsert([Chunk(t, t, 0, p, "", "", {"doc_id": t}) for t, p in zip(TOPICS, passages, strict=True)], vectors)
        opened = ChromaStore.open(path=tmp_path / str(number), embedder=MINILM_ID, runtime=reader)  # not refused
        asker = runtime_embedder(reader, source, cache_root=cache, serving=True)
        found = [opened.query(asker.embed([q])[0], 1)[0].id for q in QUESTIONS]
        assert found == TOPICS, (writer, reader, found)
