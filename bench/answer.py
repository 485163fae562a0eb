"""Answering benchmark: retrieval latency (SQuAD dev, and a 100k-chunk store), answer latency over HTTP,
tokens/s and server RSS, side by side with the LangChain peer in the same run.

    python bench/answer.py [--dataset ../shared/data/squad_dev_v1.1.json] [--questions 40] [--no-peer]

Ours: the SQuAD passages are signed and ingested through the real path; `rag serve` runs as a
subprocess on that store and answers `POST /v1/answer` (hybrid retrieval, Gemma 3 270M, watermark,
groundedness check). The peer (`../shared/bench/langchain_baseline.py`, SmolLM2, dense top-3, no
checks) answers the same seeded sample. The last line printed is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
sys.path[0] = str(REPO)  # run as a script, this folder would shadow the `ingest` package

SCALE_CHUNKS = 100_000


def run_peer(dataset: Path, limit: int) -> dict[str, float]:
    script = SHARED / "bench" / "langchain_baseline.py"
    out = subprocess.run(
        [sys.executable, str(script), "--dataset", str(dataset), "--limit", str(limit), "--seed", "0"],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def retrieval_latency(retriever: object, questions: list[str]) -> list[float]:
    timings = []
    for question in questions:
        start = time.perf_counter()
        retriever.retrieve(question, top_k=4)  # type: ignore[attr-defined]
        timings.append((time.perf_counter() - start) * 1000)
    return timings


def scaled_store(root: Path, settings: object, source: object, embedder: object) -> object:
    """A 100k-chunk Chroma collection: the real chunks, then perturbed copies of their real vectors."""
    import numpy as np

    from rag.retrieval import HybridRetriever, LexicalIndex
    from rag.stores import ChromaStore
    from rag.types import Chunk

    ids = source.ids()  # type: ignore[attr-defined]
    base = source.get(ids)  # type: ignore[attr-defined]
    vectors = np.asarray(embedder.embed([c.text for c in base]), dtype=np.float32)  # type: ignore[attr-defined]
    store = ChromaStore.open(path=root / "chroma100k", url=None, collection="scaled")
    rng = np.random.default_rng(0)
    batch: list[Chunk] = []
    rows: list[np.ndarray] = []
    for n in range(SCALE_CHUNKS):
        original = base[n % len(base)]
        vector = vectors[n % len(base)] + (rng.normal(0, 0.02, vectors.shape[1]) if n >= len(base) else 0)
        rows.append(vector / np.linalg.norm(vector))
        meta = {**original.metadata, "doc_id": f"{original.metadata['doc_id']}#{n // len(base)}"}
        batch.append(Chunk(f"s{n:06d}", meta["doc_id"], 0, original.text, "", "", meta))
        if len(batch) == 4096 or n == SCALE_CHUNKS - 1:
            store.upsert(batch, [r.tolist() for r in rows])
            batch, rows = [], []
    lexical = LexicalIndex(root / "bm25-100k")
    lexical.rebuild(store, "scaled")
    return HybridRetriever(store, embedder, lexical)  # type: ignore[arg-type]


def serve(settings_env: dict[str, str], port: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-c", "from rag.cli import main; main()", "serve", "--port", str(port)],
        cwd=REPO,
        env={**os.environ, **settings_env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", type=Path, default=SHARED / "data" / "squad_dev_v1.1.json")
    parser.add_argument("--questions", type=int, default=40, help="Answered questions (both systems).")
    parser.add_argument("--retrieval-questions", type=int, default=300)
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--no-peer", action="store_true")
    args = parser.parse_args()

    import httpx
    import psutil

    from rag.evaluation.run import percentile
    from rag.evaluation.squad import SquadData, write_signed_passages
    from rag.settings import Settings
    from rag.wiring import build_embedder, build_ingestor, build_retriever, build_store

    data = SquadData.load(args.dataset)
    figures: dict[str, float | int | str] = {"passages": len(data.passages)}
    peer = None if args.no_peer else run_peer(args.dataset, args.questions)  # first: clean peak RSS
    sample = random.Random(0).sample(data.questions, args.retrieval_questions)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        corpus, trust = write_signed_passages(data.passages, root / "signed")
        settings = Settings(data_dir=root / "data", trust_path=trust)
        embedder = build_embedder(settings)
        build_ingestor(settings, embedder).ingest([corpus])
        retriever = build_retriever(settings, embedder)
        retriever.warm_up()  # what the server does before /readyz turns ready
        small = retrieval_latency(retriever, [q.question for q in sample])
        figures.update(
            chunks=build_store(settings).count(),
            retrieval_p50_ms=round(percentile(small, 0.5), 2),
            retrieval_p95_ms=round(percentile(small, 0.95), 2),
        )
        print(f"retrieval over {figures['chunks']} chunks: p50 {figures['retrieval_p50_ms']} ms", flush=True)
        scaled = scaled_store(root, settings, build_store(settings), embedder)
        scaled.warm_up()  # type: ignore[attr-defined]
        large = retrieval_latency(scaled, [q.question for q in sample])
        figures.update(
            retrieval_p50_ms_100k=round(percentile(large, 0.5), 2),
            retrieval_p95_ms_100k=round(percentile(large, 0.95), 2),
        )
        print(f"retrieval over 100k chunks: p95 {figures['retrieval_p95_ms_100k']} ms", flush=True)
        del scaled, retriever, embedder

        env = {"RAG_DATA_DIR": str(settings.data_dir), "RAG_TRUST_PATH": str(trust)}
        server = serve(env, args.port)
        try:
            url = f"http://127.0.0.1:{args.port}"
            deadline = time.time() + 600
            while time.time() < deadline:
                try:
                    if httpx.get(f"{url}/readyz", timeout=5).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                time.sleep(1)
            else:
                raise SystemExit("the server did not become ready")
            process = psutil.Process(server.pid)
            asked = random.Random(0).sample(data.questions, args.questions)
            seconds, tokens, generate_s, rss, abstained = [], 0, 0.0, 0, 0
            for question in asked:
                start = time.perf_counter()
                response = httpx.post(f"{url}/v1/answer", json={"question": question.question}, timeout=120)
                seconds.append(time.perf_counter() - start)
                body = response.json()
                abstained += bool(body["abstained"])
                tokens += int(body["timings"].get("tokens", 0) or 0)
                generate_s += float(body["timings"].get("generate_ms", 0)) / 1000
                rss = max(rss, process.memory_info().rss)
        finally:
            server.terminate()
            server.wait(30)
    figures.update(
        questions=args.questions,
        answer_p50_s=round(percentile(seconds, 0.5), 3),
        answer_p95_s=round(percentile(seconds, 0.95), 3),
        tokens_per_s=round(tokens / generate_s, 2) if generate_s else 0.0,
        abstention_rate=round(abstained / args.questions, 3),
        rss_mb=round(rss / 2**20, 1),
    )
    if peer is not None:
        figures.update(
            peer_retrieval_p50_ms=peer["retrieval_p50_ms"],
            peer_retrieval_p95_ms=peer["retrieval_p95_ms"],
            peer_answer_p50_s=peer["answer_p50_s"],
            peer_answer_p95_s=peer["answer_p95_s"],
            peer_tokens_per_s=peer["grounded_tokens_per_s"],
            peer_rss_mb=peer["peak_rss_mb"],
            retrieval_speedup_vs_peer=round(peer["retrieval_p95_ms"] / float(figures["retrieval_p95_ms"]), 2),
            answer_speedup_vs_peer=round(peer["answer_p50_s"] / float(figures["answer_p50_s"]), 2),
        )
    rows = [
        ("retrieval p50, ms", "retrieval_p50_ms", "peer_retrieval_p50_ms"),
        ("retrieval p95, ms", "retrieval_p95_ms", "peer_retrieval_p95_ms"),
        ("retrieval p95 @100k, ms", "retrieval_p95_ms_100k", None),
        ("answer p50, s", "answer_p50_s", "peer_answer_p50_s"),
        ("answer p95, s", "answer_p95_s", "peer_answer_p95_s"),
        ("tokens/s", "tokens_per_s", "peer_tokens_per_s"),
        ("RSS, MB", "rss_mb", "peer_rss_mb"),
    ]
    print(f"{'figure':<26}{'ours':>12}{'peer':>12}")
    for label, ours, theirs in rows:
        print(f"{label:<26}{figures[ours]!s:>12}{figures.get(theirs or '', '-')!s:>12}")
    print(
        f"speed-up vs peer: retrieval p95 {figures.get('retrieval_speedup_vs_peer', '-')}x, "
        f"answer p50 {figures.get('answer_speedup_vs_peer', '-')}x"
    )
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
