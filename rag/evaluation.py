"""`rag eval`: grounded vs ungrounded answers on a SQuAD-format dataset, through the production path.

The dataset's passages are signed with an ephemeral key and ingested by the real ingestor into an
isolated store under the output folder. A seeded subset of questions is turned into negatives: its
gold passages, and every passage containing one of its gold answers, are withheld from the store, so
the right behaviour is to abstain. Each sampled question is answered in three modes (grounded free,
grounded quote, ungrounded) and written to `results.jsonl` as soon as it is done, which is what
`--resume` reads to skip finished questions.
"""

from __future__ import annotations

import json
import math
import os
import random
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rag.errors import InvalidInputError
from rag.metrics import best_over_gold, contains_answer, exact_match, normalize_answer, token_f1
from rag.settings import Settings
from rag.squad import Question, SquadData, passage_doc_id

MODES = ("grounded", "quote", "ungrounded")
MODE_LABELS = {"grounded": "grounded (free)", "quote": "grounded (quote)", "ungrounded": "ungrounded"}
WITHHELD_SHARE = 0.2
TAIL_BUCKETS = 4


@dataclass(frozen=True)
class EvalPlan:
    answerable: list[Question]
    withheld: list[Question]
    withheld_passages: set[int]

    @property
    def questions(self) -> list[tuple[Question, bool]]:
        items = [(q, False) for q in self.answerable] + [(q, True) for q in self.withheld]
        return sorted(items, key=lambda item: item[0].id)


def check_limit(limit: int | None, data: SquadData) -> int:
    total = len(data.questions)
    count = total if limit is None else limit
    if not 1 <= count <= total:
        raise InvalidInputError(f"--limit must be between 1 and {total} for this dataset.", code="limit_out_of_range")
    return count


def plan(data: SquadData, limit: int, seed: int, withheld_share: float = WITHHELD_SHARE) -> EvalPlan:
    """Seeded sample (same draw as the peer script: `Random(seed).sample`), then the negative subset."""
    sample = random.Random(seed).sample(data.questions, limit)
    negatives = random.Random(seed + 1).sample(sample, round(limit * withheld_share))
    withheld: set[int] = {q.passage for q in negatives}
    answers = {normalize_answer(a) for q in negatives for a in q.answers if normalize_answer(a)}
    for index, text in enumerate(data.passages):
        normal = f" {normalize_answer(text)} "
        if any(f" {a} " in normal for a in answers):
            withheld.add(index)
    # A sampled question whose gold passage was withheld is a negative too: its answer is not in the store.
    return EvalPlan(
        answerable=[q for q in sample if q.passage not in withheld],
        withheld=[q for q in sample if q.passage in withheld],
        withheld_passages=withheld,
    )


def build_store(data: SquadData, withheld: set[int], out: Path, settings: Settings) -> Settings:
    """Sign and ingest the kept passages into `out/store` (idempotent: a resumed run re-embeds nothing)."""
    from rag.squad import write_signed_passages
    from rag.wiring import build_ingestor

    root = out / "store"
    keep = {i: text for i, text in enumerate(data.passages) if i not in withheld}
    marker = root / "signed.json"
    if not marker.exists() or json.loads(marker.read_text()) != sorted(keep):
        import shutil

        shutil.rmtree(root / "signed", ignore_errors=True)
        write_signed_passages(keep, root / "signed")
        marker.write_text(json.dumps(sorted(keep)))
    eval_settings = settings.model_copy(
        update={
            "data_dir": root / "data",
            "trust_path": root / "signed" / "trust.json",
            "store": settings.store.model_copy(update={"collection": "eval", "url": None}),
        }
    )
    build_ingestor(eval_settings).ingest([root / "signed" / "corpus"])
    return eval_settings


def gold_doc_id(question: Question) -> str:
    return passage_doc_id(question.passage)


