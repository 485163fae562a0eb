"""Figures from the per-question records: today's span metrics, the claims, and stability across datasets."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable
from typing import Any

from rag.evaluation.claims import mode_claims
from rag.evaluation.metrics import normalize_answer
from rag.evaluation.squad import SquadData

# "grounded" is the service's default answer mode, as a user gets it; "free" and "quote" are the other
# grounded modes (when one of them is the default, its column repeats the default's answers).
MODES = ("grounded", "free", "quote", "ungrounded")
MODE_LABELS = {
    "grounded": "grounded (default)",
    "free": "grounded (free)",
    "quote": "grounded (quote)",
    "ungrounded": "ungrounded",
}
TAIL_BUCKETS = 4
# Figures compared across datasets in the stability table: (path in a dataset's summary, label, higher
# is better). A drop is a change for the worse: first minus this one, or this minus first for figures
# where lower is better.
STABILITY: list[tuple[tuple[str, ...], str, bool]] = [
    *((("modes", m, "precision"), f"precision, {MODE_LABELS[m]}", True) for m in MODES),
    *((("modes", m, "coverage"), f"coverage, {MODE_LABELS[m]}", True) for m in MODES),
    *((("modes", m, "hallucination_withheld"), f"answered withheld, {MODE_LABELS[m]}", False) for m in MODES),
    *((("modes", m, "aurc"), f"AURC, {MODE_LABELS[m]}", False) for m in MODES),
    *((("modes", m, "f1"), f"F1, {MODE_LABELS[m]}", True) for m in MODES),
    (("retrieval_recall_at_k",), "retrieval recall@k", True),
    (("knowledge_update", "grounded", "followed"), "followed after edit, grounded (default)", True),
    (("guardrail", "detected_mean"), "guardrail detection (mean over kinds)", True),
    (("guardrail", "false_alarm"), "guardrail false alarms", False),
]


def percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def _mean(values: Iterable[float]) -> float | None:
    """Mean of a non-empty set; None for an empty one (no questions is not a score of 0)."""
    items = list(values)
    return round(sum(items) / len(items), 4) if items else None


def answer_rarity(records: list[dict[str, Any]], data: SquadData) -> dict[str, float]:
    """Mean corpus document frequency of each gold answer's words (lower = rarer)."""
    frequency: Counter[str] = Counter()
    for passage in data.passages:
        frequency.update(set(normalize_answer(passage).split()))
    rarity = {}
    for record in records:
        words = normalize_answer(record["gold_answers"][0]).split()
        rarity[record["id"]] = sum(frequency[w] for w in words) / len(words) if words else 0.0
    return rarity


def summarise(records: list[dict[str, Any]], data: SquadData, top_k: int) -> dict[str, Any]:
    answerable = [r for r in records if not r["withheld"]]
    withheld = [r for r in records if r["withheld"]]
    modes: dict[str, Any] = {}
    for mode in MODES:
        rows = [r["modes"][mode] for r in answerable]
        negatives = [r["modes"][mode] for r in withheld]
        generated = [m for m in rows if m["reason"] not in ("no_relevant_passage", "empty_knowledge_base")]
        cited = [flag for m in rows for flag in m["cited_texts_contain_gold"]]
        modes[mode] = {
            "em": _mean(m["em"] for m in rows),
            "f1": _mean(m["f1"] for m in rows),
            "contains": _mean(m["contains"] for m in rows),
            "abstention_answerable": _mean(float(m["abstained"]) for m in rows),
            "abstention_withheld": _mean(float(m["abstained"]) for m in negatives),
            "groundedness_pass": _mean(float(not m["abstained"]) for m in generated) if mode != "ungrounded" else None,
            "citation_precision": _mean(float(f) for f in cited) if mode != "ungrounded" else None,
            "latency_p50_s": round(percentile([m["seconds"] for m in rows + negatives], 0.5), 3),
            "latency_p95_s": round(percentile([m["seconds"] for m in rows + negatives], 0.95), 3),
            **mode_claims(rows, negatives, [r["gold_answers"] for r in answerable]),
        }
    recall = _mean(float(r["gold_doc_id"] in r["modes"]["grounded"]["retrieved"]) for r in answerable)
    rarity = answer_rarity(answerable, data)
    ordered = sorted(answerable, key=lambda r: rarity[r["id"]])
    buckets = []
    for b in range(TAIL_BUCKETS):
        part = ordered[b * len(ordered) // TAIL_BUCKETS : (b + 1) * len(ordered) // TAIL_BUCKETS]
        if not part:
            continue
        buckets.append(
            {
                "bucket": b + 1,
                "label": ["rarest", "rare", "common", "most common"][b] if TAIL_BUCKETS == 4 else str(b + 1),
                "questions": len(part),
                "max_answer_word_df": round(rarity[part[-1]["id"]], 1),
                **{f"f1_{mode}": _mean(r["modes"][mode]["f1"] for r in part) for mode in MODES},
            }
        )
    return {
        "questions": len(records),
        "answerable": len(answerable),
        "withheld": len(withheld),
        "top_k": top_k,
        f"retrieval_recall_at_{top_k}": recall,
        "retrieval_recall_at_k": recall,
        "modes": modes,
        "f1_gain_grounded_vs_ungrounded": (
            round(modes["grounded"]["f1"] - modes["ungrounded"]["f1"], 4) if answerable else None
        ),
        "tail": buckets,
    }


def _at(summary: dict[str, Any], path: tuple[str, ...]) -> Any:
    value: Any = summary
    for key in path:
        if not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    return value


def stability(per_dataset: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Each figure on each dataset and its drop from the first (positive = worse than on the first)."""
    names = list(per_dataset)
    rows = []
    for path, label, higher_is_better in STABILITY:
        values = {name: _at(per_dataset[name], path) for name in names}
        if all(v is None for v in values.values()):
            continue
        first = values[names[0]]
        drops: dict[str, float | None] = {}
        for name, value in values.items():
            if isinstance(first, int | float) and isinstance(value, int | float):
                drops[name] = round((first - value) if higher_is_better else (value - first), 4)
            else:
                drops[name] = None
        rows.append({"figure": label, "higher_is_better": higher_is_better, "values": values, "drop_from_first": drops})
    return rows
