"""`rag eval`: grounded vs ungrounded answers on a SQuAD-format dataset, through the production path.

The dataset's passages are signed with an ephemeral key and ingested by the real ingestor into an
isolated store under the output folder. A seeded subset of questions is turned into negatives: its
gold passages, and every passage containing one of its gold answers, are withheld from the store, so
the right behaviour is to abstain. Each sampled question is answered in three modes (grounded free,
grounded quote, ungrounded) and written to `results.jsonl` as soon as it is done, which is what
`--resume` reads to skip finished questions.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rag.errors import InvalidInputError
from rag.evaluation.claims import correct
from rag.evaluation.metrics import best_over_gold, contains_answer, exact_match, normalize_answer, token_f1
from rag.evaluation.squad import Question, SquadData, passage_doc_id
from rag.evaluation.summary import MODE_LABELS, MODES, stability, summarise
from rag.settings import Settings

__all__ = ["MODES", "MODE_LABELS", "EvalPlan", "Prepared", "check_datasets", "check_limit", "plan", "prepare", "run"]

WITHHELD_SHARE = 0.2
Progress = Callable[[Iterable[Any], int, str], Iterable[Any]]


@dataclass(frozen=True)
class EvalPlan:
    answerable: list[Question]
    withheld: list[Question]
    withheld_passages: set[int]
    excluded: list[Question] = field(default_factory=list)

    @property
    def questions(self) -> list[tuple[Question, bool]]:
        items = [(q, False) for q in self.answerable] + [(q, True) for q in self.withheld]
        return sorted(items, key=lambda item: item[0].id)


def check_limit(limit: int | None, data: SquadData, name: str = "this dataset") -> int:
    total = len(data.questions)
    count = total if limit is None else limit
    if not 1 <= count <= total:
        raise InvalidInputError(f"--limit must be between 1 and {total} for {name}.", code="limit_out_of_range")
    return count


def plan(data: SquadData, limit: int, seed: int, withheld_share: float = WITHHELD_SHARE) -> EvalPlan:
    """Seeded sample (same draw as the peer script: `Random(seed).sample`), then the negative subset.

    The negatives' gold passages, and every passage containing one of their answers, are withheld.
    A sampled question whose gold passage was withheld that way is a negative too, if its own answer
    is in no kept passage; if its answer is still in the store it is neither (`excluded`): answering
    it right would otherwise count as a hallucination."""
    sample = random.Random(seed).sample(data.questions, limit)
    negatives = random.Random(seed + 1).sample(sample, round(limit * withheld_share))
    normal = [f" {normalize_answer(text)} " for text in data.passages]

    def holding(question: Question) -> set[int]:
        answers = [f" {a} " for a in map(normalize_answer, question.answers) if a]
        return {i for i, text in enumerate(normal) if any(a in text for a in answers)}

    withheld: set[int] = {q.passage for q in negatives}
    for question in negatives:
        withheld |= holding(question)
    answerable, negative, excluded = [], [], []
    for question in sample:
        if question.passage not in withheld:
            answerable.append(question)
        elif holding(question) <= withheld:
            negative.append(question)
        else:
            excluded.append(question)
    return EvalPlan(answerable, negative, withheld, excluded)


def build_store(data: SquadData, withheld: set[int], out: Path, settings: Settings) -> Settings:
    """Sign and ingest the kept passages into `out/store` (idempotent: a resumed run re-embeds nothing)."""
    from rag.evaluation.squad import write_signed_passages
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
            # Known human text, and seconds a passage to score: the eval measures answers, not admission.
            "detector": settings.detector.model_copy(update={"policy": "off"}),
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
        text = result.text.strip() if not result.abstained else ""
        record["modes"][mode] = {
            "answer": result.answer,
            "text": text,
            "raw": result.raw,
            # A blank answer says nothing: it is an abstention whatever the mode (the grounded path
            # already turns one into an abstention; the ungrounded reader can return "").
            "abstained": result.abstained or not text,
            "reason": result.reason or (None if text else "empty_answer"),
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
            "confidence": result.confidence,
            "seconds": result.timings.get("total_ms", 0.0) / 1000,
        }
    return record


def check_datasets(datasets: list[Path]) -> list[tuple[str, SquadData]]:
    """Load every dataset before any work; each is named by its file's stem, which must be unique."""
    if not datasets:
        raise InvalidInputError("--dataset is required (a SQuAD-format JSON file).", code="dataset_missing")
    names = [path.stem for path in datasets]
    if len(set(names)) != len(names):
        raise InvalidInputError(
            "Two --dataset files have the same name; results are kept per file name, so rename one.",
            code="duplicate_dataset",
        )
    for path in datasets:
        if path.exists() and not path.is_file():
            raise InvalidInputError(f"{path} is not a file; give a SQuAD-format JSON file.", code="dataset_missing")
    return [(path.stem, SquadData.load(path)) for path in datasets]


