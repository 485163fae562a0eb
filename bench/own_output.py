"""Own-output registry benchmark: laundered answers are refused, human text is not, and what it costs at scale.

    python bench/own_output.py [--answers bench/reports/own-output/answers.json] [--scale 100000]

A world like the e2e tests' (the default corpus imported, signed by a fresh curator key, ingested; the
watermark check and the zero-shot detector off, so that every refusal below is the registry's).

Released answers (the slow part, real model, cached in `--answers`; delete the file to ask again): the ten e2e
questions and `--pydoc` more pydoc questions in free mode (the mode that generates text; the default, extract,
releases verbatim spans of passages, which are never registered), `--pydoc-ungrounded` pydoc questions and
`--squad-ungrounded` SQuAD dev questions ungrounded (free text on the very topics of the passages checked for
false positives: the hardest case). Every call the service made to `record_output(released, passages)` is kept
and replayed into a fresh registry with the code under test, through the service's own wiring.

Figures: the laundered file (released answers, citation marks removed, one Markdown file) through the real
ingest; each answer laundered alone; one and two words changed per sentence, and sentences reordered; one
released sentence put into a human document; false refusals over the 2,067 SQuAD dev passages and the 79
default-corpus documents; size on disk, load and check cost with `--scale` registered answers (synthetic fill).
The last line printed is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
sys.path[0] = str(REPO)  # run as a script, this folder would shadow the `ingest` package

from tests.e2e.test_real_answering import IN_SCOPE  # noqa: E402  (the e2e questions, one source of truth)

STATEMENTS = ["assert", "break", "class", "continue", "del", "for", "global", "if", "import", "nonlocal", "pass"]
STATEMENTS += ["raise", "return", "try", "while", "with", "yield"]
TOPICS = ["integers", "floating", "booleans", "strings", "lists", "comparisons", "lambda", "slicings", "await"]
TOPICS += ["the execution model", "name binding", "exceptions", "the power operator", "augmented assignment"]
SWAPS = ["thing", "part", "value", "element", "piece", "item", "unit", "aspect", "matter", "portion"]


def pydoc_questions(n: int) -> list[str]:
    """Templated questions about statements and topics, then one about each reference topic's title."""
    from pydoc_data.topics import topics

    from ingest.pydoc_import import topic_title

    questions = [f"What does the {s} statement do?" for s in STATEMENTS] + [f"What is {t} in Python?" for t in TOPICS]
    questions += [f"How does the {s} statement work?" for s in STATEMENTS]
    titles = sorted({topic_title(topics[t], t).replace('"', "") for t in topics})
    questions += [f"What does the Python reference say about {t}?" for t in titles if "statement" not in t.lower()]
    return questions[:n]


def launder(answer: str) -> str:
    return re.sub(r"\s*\[\d+\]", "", answer).strip()


def collect(settings: Any, embedder: Any, args: argparse.Namespace, squad_questions: list[str]) -> dict[str, Any]:
    """Ask the questions; every `record_output` call the service makes, with its passages, per answer."""
    from rag.wiring import build_answer_service

    service = build_answer_service(settings, embedder=embedder)
    calls: list[dict[str, Any]] = []
    real = service.record_output

    def spy(released: list[str], passages: list[str]) -> object:
        calls.append({"released": list(released), "passages": list(passages)})
        return real(released, passages)

    service.record_output = spy
    asked = [(q, True) for q, *_ in IN_SCOPE] + [(q, True) for q in pydoc_questions(args.pydoc)]
    asked += [(q, False) for q in pydoc_questions(args.pydoc_ungrounded)]
    asked += [(q, False) for q in squad_questions[: args.squad_ungrounded]]
    answers = []
    t0 = time.perf_counter()
    for n, (question, grounded) in enumerate(asked, start=1):
        calls.clear()
        # Free mode: the mode that generates text (extract, the default, releases verbatim spans: never registered).
        result = service.answer(question, grounded=grounded, mode="free" if grounded else None)
        passages: list[str] = next((c["passages"] for c in calls if c["passages"]), [])
        answers.append(
            {
                "question": question,
                "grounded": grounded,
                "e2e": n <= len(IN_SCOPE),
                "abstained": result.abstained,
                "answer": result.answer,
                "passages": passages,
                "calls": [c["released"] for c in calls],
            }
        )
        if n % 20 == 0:
            print(f"  {n}/{len(asked)} asked, {time.perf_counter() - t0:.0f} s", flush=True)
    return {"generator": settings.generator.model, "seconds": round(time.perf_counter() - t0, 1), "answers": answers}


