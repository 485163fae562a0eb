"""The extractive reader's checks, measured on the evaluation's own sample: what the focus weight,
`min_answer_focus` and `min_answer_similarity` trade between F1, precision, coverage and answers given when
the evidence was withheld.

    python bench/reader_study.py [--limit 200] [--seed 0] [--questions 80] [--out /tmp/reader-study]

The store is the one `rag eval --limit L --seed S` builds (the same withheld passages), under `--out`/store.
Each of the first `--questions` questions of the sample (in the eval's order) is read once with the
default settings (retrieval, evidence sentences, span scores and their neutral-question baselines) and cached
in `readings.jsonl`; a grid of the settings is then replayed through `rag.reader.checks.choose`, the
function the service calls, with the service's own word rarities (the store's BM25 index) and embedder.
The first row is the reader as it was before rarity, focus ranking and the similarity check (unweighted
focus >= 0.4). SQuAD is evaluation data here, never a run-time dependency.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
sys.path[0] = str(REPO)  # run as a script, this folder would shadow the packages


def read_all(args: argparse.Namespace) -> tuple[list[dict], Any]:
    from rag.evaluation.run import build_store, plan
    from rag.evaluation.squad import SquadData
    from rag.grounding import select_evidence
    from rag.injection import without_instructions
    from rag.settings import Settings
    from rag.wiring import build_answer_service

    cache = args.out / "readings.jsonl"
    records = [json.loads(line) for line in cache.read_text().splitlines()] if cache.exists() else []
    done = {r["id"] for r in records}
    data = SquadData.load(args.dataset)
    sample = plan(data, args.limit, args.seed)
    settings = Settings()
    service = build_answer_service(build_store(data, sample.withheld_passages, args.out, settings))
    assert service.reader is not None
    answer = settings.answer
    with cache.open("a", encoding="utf-8") as handle:
        for question, withheld in sample.questions[: args.questions]:
            if question.id in done:
                continue
            service.refresh()
            hits = service.retriever.retrieve(question.question, answer.top_k, None, admit=service.gate.admit)
            passages = [hit.chunk.text for hit in hits]
            best = max((hit.dense_score or 0.0 for hit in hits), default=0.0)
            usable = [without_instructions(text) for text in passages[: answer.reader_passages]]  # as the service
            evidence = select_evidence(question.question, usable, answer.evidence_sentences)
            reading = service.reader.read(question.question, evidence, limit=16) if best >= 0.3 else None
            spans, texts, baselines = (reading.spans, reading.texts, reading.baselines) if reading else ([], [], [])
            record = {
                "id": question.id, "question": question.question, "golds": question.answers, "withheld": withheld,
                "passages": passages, "evidence": evidence, "seconds": reading.seconds if reading else 0.0,
                "spans": [
                    {"passage": s.passage, "tokens": s.tokens, "logprob": s.logprob, "baseline": b, "text": t}
                    for s, t, b in zip(spans, texts, baselines, strict=True)
                ],
            }  # fmt: skip
            handle.write(json.dumps(record) + "\n")
            handle.flush()
            records.append(record)
            print(f"{len(records):4d} {record['seconds']:5.1f}s {question.question[:70]}", flush=True)
    service.refresh()
    return records[: args.questions], service


def replay(records: list[dict], **checks: Any) -> dict[str, float]:
    from rag.evaluation.claims import correct
    from rag.evaluation.metrics import best_over_gold, token_f1
    from rag.reader.checks import choose, quotation
    from rag.reader.spans import Span

    answered = right = answerable = withheld = withheld_answered = 0
    f1 = 0.0
    for r in records:
        spans = [Span(s["passage"], 0, s["tokens"], s["logprob"]) for s in r["spans"]]
        texts = [s["text"] for s in r["spans"]]
        choice = choose(spans, texts, [s["baseline"] for s in r["spans"]], r["question"], r["passages"],
                        r["evidence"], **checks)  # fmt: skip
        text = None
        if choice.span is not None:
            n = choice.span.passage
            text = quotation(r["question"], choice.text, r["evidence"][n - 1], r["passages"][n - 1])
        if r["withheld"]:
            withheld += 1
            withheld_answered += text is not None
            continue
        answerable += 1
        if text is not None:
            answered += 1
            right += correct(text, r["golds"])
            f1 += best_over_gold(token_f1, text, r["golds"])
    return {
        "f1": round(f1 / max(answerable, 1), 3),
        "precision": round(right / max(answered, 1), 3),
        "coverage": round(answered / max(answerable, 1), 3),
        "withheld_answered": round(withheld_answered / max(withheld, 1), 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", type=Path, default=SHARED / "data" / "squad_dev_v1.1.json")
    parser.add_argument("--limit", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--questions", type=int, default=80)
    parser.add_argument("--out", type=Path, default=Path("/tmp/reader-study"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    records, service = read_all(args)
    from functools import lru_cache

    from rich.console import Console
    from rich.table import Table

    similarity = lru_cache(maxsize=None)(service._similarity)
    rarity = service.retriever.lexical.rarity()
    answerable = sum(not r["withheld"] for r in records)
    table = Table(title=f"{len(records)} questions ({answerable} answerable, {len(records) - answerable} withheld)")
    for column in ("focus weight", "min_answer_focus", "min_answer_similarity", "F1", "precision", "coverage",
                   "answered withheld"):  # fmt: skip
        table.add_column(column, justify="right")
    grid = {}
    before = replay(records, min_gain=1.0, min_focus=0.4)
    grid["before"] = before
    table.add_row("0 (unweighted)", "0.4", "–", *(str(v) for v in before.values()))
    for weight in (0.0, 20.0):
        for focus in (0.3, 0.35, 0.4, 0.45):
            for least in (-1.0, 0.4, 0.45, 0.5):
                figures = replay(records, min_gain=1.0, min_focus=focus, focus_weight=weight, rarity=rarity,
                                 similarity=similarity, min_similarity=least)  # fmt: skip
                grid[f"{weight}/{focus}/{least}"] = figures
                table.add_row(
                    str(weight), str(focus), "–" if least < -0.5 else str(least), *(str(v) for v in figures.values())
                )
    Console().print(table)
    print(json.dumps(grid))


if __name__ == "__main__":
    main()