@dataclass(frozen=True)
class Prepared:
    """A validated evaluation: its datasets, how many questions each, and the config that pins it."""

    loaded: list[tuple[str, SquadData]]
    counts: list[int]
    config: dict[str, Any]
    out: Path
    resume: bool


def prepare(
    datasets: list[Path],
    out: Path,
    settings: Settings,
    *,
    limit: int | None,
    seed: int,
    top_k: int,
    resume: bool,
    counterfactual: int = 0,
    answers: bool = True,
    generator: str | None = None,
) -> Prepared:
    """Every input check, before any work or output: datasets, limits, the output folder, --resume.

    The config pins what the results depend on: each dataset's content (sha256), the sample, the
    generator and every answering, watermark and embedder setting; `--resume` with anything else is
    refused, so old answers are never summarised under new labels."""
    loaded = check_datasets(datasets)
    counts = [check_limit(limit, data, name) for name, data in loaded]
    if out.exists() and not out.is_dir():
        raise InvalidInputError(f"--out {out} is a file; give a folder.", code="out_not_a_folder")
    pinned = {
        "answer": settings.answer.model_dump(mode="json"),
        "watermark": settings.watermark.model_dump(mode="json"),
        "embedder": settings.embedder.model_dump(mode="json"),
        "generator": settings.generator.model_dump(mode="json", exclude={"api_key"}),
        "ingest": settings.ingest.model_dump(mode="json"),
    }
    config = {
        "datasets": [str(p) for p in datasets],
        "dataset_sha256": [hashlib.sha256(p.read_bytes()).hexdigest() for p in datasets],
        "limit": limit,
        "seed": seed,
        "top_k": top_k,
        "counterfactual": counterfactual,
        "answers": answers,
        "generator": generator or settings.generator.model,
        "settings_sha256": hashlib.sha256(json.dumps(pinned, sort_keys=True).encode()).hexdigest(),
    }
    config_path = out / "config.json"
    if config_path.exists() and not resume:
        raise InvalidInputError(
            f"{out} already holds results; pass --resume to continue it or choose another --out.", code="out_exists"
        )
    if resume and config_path.exists() and json.loads(config_path.read_text()) != config:
        raise InvalidInputError(
            "--resume needs the same datasets (same content), --limit, --seed, --top-k, --counterfactual, "
            "generator and settings as the run it continues.",
            code="resume_mismatch",
        )
    return Prepared(loaded, counts, config, out, resume)