def answer_record(question: Question, withheld: bool, answers: dict[str, Any]) -> dict[str, Any]:
    record: dict[str, Any] = {
        "id": question.id,
        "question": question.question,
        "gold_answers": question.answers,
        "gold_doc_id": gold_doc_id(question),
        "withheld": withheld,
        "modes": {},
    }
    for mode, result in answers.items():
        text = result.text if not result.abstained else ""
        record["modes"][mode] = {
            "answer": result.answer,
            "text": text,
            "raw": result.raw,
            "abstained": result.abstained,
            "reason": result.reason,
            "em": best_over_gold(exact_match, text, question.answers),
            "f1": best_over_gold(token_f1, text, question.answers),
            "contains": best_over_gold(contains_answer, text, question.answers),
            "retrieved": [r["doc_id"] for r in result.retrieved],
            "citations": [{"doc_id": c.doc_id, "chunk_id": c.chunk_id, "score": c.score} for c in result.citations],
            "cited_texts_contain_gold": [
                any(contains_answer(result.passage_texts[c.n - 1], g) for g in question.answers)
                for c in result.citations
            ],
            "support": [s.as_dict() for s in result.support],
            "seconds": result.timings.get("total_ms", 0.0) / 1000,
        }
    return record


def run(
    service_factory: Callable[[Settings], Any],
    settings: Settings,
    dataset: Path,
    out: Path,
    *,
    limit: int | None,
    seed: int,
    top_k: int,
    resume: bool,
    progress: Callable[[Iterable[tuple[Question, bool]], int], Iterable[tuple[Question, bool]]] | None = None,
) -> dict[str, Any]:
    """Run (or resume) an evaluation; returns the summary and writes every output file."""
    data = SquadData.load(dataset)
    count = check_limit(limit, data)
    results_path = out / "results.jsonl"
    if results_path.exists() and not resume:
        raise InvalidInputError(
            f"{out} already holds results; pass --resume to continue it or choose another --out.", code="out_exists"
        )
    out.mkdir(parents=True, exist_ok=True)
    evaluation = plan(data, count, seed)
    config = {"dataset": str(dataset), "limit": count, "seed": seed, "top_k": top_k}
    config_path = out / "config.json"
    if resume and config_path.exists() and json.loads(config_path.read_text()) != config:
        raise InvalidInputError("--resume needs the same dataset, --limit, --seed and --top-k.", code="resume_mismatch")
    config_path.write_text(json.dumps(config, indent=2))
    started = time.perf_counter()
    eval_settings = build_store(data, evaluation.withheld_passages, out, settings)
    service = service_factory(eval_settings)
    done = _finished(results_path)
    todo = [(q, w) for q, w in evaluation.questions if q.id not in done]
    items: Iterable[tuple[Question, bool]] = progress(todo, len(todo)) if progress else todo
    with results_path.open("a", encoding="utf-8") as handle:
        for question, withheld in items:
            answers = {
                "grounded": service.answer(question.question, top_k=top_k, mode="free"),
                "quote": service.answer(question.question, top_k=top_k, mode="quote"),
                "ungrounded": service.answer(question.question, grounded=False),
            }
            record = answer_record(question, withheld, answers)
            record["generator"] = service.generator.model_id
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
    records = [json.loads(line) for line in results_path.read_text(encoding="utf-8").splitlines() if line.strip()]
    summary = summarise(records, data, top_k)
    summary.update(
        config=config,
        wall_seconds_this_run=round(time.perf_counter() - started, 1),
        generator=service.generator.model_id,
        corpus_ledger_head=service.ledger_head(),
        store_passages=len(data.passages) - len(evaluation.withheld_passages),
    )
    return summary


def _finished(path: Path) -> set[str]:
    """Ids already answered; a torn last line from a kill is cut (that question is redone)."""
    if not path.exists():
        return set()
    done: set[str] = set()
    valid: list[str] = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            done.add(str(json.loads(line)["id"]))
        except (ValueError, KeyError):
            continue
        valid.append(line + "\n")
    path.write_text("".join(valid), encoding="utf-8")
    return done


def percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def _mean(values: Iterable[float]) -> float:
    items = list(values)
    return round(sum(items) / len(items), 4) if items else 0.0


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
            "hallucination_withheld": _mean(float(not m["abstained"]) for m in negatives),
            "groundedness_pass": _mean(float(not m["abstained"]) for m in generated) if mode != "ungrounded" else None,
            "citation_precision": _mean(float(f) for f in cited) if mode != "ungrounded" else None,
            "latency_p50_s": round(percentile([m["seconds"] for m in rows + negatives], 0.5), 3),
            "latency_p95_s": round(percentile([m["seconds"] for m in rows + negatives], 0.95), 3),
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
        "f1_gain_grounded_vs_ungrounded": round(modes["grounded"]["f1"] - modes["ungrounded"]["f1"], 4),
        "tail": buckets,
    }
