"""The OpenVINO int8 embedder against sentence-transformers' float32 MiniLM, and its once-per-machine build."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from rag import embedders
from rag.embedders import OpenVinoEmbedder, SentenceTransformerEmbedder, calibration_texts, openvino_model
from rag.settings import Settings
from rag.wiring import build_embedder
from tests.conftest import REPO, pydoc_text

pytestmark = pytest.mark.slow

TEXTS = [
    "What does the assert statement do when debugging is on?",
    pydoc_text("assert")[:1200],
    pydoc_text("pass"),
    pydoc_text("while")[:900],
    "The Normans were the people who in the 10th and 11th centuries gave their name to Normandy.",
    "  leading and trailing spaces are stripped, as sentence-transformers does  ",
    "x",
]


@pytest.fixture(scope="module")
def openvino(tmp_path_factory: pytest.TempPathFactory) -> OpenVinoEmbedder:
    # int8 set explicitly (the measured choice may pick another runtime), with the machine's model cache
    embedder = build_embedder(Settings(embedder={"backend": "openvino"}))
    assert isinstance(embedder, OpenVinoEmbedder) and embedder.quantize == "int8"
    embedder.warm_up()
    return embedder


def test_int8_vectors_match_float32_sentence_transformers(openvino: OpenVinoEmbedder) -> None:
    reference = np.array(SentenceTransformerEmbedder(quantize="none").embed(TEXTS * 3))
    got = np.array(openvino.embed(TEXTS * 3))  # 21 texts: the batched, asynchronous path
    assert got.shape == (21, 384)
    assert np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-3)
    cosines = np.sum(got * reference, axis=1)
    assert cosines.min() > 0.97 and cosines.mean() > 0.99, cosines
    single = np.array(openvino.embed(TEXTS[:1]))  # one request, the query path
    assert float(single[0] @ got[0]) > 0.9999


def test_tokenisation_is_sentence_transformers_own(openvino: OpenVinoEmbedder) -> None:
    from sentence_transformers import SentenceTransformer

    from rag.embedders import default_minilm_path

    model = SentenceTransformer(str(default_minilm_path()), device="cpu", local_files_only=True)
    long_text = pydoc_text("assert") * 3  # past the 256-wordpiece limit: both truncate the same way
    expected = model.preprocess([*TEXTS, long_text])
    got = openvino.tokenize([*TEXTS, long_text])
    assert expected["input_ids"].shape[1] == got["input_ids"].shape[1] == 256
    assert np.array_equal(expected["input_ids"].numpy(), got["input_ids"])
    assert np.array_equal(expected["attention_mask"].numpy(), got["attention_mask"])

    # Shorter batches are padded on to a multiple of 32, masked out.
    short = [TEXTS[0], TEXTS[4], TEXTS[5], TEXTS[6]]
    expected = model.preprocess(short)
    got = openvino.tokenize(short)
    width = expected["input_ids"].shape[1]
    assert got["input_ids"].shape[1] == -(-width // 32) * 32 > width
    assert np.array_equal(expected["input_ids"].numpy(), got["input_ids"][:, :width])
    assert np.array_equal(expected["attention_mask"].numpy(), got["attention_mask"][:, :width])
    assert not got["attention_mask"][:, width:].any()


def test_retrieval_ranks_the_right_topic_first(openvino: OpenVinoEmbedder) -> None:
    topics = ["assert", "pass", "while", "break", "global"]
    passages = np.array(openvino.embed([pydoc_text(t)[:1200] for t in topics]))
    questions = [
        "What happens to assert statements when optimisation is requested?",
        "Which statement is a null operation that does nothing?",
        "How does a while loop repeat execution while an expression is true?",
        "What terminates the nearest enclosing loop?",
        "Which statement declares that identifiers are interpreted as module-level names?",
    ]
    scores = np.array(openvino.embed(questions)) @ passages.T
    assert list(scores.argmax(axis=1)) == list(range(len(topics)))


def test_saved_model_is_reused_and_a_killed_build_leaves_no_model(
    openvino: OpenVinoEmbedder, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = Settings().model_cache_dir / "embedder"
    source = embedders.default_minilm_path()
    built = openvino_model(source, folder, int8=True)
    assert built.exists() and (built.parent / "identity.json").exists()

    def no_rebuild(_: Path) -> None:
        raise AssertionError("the saved model should have been reused")

    monkeypatch.setattr(embedders, "_convert", no_rebuild)
    assert openvino_model(source, folder, int8=True) == built
    monkeypatch.undo()

    # A build that dies after converting (float32 here: no calibration, quick) leaves no model behind...
    real_convert = embedders._convert

    def convert_then_die(path: Path) -> object:
        real_convert(path)
        raise KeyboardInterrupt

    monkeypatch.setattr(embedders, "_convert", convert_then_die)
    with pytest.raises(KeyboardInterrupt):
        openvino_model(source, tmp_path / "embedder", int8=False)
    assert not list((tmp_path / "embedder").glob("minilm-fp32-*/model.xml"))
    monkeypatch.undo()
    # ...and the next start builds a whole one, which gives sentence-transformers' float32 vectors.
    vectors = OpenVinoEmbedder(cache_root=tmp_path, quantize="none").embed(TEXTS[:2])
    assert len(list((tmp_path / "embedder").glob("minilm-fp32-*/model.xml"))) == 1
    reference = SentenceTransformerEmbedder(quantize="none").embed(TEXTS[:2])
    assert float(np.dot(vectors[0], reference[0])) > 0.9999


CONCURRENT_FIRST_USE = textwrap.dedent(
    """
    from concurrent.futures import ThreadPoolExecutor
    from pydoc_data.topics import topics
    from rag.settings import Settings
    from rag.wiring import build_embedder

    texts = [str(topics[name])[:800] for name in sorted(topics)[:40]]
    jobs = [texts[i : i + 1] if i % 2 else texts for i in range(8)]  # one batch, and several in flight
    for serving in (False, True):
        # fresh bindings state: first use is concurrent
        embedder = build_embedder(Settings(embedder={"backend": "openvino"}), serving=serving)
        with ThreadPoolExecutor(4) as pool:
            together = list(pool.map(embedder.embed, jobs))
        alone = [embedder.embed(job) for job in jobs]
        worst = max(abs(a - b) for x, y in zip(together, alone) for u, v in zip(x, y) for a, b in zip(u, v))
        assert worst < 1e-5, worst
    print("ok")
    """
)


def test_threads_embedding_at_once_neither_deadlock_nor_mix_up_rows(openvino: OpenVinoEmbedder) -> None:
    # The embedder's infer requests are shared, so callers must take turns (without the lock: "Infer
    # Request is busy"). Two threads first using OpenVINO's bindings at the same time deadlocked in 1
    # run of 5, so this runs in a fresh process (their first use) with a time limit instead of a hang.
    run = subprocess.run(
        [sys.executable, "-c", CONCURRENT_FIRST_USE], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0 and run.stdout.strip() == "ok", run.stderr[-2000:]


def test_calibration_text_is_deterministic_and_mixed() -> None:
    texts = calibration_texts()
    assert texts == calibration_texts() and len(texts) == 96
    lengths = sorted(len(t) for t in texts)
    assert lengths[-1] <= 1200 and lengths[len(lengths) // 2] > 600 and lengths[0] < 80