def edit_words(sentence: str, rng: random.Random, n: int) -> str:
    """`n` different words of the sentence changed (words of four letters or more first, else any)."""
    words = sentence.split()
    long = [i for i, w in enumerate(words) if len(w.strip(".,;:!?\"'()")) >= 4]
    rest = [i for i in range(len(words)) if i not in long]
    rng.shuffle(long)
    rng.shuffle(rest)
    for k, i in enumerate((long + rest)[:n]):
        end = words[i][-1] if words[i][-1] in ".,;:!?" else ""
        words[i] = SWAPS[(k + len(words)) % len(SWAPS)] + end
    return " ".join(words)


def replay(service: Any, registry: Any, collected: dict[str, Any]) -> list[dict[str, Any]]:
    """Replay every `record_output` call into the (empty) registry; per answer, the sentences it registered."""
    out = []
    for answer in collected["answers"]:
        passages = answer["passages"] if answer["grounded"] else []
        own: list[str] = []
        for released in answer["calls"]:
            own += [s for s in registry.own_sentences(released, passages) if s not in own]
            service.record_output(released, passages)
        out.append({**answer, "own": own})
    return out


def detection(check: Any, registry: Any, answers: list[dict[str, Any]], human: list[str], seed: int = 0) -> dict:
    """How laundered copies of the registered sentences fare: verbatim, 1 and 2 words changed per sentence,
    reordered, each answer alone, and one sentence put into a human passage; by sentence length in words."""
    from rag.guardrails.registry import normalise

    def bucket(sentence: str) -> str:
        n = len(normalise(sentence).split())
        return "4-7 words" if n < 8 else "8-11 words" if n < 12 else "12+ words"

    rng = random.Random(seed)
    with_own = [a for a in answers if a["own"]]
    figures: dict[str, Any] = {
        "answers_with_own_sentences": len(with_own),
        "own_sentences": dict(sorted(Counter(bucket(s) for a in with_own for s in a["own"]).items())),
    }
    for n in (0, 1, 2):
        edited = [[edit_words(s, rng, n) if n else s for s in a["own"]] for a in with_own]
        found: Counter[str] = Counter()
        placed: Counter[str] = Counter()  # one sentence put into a human passage, refused
        for a in edited:
            for sentence in a:
                found[bucket(sentence)] += bool(registry.matches(sentence))
                placed[bucket(sentence)] += check.check(f"{rng.choice(human)}\n\n{sentence}") is not None
        figures[f"edit{n}"] = {
            "sentences_found": dict(sorted(found.items())),
            "answers_alone_refused": sum(check.check(" ".join(a)) is not None for a in edited),
            "all_in_one_file_refused": check.check("\n\n".join(" ".join(a) for a in edited)) is not None,
            "reordered_file_refused": check.check("\n\n".join(" ".join(reversed(a)) for a in reversed(edited)))
            is not None,
            "one_sentence_in_a_human_passage_refused": dict(sorted(placed.items())),
        }
    return figures


def false_refusals(check: Any, registry: Any, passages: list[str], corpus_texts: list[str]) -> dict[str, Any]:
    t0 = time.perf_counter()
    squad_refused = [p for p in passages if check.check(p) is not None]
    squad_ms = (time.perf_counter() - t0) * 1000 / len(passages)
    corpus_refused = [t[:60] for t in corpus_texts if check.check(t) is not None]
    return {
        "squad_passages": len(passages),
        "squad_refused": len(squad_refused),
        "squad_with_any_matching_sentence": sum(bool(registry.matches(p)) for p in passages),
        "squad_refused_examples": [p[:80] for p in squad_refused[:3]],
        "corpus_docs": len(corpus_texts),
        "corpus_refused": len(corpus_refused),
        "corpus_refused_examples": corpus_refused[:3],
        "corpus_with_any_matching_sentence": sum(bool(registry.matches(t)) for t in corpus_texts),
        "check_ms_per_squad_passage": round(squad_ms, 3),
    }


