"""Ingest benchmark: the 2,067 SQuAD dev passages as signed documents, ours vs the LangChain peer.

    python bench/ingest.py [--dataset ../shared/data/squad_dev_v1.1.json] [--no-peer]

Ours: verify signature + digest + policy, chunk, embed (MiniLM), write to embedded Chroma with
provenance metadata, append to the ledger. The peer (`../shared/bench/langchain_baseline.py
--ingest-only`) runs in a subprocess in the same run. Model loading is outside the timed part for
both. The last line printed is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
# Run as a script, this file's folder comes first on sys.path and its name would shadow the package.
sys.path[0] = str(REPO)


def run_peer(dataset: Path) -> dict[str, float]:
    script = SHARED / "bench" / "langchain_baseline.py"
    out = subprocess.run(
        [sys.executable, str(script), "--dataset", str(dataset), "--ingest-only"],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", type=Path, default=SHARED / "data" / "squad_dev_v1.1.json")
    parser.add_argument("--no-peer", action="store_true")
    parser.add_argument("--recall-questions", type=int, default=300)
    parser.add_argument("--no-loop-guard", action="store_true", help="Skip the watermark check (not the default).")
    args = parser.parse_args()

    from ingest.pipeline import Ingestor
    from rag.settings import Settings
    from rag.squad import SquadData, passage_doc_id, write_signed_passages
    from rag.watermark import WatermarkCheck
    from rag.wiring import build_embedder, build_store, content_checks

    data = SquadData.load(args.dataset)
    passages, questions = data.passages, [(q.question, q.passage) for q in data.questions]
    figures: dict[str, float | int | str] = {"passages": len(passages)}
    # The peer runs first: a child's peak RSS starts from its parent's at fork time on Linux.
    peer = None if args.no_peer else run_peer(args.dataset)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        start = time.perf_counter()
        # SQuAD passages are Wikipedia text written by people: signing them as human is honest.
        corpus, trust = write_signed_passages(passages, root, curator="bench-curator")
        figures["sign_seconds"] = round(time.perf_counter() - start, 2)

        settings = Settings(data_dir=root / "data", trust_path=trust)
        embedder = build_embedder(settings)
        embedder.warm_up()
        checks = [] if args.no_loop_guard else content_checks(settings)
        for check in checks:
            if isinstance(check, WatermarkCheck):
                check.detectors()  # load the tokenizers outside the timed part, like the embedder
        ingestor = Ingestor(settings, build_store(settings), embedder, checks=checks)
        figures["loop_guard"] = not args.no_loop_guard
        start = time.perf_counter()
        first = ingestor.ingest([corpus])
        seconds = time.perf_counter() - start
        assert not first.rejected and len(first.accepted) + len(first.duplicates) == len(passages)
        start = time.perf_counter()
        again = Ingestor(settings, build_store(settings), embedder).ingest([corpus])
        reseconds = time.perf_counter() - start
        assert again.chunks == 0
        figures.update(
            ingest_seconds=round(seconds, 2),
            ingest_passages_per_s=round(len(passages) / seconds, 2),
            chunks=first.chunks,
            reingest_seconds=round(reseconds, 3),
            reingest_speedup=round(seconds / reseconds, 1),
        )

        # Retrieval sanity for the (int8) embeddings: dense-only recall@4 of the gold passage.
        store = build_store(settings)
        sample = random.Random(0).sample(questions, min(args.recall_questions, len(questions)))
        vectors = embedder.embed([q for q, _ in sample])
        hits = 0
        for (_, gold), vec in zip(sample, vectors, strict=True):
            got = store.query(vec, 4)
            hits += any(h.metadata["doc_id"] == passage_doc_id(gold) for h in got)
        figures["dense_recall_at_4"] = round(hits / len(sample), 3)
    figures["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)

    if peer is not None:
        figures.update(
            peer_ingest_passages_per_s=peer["ingest_passages_per_s"],
            peer_ingest_seconds=peer["ingest_seconds"],
            peer_reingest_seconds=peer["reingest_seconds"],
            peer_peak_rss_mb=peer["peak_rss_mb"],
            ingest_ratio_vs_peer=round(float(figures["ingest_passages_per_s"]) / peer["ingest_passages_per_s"], 2),
        )

    rows = [
        ("first ingest, passages/s", "ingest_passages_per_s", "peer_ingest_passages_per_s"),
        ("re-ingest unchanged, s", "reingest_seconds", "peer_reingest_seconds"),
        ("peak RSS, MB", "peak_rss_mb", "peer_peak_rss_mb"),
    ]
    print(f"{'figure':<28}{'ours':>14}{'peer':>14}")
    for label, ours, theirs in rows:
        print(f"{label:<28}{figures[ours]!s:>14}{figures.get(theirs, '-')!s:>14}")
    print(
        f"ratio ours/peer: {figures.get('ingest_ratio_vs_peer', '-')}, re-ingest speedup: "
        f"{figures['reingest_speedup']}x, dense recall@4: {figures['dense_recall_at_4']}"
    )
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
