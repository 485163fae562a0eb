"""How far each embedder runtime's vectors are from float32 torch's, and what that does to retrieval.

    python bench/embedder_agreement.py [--passages 600] [--questions 300] [--runtimes torch-int8,openvino-int8]

The evidence behind the agreement tolerance of `rag.embedder_choice`: for each runtime, the cosine of its
vectors to the reference's on the calibration texts (what the choice checks) and on SQuAD dev passages and
questions, and dense recall@4 of the gold passage for a collection built by one runtime and queried by
another (exact search, so only the vectors differ). Times are not measured here. Last line: JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parents[1]
sys.path[0] = str(REPO)


def embed_both(runtime: str, texts: list[str], questions: list[str]) -> tuple[Any, Any]:
    """Passages in batches (the ingest shape), questions one at a time (the query shape)."""
    import numpy as np

    from rag.embedder_measure import build
    from rag.embedders import default_minilm_path
    from rag.settings import Settings

    cache, source = Settings().model_cache_dir, default_minilm_path()
    batched = build(runtime, cache, source, 16, None, serving=False)
    single = build(runtime, cache, source, 16, None, serving=True)
    return np.array(batched.embed(texts)), np.array([single.embed([q])[0] for q in questions])


def recall_at_4(store: Any, queries: Any, gold: list[int]) -> float:
    import numpy as np

    top = np.argsort(-(queries @ store.T), axis=1)[:, :4]
    return round(float(np.mean([g in row for g, row in zip(gold, top, strict=True)])), 4)


def spread(values: Any) -> dict[str, float]:
    import numpy as np

    return {"min": round(float(values.min()), 4), "p1": round(float(np.percentile(values, 1)), 4),
            "mean": round(float(values.mean()), 4)}  # fmt: skip


def main() -> None:
    import numpy as np

    from rag.embedder_measure import candidates
    from rag.embedders import calibration_texts
    from rag.evaluation.squad import SquadData

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", type=Path, default=REPO.parent / "shared" / "data" / "squad_dev_v1.1.json")
    parser.add_argument("--passages", type=int, default=600)
    parser.add_argument("--questions", type=int, default=300)
    parser.add_argument("--runtimes", default=None, help="Comma-separated; default: every candidate here.")
    args = parser.parse_args()
    data = SquadData.load(args.dataset)
    passages = data.passages[: args.passages]
    pool = [q for q in data.questions if q.passage < args.passages]
    sample = random.Random(0).sample(pool, min(args.questions, len(pool)))
    questions, gold = [q.question for q in sample], [q.passage for q in sample]
    calibration = calibration_texts()
    short = [t for t in calibration if len(t) <= 200]

    reference, ref_questions = embed_both("torch-f32", passages, questions)
    ref_cal, ref_short = embed_both("torch-f32", calibration, short)
    figures: dict[str, Any] = {"passages": len(passages), "questions": len(questions),
                               "reference_recall_at_4": recall_at_4(reference, ref_questions, gold)}  # fmt: skip
    names = args.runtimes.split(",") if args.runtimes else [r for r in candidates() if r != "torch-f32"]
    for name in names:
        store, queries = embed_both(name, passages, questions)
        cal, cal_short = embed_both(name, calibration, short)
        cal_cos = np.concatenate([np.sum(cal * ref_cal, axis=1), np.sum(cal_short * ref_short, axis=1)])
        figures[name] = {
            "calibration_cosine": spread(cal_cos),
            "passage_cosine": spread(np.sum(store * reference, axis=1)),
            "question_cosine": spread(np.sum(queries * ref_questions, axis=1)),
            "recall_ref_store_its_queries": recall_at_4(reference, queries, gold),
            "recall_its_store_ref_queries": recall_at_4(store, ref_questions, gold),
            "recall_its_store_its_queries": recall_at_4(store, queries, gold),
        }
        print(name, json.dumps(figures[name]), flush=True)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