def scale(root: Path, corpus_docs: list[str], squad_passages: list[str], n: int, settings: Any) -> dict[str, float]:
    """A registry of `n` synthetic answers (three sentences each, plus the whole) drawn from SQuAD's running text,
    so that common words are as common as in real answers: size and costs."""
    from rag.guardrails.registry import KIND_ANSWER, KIND_SENTENCE, OwnOutputCheck
    from rag.wiring import build_output_registry

    tokens = [w for p in squad_passages for w in p.split() if w.isalpha()]
    rng = random.Random(0)
    cfg = settings.model_copy(update={"data_dir": root / "scale"})
    filler = build_output_registry(cfg)
    assert filler is not None
    t0 = time.perf_counter()
    now = int(time.time() * 1000)
    for start in range(0, n, 2000):
        texts: list[tuple[int, str]] = []
        for _ in range(min(2000, n - start)):
            sents = [" ".join(rng.choices(tokens, k=rng.randint(8, 20))) + "." for _ in range(3)]
            texts += [(KIND_SENTENCE, s) for s in sents] + [(KIND_ANSWER, " ".join(sents))]
        filler.append_records(filler.fingerprint(texts, now))
    fill_s = time.perf_counter() - t0
    registry = build_output_registry(cfg)
    assert registry is not None
    t0 = time.perf_counter()
    records = len(registry)
    read_s = time.perf_counter() - t0
    check = OwnOutputCheck(registry, long_words=settings.registry.long_words)
    t0 = time.perf_counter()
    check.check(squad_passages[0])  # builds the LSH bands and the word index
    first_check_s = time.perf_counter() - t0
    sample = squad_passages[:300]
    t0 = time.perf_counter()
    refused = sum(check.check(p) is not None for p in sample)
    squad_ms = (time.perf_counter() - t0) * 1000 / len(sample)
    t0 = time.perf_counter()
    for doc in corpus_docs:
        check.check(doc)
    corpus_ms = (time.perf_counter() - t0) * 1000 / len(corpus_docs)
    from ingest.ledger_head import LedgerKey
    from ingest.registry_guard import RegistryPin

    key = LedgerKey(root / "scale-key" / "ledger.key")
    key.create()
    pin = RegistryPin(registry, key)
    t0 = time.perf_counter()
    pin.check_and_extend()  # the first pin: reads and hashes the whole file
    pin.check_and_extend()  # what each ingest pays: the pinned prefix hashed again
    pin_s = (time.perf_counter() - t0) / 2
    path = registry.path
    return {
        "answers": n,
        "records": records,
        "record_bytes": int((path.stat().st_size - 16) / max(records, 1)),
        "mib": round(path.stat().st_size / 2**20, 1),
        "fill_s": round(fill_s, 1),
        "load_s": round(read_s, 2),
        "first_check_s_incl_index_build": round(first_check_s, 2),
        "check_ms_per_squad_passage": round(squad_ms, 2),
        "check_ms_per_corpus_doc": round(corpus_ms, 2),
        "squad_refused_of_300_against_the_fill": refused,
        "pin_check_s": round(pin_s, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", type=Path, default=SHARED / "data" / "squad_dev_v1.1.json")
    parser.add_argument("--answers", type=Path, default=REPO / "bench" / "reports" / "own-output" / "answers.json")
    parser.add_argument("--pydoc", type=int, default=100, help="pydoc questions beyond the ten e2e ones (grounded)")
    parser.add_argument("--pydoc-ungrounded", type=int, default=48, help="pydoc questions asked ungrounded")
    parser.add_argument("--squad-ungrounded", type=int, default=200, help="SQuAD dev questions asked ungrounded")
    parser.add_argument("--scale", type=int, default=100_000, help="synthetic answers for the size/cost figure")
    parser.add_argument("--collect-only", action="store_true", help="ask the questions, write --answers, stop")
    args = parser.parse_args()

    from ingest.pydoc_import import import_pydoc
    from ingest.trust import add_trusted_key, write_key_pair
    from rag.settings import Settings
    from rag.wiring import build_embedder, build_ingestor

    squad = json.loads(args.dataset.read_text())
    squad_questions = [qa["question"] for a in squad["data"] for p in a["paragraphs"] for qa in p["qas"]]
    random.Random(0).shuffle(squad_questions)

    root = Path(tempfile.mkdtemp(prefix="own-output-"))
    settings = Settings(data_dir=root / "data", trust_path=root / "trust.json", ledger_key_path=root / "lk" / "l.key")
    settings.watermark.detect = False  # every refusal below is the registry's
    settings.detector.policy = "off"  # nor the zero-shot detector's (and the corpus ingests in seconds)
    key_path, public = write_key_pair("bench-curator", root / "keys")
    add_trusted_key(settings.trust_path, "bench-curator", public)
    corpus = root / "pydoc"
    docs = import_pydoc(corpus, key_path)
    embedder = build_embedder(settings)
    report = build_ingestor(settings, embedder).ingest([corpus])
    print(f"corpus: {len(report.accepted)} accepted, {len(report.duplicates)} duplicates", flush=True)

    if not args.answers.exists():
        collected = collect(settings, embedder, args, squad_questions)
        args.answers.parent.mkdir(parents=True, exist_ok=True)
        args.answers.write_text(json.dumps(collected, indent=1) + "\n")
        print(f"{len(collected['answers'])} questions asked in {collected['seconds']:.0f} s", flush=True)
    if args.collect_only:
        return
    figures = evaluate(settings, embedder, root, args, docs, squad, key_path)
    print(json.dumps(figures, default=str))


def evaluate(
    settings: Any, embedder: Any, root: Path, args: argparse.Namespace, docs: list[Path], squad: Any, key_path: Path
) -> dict[str, Any]:
    from ingest.provenance import sign_document
    from ingest.trust import load_private_key
    from rag.guardrails.registry import OutputRegistry, OwnOutputCheck
    from rag.wiring import build_answer_service, build_ingestor, build_output_registry

    collected = json.loads(args.answers.read_text())
    passages = [p["context"] for article in squad["data"] for p in article["paragraphs"]]
    corpus_texts = [d.read_text() for d in docs]
    cfg = settings.registry
    service = build_answer_service(settings, embedder=embedder, generator=_NoGenerator())
    registry = build_output_registry(settings)
    assert registry is not None
    registry.path.unlink(missing_ok=True)  # the state the corpus ingest pinned: an empty registry
    answers = replay(service, registry, collected)
    grounded = [a for a in answers if a["grounded"]]
    figures: dict[str, Any] = {
        "generator": collected["generator"],
        "questions": len(answers),
        "grounded_answered": sum(not a["abstained"] for a in grounded),
        "ungrounded": len(answers) - len(grounded),
        "released_sentences": sum(len(c) for a in answers for c in a["calls"][-1:]) if answers else 0,
        "registry_records": len(registry),
    }
    print(f"replayed {len(answers)} answers: {len(registry)} records", flush=True)

    # The laundered file of the issue: the e2e answers, citation marks removed, one Markdown file, signed human.
    e2e = [launder(a["answer"]) for a in answers if a["e2e"] and not a["abstained"]]
    everything = [launder(a["answer"]).removeprefix("[unchecked, not grounded]").strip() for a in answers]
    key = load_private_key(key_path)
    for name, texts in (("laundered_e2e_file", e2e), ("laundered_all_answers_file", [t for t in everything if t])):
        folder = root / name
        folder.mkdir()
        doc = folder / "faq.md"
        doc.write_text("# Frequently asked questions\n\n" + "\n\n".join(texts) + "\n")
        sign_document(doc, key, origin="human", curator="bench-curator", authors=["Someone"], license="CC0-1.0")
        report = build_ingestor(settings, embedder).ingest([folder])
        figures[name] = {"answers": len(texts), "result": [(r["reason"], r["detail"]) for r in report.rejected]}
        figures[name]["result"] = figures[name]["result"] or "accepted"

    check = OwnOutputCheck(registry, min_matches=cfg.min_matches, min_share=cfg.min_share, long_words=cfg.long_words)
    # The rule before this change, for comparison: bigrams only, 2 sentences or half of them.
    before = OwnOutputCheck(
        OutputRegistry(registry.path, threshold=cfg.threshold, word_min_words=10**6, min_words=cfg.min_words),
        min_matches=cfg.min_matches,
        min_share=cfg.min_share,
        long_words=10**6,
    )
    human = passages[:: max(1, len(passages) // 500)]
    figures["detection"] = detection(check, registry, answers, human)
    figures["detection_previous_rule"] = detection(before, before.registry, answers, human)
    figures["false_refusals"] = false_refusals(check, registry, passages, corpus_texts)
    for name, value in figures.items():
        print(f"{name}: {value}", flush=True)
    if args.scale:
        figures["scale"] = scale(root, corpus_texts, passages, args.scale, settings)
        print(f"scale: {figures['scale']}", flush=True)
    return figures


class _NoGenerator:
    """The replay never generates: answers come from `--answers`."""

    model_id = "none"
    watermarked = False

    def warm_up(self) -> None:
        return None

    def generate(self, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("the replay does not generate")

    def stream(self, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("the replay does not generate")


if __name__ == "__main__":
    main()