def run(
    service_factory: Callable[[Settings], Any],
    settings: Settings,
    prepared: Prepared,
    *,
    guardrail: bool = True,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Run (or resume) a prepared evaluation over one or more datasets; returns the summary.

    Each dataset has its own folder under `out` (store, results.jsonl, counterfactual.jsonl,
    guardrail.jsonl). The summary holds every dataset's figures under `datasets.<name>`, the first
    dataset's also at the top level, and a stability table across them. `answers=False` in the config
    runs only the guardrail benchmark (no reader, no store)."""
    config, out = prepared.config, prepared.out
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(config, indent=2))
    started = time.perf_counter()
    per_dataset: dict[str, dict[str, Any]] = {}
    for (name, data), count in zip(prepared.loaded, prepared.counts, strict=True):
        per_dataset[name] = _run_dataset(
            service_factory, settings, name, data, out / name, count=count, seed=config["seed"],
            top_k=config["top_k"], counterfactual=config["counterfactual"], answers=config["answers"],
            guardrail=guardrail, progress=progress,
        )  # fmt: skip
    first = per_dataset[prepared.loaded[0][0]]
    summary: dict[str, Any] = {
        **first,
        "config": {**config, "dataset": config["datasets"][0]},
        "datasets": per_dataset,
        "stability": stability(per_dataset),
        "wall_seconds_this_run": round(time.perf_counter() - started, 1),
    }
    return summary


def _run_dataset(
    service_factory: Callable[[Settings], Any],
    settings: Settings,
    name: str,
    data: SquadData,
    out: Path,
    *,
    count: int,
    seed: int,
    top_k: int,
    counterfactual: int,
    answers: bool,
    guardrail: bool,
    progress: Progress | None,
) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    evaluation = plan(data, count, seed)
    summary: dict[str, Any] = {"dataset": name}
    service: Any = None
    if answers:
        eval_settings = build_store(data, evaluation.withheld_passages, out, settings)
        service = service_factory(eval_settings)
        results_path = out / "results.jsonl"
        done = _finished(results_path)
        todo = [(q, w) for q, w in evaluation.questions if q.id not in done]
        items: Iterable[tuple[Question, bool]] = progress(todo, len(todo), f"{name}: answers") if progress else todo
        with results_path.open("a", encoding="utf-8") as handle:
            for question, withheld in items:
                record = answer_record(question, withheld, ask_every_mode(service, question.question, top_k))
                record["generator"] = service.generator.model_id
                _append(handle, record)
        planned = {q.id for q, _ in evaluation.questions}
        records = [r for r in _read_jsonl(results_path) if r["id"] in planned]
        summary.update(summarise(records, data, top_k))
        summary["excluded"] = len(evaluation.excluded)
        # The corpus the answers came from: the head before the knowledge-update edits move it.
        summary["corpus_ledger_head"] = service.ledger_head()
        if counterfactual:
            summary["knowledge_update"] = _knowledge_update(
                records, service, eval_settings, data, evaluation, out, counterfactual, seed, top_k, progress, name
            )
        summary.update(
            generator=service.generator.model_id,
            store_passages=len(data.passages) - len(evaluation.withheld_passages),
        )
    if guardrail:
        summary["guardrail"] = _guardrail(settings, data, evaluation, out, seed, service)
    return summary


def _knowledge_update(
    answers: list[dict[str, Any]],
    service: Any,
    eval_settings: Settings,
    data: SquadData,
    evaluation: EvalPlan,
    out: Path,
    count: int,
    seed: int,
    top_k: int,
    progress: Progress | None,
    name: str,
) -> dict[str, Any]:
    """Edit, ask, remove, ask, restore for `count` answerable questions (their gold passages are stored).

    `answers` are the main pass's records: the questions the default mode answered right are edited
    first, and each mode's figures are also given over the questions it answered right before."""
    from rag.evaluation.counterfactual import run_counterfactual, skipped_reasons, summarise_counterfactual
    from rag.wiring import build_ingestor

    bar = progress(range(count), count, f"{name}: knowledge updates") if progress else None
    ticks = iter(bar) if bar is not None else None

    def tick(record: dict[str, Any]) -> None:
        if ticks is not None and record.get("status") == "edited":
            next(ticks, None)

    right_before = {
        mode: {
            r["id"]
            for r in answers
            if not r["withheld"] and not r["modes"][mode]["abstained"]
            and correct(r["modes"][mode]["text"], r["gold_answers"])
        }
        for mode in MODES
    }  # fmt: skip
    records = run_counterfactual(
        data, evaluation.answerable, count, eval_settings=eval_settings, signed_root=out / "store" / "signed",
        out=out, ask=lambda question: ask_every_mode(service, question, top_k), seed=seed, progress=tick,
        ingestor=build_ingestor(eval_settings, service.retriever.embedder),  # one embedder, not two
        prefer=right_before["grounded"],
    )  # fmt: skip
    if ticks is not None:
        for _ in ticks:  # let the bar finish when fewer questions could be edited
            pass
    return {**summarise_counterfactual(records, right_before), "skipped": skipped_reasons(records)}


def _guardrail(
    settings: Settings,
    data: SquadData,
    evaluation: EvalPlan,
    out: Path,
    seed: int,
    service: Any,
) -> dict[str, Any]:
    """The production checker on each answerable question's gold sentence and its perturbed copies."""
    from rag.evaluation.guardrail import run_guardrail

    if service is not None:
        checker = service.checker
    else:
        from rag.wiring import build_checker

        checker = build_checker(settings)
    result = run_guardrail(evaluation.answerable, data, checker, articles=data.articles, seed=seed)
    with (out / "guardrail.jsonl").open("w", encoding="utf-8") as handle:
        for record in result.records:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
    rates = [rate for rate in result.summary["detected"].values() if rate is not None]
    return {**result.summary, "detected_mean": round(sum(rates) / len(rates), 4) if rates else None}


def ask_every_mode(service: Any, question: str, top_k: int) -> dict[str, Any]:
    """The released answer in each mode, exactly as the service gives it to a user: "grounded" is the
    default mode (no mode sent), the other grounded modes are asked for by name."""
    answers = {"grounded": service.answer(question, top_k=top_k)}
    for mode in ("free", "quote"):
        same = mode == service.settings.answer_mode
        answers[mode] = answers["grounded"] if same else service.answer(question, top_k=top_k, mode=mode)
    answers["ungrounded"] = service.answer(question, grounded=False)
    return answers


def _append(handle: Any, record: dict[str, Any]) -> None:
    handle.write(json.dumps(record, ensure_ascii=False) + "\n")
    handle.flush()
    os.fsync(handle.fileno())


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


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
