"""Synthetic-text detector (Fast-DetectGPT, analytic, Gemma 3 270M scorer): false positives and detection rate.

    python bench/detector.py [--human 300] [--machine 100] [--threshold T] [--out /tmp/detector-bench]

Human text: a seeded sample of the SQuAD dev passages (`--human 0` scores all 2,067) and the 79 default-corpus
documents (the Python Language Reference topics inside CPython). Machine text: continuations, without any
watermark, of the first sentence of other (held-out) SQuAD passages, sampled from each local model
(Gemma 3 270M, SmolLM2-135M; temperature 0.8, top-p 0.95, 100-120 new tokens); only the continuation is scored.
Generated texts and scores are cached in `--out`, so a second run only reprints the figures. SQuAD is
evaluation data here, never a run-time dependency. Prints one line per figure, then one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import statistics
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
sys.path[0] = str(REPO)  # run as a script, this folder would shadow the packages

GENERATORS = ("gemma3-270m", "smollm2-135m")


def first_sentence(text: str) -> str:
    match = re.search(r"^(.+?[.!?])(\s|$)", " ".join(text.split()))
    return match.group(1) if match else " ".join(text.split()[:20])


def split_passages(passages: list[str], human: int, machine: int, seed: int) -> tuple[list[int], list[int]]:
    """Disjoint seeded samples: passages scored as human text, and passages whose first sentence prompts a model."""
    order = list(range(len(passages)))
    random.Random(seed).shuffle(order)
    prompts = order[:machine]
    humans = order[machine:] if human <= 0 else order[machine : machine + human]
    return humans, prompts


def generate(
    name: str, prompts: list[str], cache_root: Path, seed: int, out: list[dict[str, Any]], save: Any
) -> list[dict[str, Any]]:
    """Continue each prompt (seeded sampling, no watermark); resumes after the texts already in `out`."""
    import torch

    from rag.models import load_model

    model, tokenizer = load_model(name, cache_root)
    for n, prompt in enumerate(prompts[len(out) :], start=len(out)):
        torch.manual_seed(seed + n)
        ids = tokenizer(prompt, return_tensors="pt")
        started = time.perf_counter()
        with torch.inference_mode():
            result = model.generate(
                **ids,
                do_sample=True,
                temperature=0.8,
                top_p=0.95,
                min_new_tokens=100,
                max_new_tokens=120,
                pad_token_id=tokenizer.eos_token_id,
            )
        text = tokenizer.decode(result[0, ids["input_ids"].shape[1] :], skip_special_tokens=True).strip()
        out.append({"prompt": prompt, "text": text, "seconds": round(time.perf_counter() - started, 2)})
        print(f"  {name} {n + 1}/{len(prompts)} ({out[-1]['seconds']} s)", file=sys.stderr, flush=True)
        save()
    return out


def auroc(negatives: list[float], positives: list[float]) -> float:
    """Probability that a machine text outscores a human one (ties count half)."""
    if not negatives or not positives:
        return float("nan")
    wins = sum((p > h) + 0.5 * (p == h) for p in positives for h in negatives)
    return wins / (len(positives) * len(negatives))


def rate_above(scores: list[float], threshold: float) -> float:
    return sum(s > threshold for s in scores) / len(scores) if scores else float("nan")


def load_json(path: Path) -> Any:
    return json.loads(path.read_text()) if path.exists() else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", type=Path, default=SHARED / "data" / "squad_dev_v1.1.json")
    parser.add_argument("--human", type=int, default=300, help="SQuAD passages scored as human text (0 = all)")
    parser.add_argument("--machine", type=int, default=100, help="Generated texts per local model")
    parser.add_argument("--per-model", type=int, default=None, help="Generate at most this many texts per model")
    parser.add_argument("--sets", default="squad,pydoc," + ",".join(GENERATORS), help="Which sets to score, in order")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threshold", type=float, default=None, help="Default: the setting")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: another job shares the cores)")
    parser.add_argument("--out", type=Path, default=Path("/tmp/detector-bench"))
    parser.add_argument("--only", choices=("generate", "score", "all"), default="all")
    args = parser.parse_args()

    import torch

    from ingest.pydoc_import import rst_headings_to_markdown
    from rag.evaluation.squad import SquadData
    from rag.guardrails.detector import FastDetectScorer, load_scoring_model
    from rag.settings import Settings

    torch.set_num_threads(args.threads)
    settings = Settings()
    cache_root = settings.model_cache_dir
    args.out.mkdir(parents=True, exist_ok=True)
    passages = SquadData.load(args.dataset).passages
    humans, prompts = split_passages(passages, args.human, args.machine, args.seed)

    generated: dict[str, list[dict[str, Any]]] = load_json(args.out / "generated.json") or {}
    for name in GENERATORS:
        if args.only != "score" and len(generated.get(name, [])) < len(prompts[: args.per_model]):
            texts = generated.setdefault(name, [])
            prompt_texts = [first_sentence(passages[i]) for i in prompts][: args.per_model]

            def save() -> None:
                (args.out / "generated.json").write_text(json.dumps(generated, indent=1))

            generate(name, prompt_texts, cache_root, args.seed, texts, save)
    if args.only == "generate":
        return

    from pydoc_data.topics import topics

    sets: dict[str, list[str]] = {
        "squad": [passages[i] for i in humans],
        "pydoc": [rst_headings_to_markdown(topics[t]) for t in sorted(topics)],
        **{name: [g["text"] for g in generated[name][: len(prompts)]] for name in GENERATORS if name in generated},
    }
    cfg = settings.detector
    key = f"{cfg.model}-{cfg.max_tokens}-{cfg.windows}-s{args.seed}"
    scores: dict[str, dict[str, Any]] = load_json(args.out / f"scores-{key}.json") or {}
    scorer: FastDetectScorer | None = None
    for label in args.sets.split(","):
        texts = sets.get(label, [])
        have = scores.get(label, {"score": [], "tokens": [], "seconds": []})
        if len(have["score"]) >= len(texts):
            continue
        scorer = scorer or FastDetectScorer(load_scoring_model(cfg, cache_root), cfg)
        scorer.score("warm up")
        for n, text in enumerate(texts[len(have["score"]) :], start=len(have["score"])):
            result = scorer.score(text)
            have["score"].append(result.score)
            have["tokens"].append(result.tokens)
            have["seconds"].append(result.seconds)
            if n % 25 == 24:
                print(f"  scored {label} {n + 1}/{len(texts)}", file=sys.stderr, flush=True)
                scores[label] = have
                (args.out / f"scores-{key}.json").write_text(json.dumps(scores))
        scores[label] = have
        (args.out / f"scores-{key}.json").write_text(json.dumps(scores))

    if any(label not in scores for label in sets):
        done = {label: len(values["score"]) for label, values in scores.items()}
        print(f"not every set is scored yet: {done}")
        return
    threshold = cfg.threshold if args.threshold is None else args.threshold
    human_all = scores["squad"]["score"] + scores["pydoc"]["score"]
    machine_all = [s for name in GENERATORS for s in scores[name]["score"]]
    summary: dict[str, Any] = {"scorer": cfg.model, "max_tokens": cfg.max_tokens, "windows": cfg.windows}
    summary["threshold"] = threshold
    print(f"scorer {cfg.model}, up to {cfg.max_tokens} tokens in {cfg.windows} windows, threshold {threshold}")
    for label in sets:
        values = scores[label]["score"]
        kind = "false positives" if label in ("squad", "pydoc") else "detected"
        figure = {
            "n": len(values),
            "rate_above": round(rate_above(values, threshold), 4),
            "median_score": round(statistics.median(values), 3),
            "mean_tokens": round(statistics.mean(scores[label]["tokens"]), 1),
            "mean_seconds": round(statistics.mean(scores[label]["seconds"]), 3),
        }
        summary[label] = figure
        print(
            f"{label:13s} n={figure['n']:4d}  {kind} {figure['rate_above']:.3f}  median score "
            f"{figure['median_score']:+.2f}  {figure['mean_tokens']:.0f} tokens, {figure['mean_seconds']:.2f} s/doc"
        )
    for name in GENERATORS:
        summary[f"auroc_{name}"] = round(auroc(human_all, scores[name]["score"]), 4)
        print(f"AUROC human (squad+pydoc) vs {name}: {summary[f'auroc_{name}']:.3f}")
    summary["auroc_pooled"] = round(auroc(human_all, machine_all), 4)
    print(f"AUROC pooled: {summary['auroc_pooled']:.3f}")
    # The operating points a curator might choose: the lowest threshold with at most 1% / 0.5% human flags.
    for budget in (0.01, 0.005):
        ranked = sorted(human_all, reverse=True)
        cut = ranked[int(budget * len(ranked))] if ranked else 0.0
        summary[f"threshold_fpr_{budget}"] = round(cut, 3)
        print(
            f"at <= {budget:.1%} human flags (threshold {cut:.2f}): detection "
            + ", ".join(f"{name} {rate_above(scores[name]['score'], cut):.2f}" for name in GENERATORS)
        )
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
