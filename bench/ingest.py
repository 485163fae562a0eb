"""Ingest benchmark: the 2,067 SQuAD dev passages as signed documents, ours vs the LangChain peer.

    python bench/ingest.py [--dataset ../shared/data/squad_dev_v1.1.json] [--repeat 3] [--no-peer]

Ours: verify signature + digest + policy, loop guard, chunk, embed (MiniLM), write to embedded Chroma
with provenance metadata, append to the ledger. The peer (`../shared/bench/langchain_baseline.py
--ingest-only`) does its quickstart ingest. Each side runs in a fresh process of its own (so each peak
RSS is its own), the two alternate over `--repeat` rounds (the order flips every round, so neither
always gets the cooler machine), and the figures reported are medians over the rounds. Model loading
is outside the timed part for both. The last line printed is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import statistics
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


def run_json(command: list[str]) -> dict[str, float]:
    out = subprocess.run(command, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"benchmark step failed: {' '.join(command)}\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def run_peer(dataset: Path) -> dict[str, float]:
    script = SHARED / "bench" / "langchain_baseline.py"
    return run_json([sys.executable, str(script), "--dataset", str(dataset), "--ingest-only"])


def run_ours(args: argparse.Namespace) -> dict[str, float]:
    command = [sys.executable, __file__, "--worker", "--dataset", str(args.dataset)]
    command += ["--recall-questions", str(args.recall_questions)]
    command += ["--no-loop-guard"] if args.no_loop_guard else []
    return run_json(command + (["--detector"] if args.detector else []))


def ingest_once(args: argparse.Namespace) -> dict[str, float | int | str]:
    """One timed first ingest and one re-ingest of the unchanged corpus, in this process."""
    from ingest.pipeline import Ingestor
    from rag.evaluation.squad import SquadData, passage_doc_id, write_signed_passages
    from rag.settings import Settings
    from rag.watermark import WatermarkCheck
    from rag.wiring import build_embedder, build_store, content_checks

    data = SquadData.load(args.dataset)
    passages, questions = data.passages, [(q.question, q.passage) for q in data.questions]
    figures: dict[str, float | int | str] = {"passages": len(passages)}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        start = time.perf_counter()
        # SQuAD passages are Wikipedia text written by people: signing them as human is honest.
        corpus, trust = write_signed_passages(passages, root, curator="bench-curator")
        figures["sign_seconds"] = round(time.perf_counter() - start, 2)

        # The synthetic-text detector (on by default in `rag ingest`) scores each document with Gemma, seconds
        # a document here: off unless --detector, and the JSON line says which.
        detector = {"policy": "flag" if args.detector else "off"}
        settings = Settings(data_dir=root / "data", trust_path=trust, detector=detector)
        embedder = build_embedder(settings)
        embedder.warm_up()
        checks = [] if args.no_loop_guard else content_checks(settings)
        for check in checks:
            if isinstance(check, WatermarkCheck):
                check.detectors()  # load the tokenizers outside the timed part, like the embedder
        ingestor = Ingestor(settings, build_store(settings), embedder, checks=checks)
        figures["loop_guard"] = not args.no_loop_guard
        figures["detector"] = detector["policy"]
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
            embedder_runtime=str(getattr(embedder, "runtime", "")),
            # What ingest held at most, before the query embedder below is built.
            peak_rss_mb=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        )

        # Retrieval sanity for the stored vectors: dense-only recall@4 of the gold passage, the questions
        # embedded as the server embeds them (its runtime may be another agreeing one).
        store = build_store(settings)
        sample = random.Random(0).sample(questions, min(args.recall_questions, len(questions)))
        asker = build_embedder(settings, serving=True)
        figures["query_embedder_runtime"] = str(getattr(asker, "runtime", ""))
        vectors = [asker.embed([q])[0] for q, _ in sample]
        hits = 0
        for (_, gold), vec in zip(sample, vectors, strict=True):
            got = store.query(vec, 4)
            hits += any(h.metadata["doc_id"] == passage_doc_id(gold) for h in got)
        figures["dense_recall_at_4"] = round(hits / len(sample), 3)
    return figures


def machine() -> dict[str, object]:
    """The CPU the figures were measured on (README figures are per CPU) and its load meanwhile."""
    from rag.embedder_choice import cpu_description

    cpu, flags = cpu_description()
    return {"cpu": cpu, "cpu_flags": " ".join(flags), "cpus": os.cpu_count(), "load_1min_at_end": os.getloadavg()[0]}


def median(rounds: list[dict[str, float]], key: str) -> float:
    return round(statistics.median(float(r[key]) for r in rounds), 3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", type=Path, default=SHARED / "data" / "squad_dev_v1.1.json")
    parser.add_argument("--repeat", type=int, default=3, help="Rounds of ours and the peer, alternating.")
    parser.add_argument("--no-peer", action="store_true")
    parser.add_argument("--recall-questions", type=int, default=300)
    parser.add_argument("--no-loop-guard", action="store_true", help="Skip the watermark check (not the default).")
    parser.add_argument("--detector", action="store_true", help="Score each document with the synthetic-text detector.")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)  # one run of ours, JSON out
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(ingest_once(args)))
        return
    if args.repeat < 1:
        sys.exit("--repeat must be at least 1")

    ours_rounds: list[dict[str, float]] = []
    peer_rounds: list[dict[str, float]] = []
    for index in range(args.repeat):
        steps = ["ours"] if args.no_peer else (["peer", "ours"] if index % 2 == 0 else ["ours", "peer"])
        for step in steps:
            if step == "ours":
                ours_rounds.append(run_ours(args))
            else:
                peer_rounds.append(run_peer(args.dataset))
        line = f"round {index + 1}/{args.repeat}: ours {ours_rounds[-1]['ingest_seconds']} s"
        if peer_rounds:
            line += f", peer {peer_rounds[-1]['ingest_seconds']} s"
        print(line, flush=True)

    last = ours_rounds[-1]
    figures: dict[str, object] = {
        **machine(),
        "embedder_runtime": {"ingest": last["embedder_runtime"], "query": last["query_embedder_runtime"]},
        "passages": last["passages"],
        "chunks": last["chunks"],
        "loop_guard": last["loop_guard"],
        "detector": last["detector"],
        "rounds": args.repeat,
        "ingest_seconds": median(ours_rounds, "ingest_seconds"),
        "ingest_passages_per_s": median(ours_rounds, "ingest_passages_per_s"),
        "reingest_seconds": median(ours_rounds, "reingest_seconds"),
        "reingest_speedup": median(ours_rounds, "reingest_speedup"),
        "peak_rss_mb": max(float(r["peak_rss_mb"]) for r in ours_rounds),
        "dense_recall_at_4": last["dense_recall_at_4"],
        "ingest_seconds_each": [r["ingest_seconds"] for r in ours_rounds],
    }
    if peer_rounds:
        figures.update(
            peer_ingest_seconds=median(peer_rounds, "ingest_seconds"),
            peer_ingest_passages_per_s=median(peer_rounds, "ingest_passages_per_s"),
            peer_reingest_seconds=median(peer_rounds, "reingest_seconds"),
            peer_peak_rss_mb=max(float(r["peak_rss_mb"]) for r in peer_rounds),
            peer_ingest_seconds_each=[r["ingest_seconds"] for r in peer_rounds],
            ingest_ratio_vs_peer=round(
                median(ours_rounds, "ingest_passages_per_s") / median(peer_rounds, "ingest_passages_per_s"), 2
            ),
            ingest_ratio_each=[
                round(float(o["ingest_passages_per_s"]) / float(p["ingest_passages_per_s"]), 2)
                for o, p in zip(ours_rounds, peer_rounds, strict=True)
            ],
        )

    rows = [
        ("first ingest, passages/s", "ingest_passages_per_s", "peer_ingest_passages_per_s"),
        ("first ingest, s", "ingest_seconds", "peer_ingest_seconds"),
        ("re-ingest unchanged, s", "reingest_seconds", "peer_reingest_seconds"),
        ("peak RSS (max), MB", "peak_rss_mb", "peer_peak_rss_mb"),
    ]
    print(f"medians over {args.repeat} round(s)")
    print(f"{'figure':<28}{'ours':>14}{'peer':>14}")
    for label, ours, theirs in rows:
        print(f"{label:<28}{figures[ours]!s:>14}{figures.get(theirs, '-')!s:>14}")
    print(
        f"ratio ours/peer: {figures.get('ingest_ratio_vs_peer', '-')} (each round: "
        f"{figures.get('ingest_ratio_each', '-')}), re-ingest speedup: {figures['reingest_speedup']}x, "
        f"dense recall@4: {figures['dense_recall_at_4']}"
    )
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
