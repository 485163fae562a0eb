"""Own-output registry benchmark: laundered answers are refused, human text is not, and what it costs at scale.

    python bench/own_output.py [--dataset ../shared/data/squad_dev_v1.1.json] [--extra 30] [--squad-ungrounded 30]

A world like the e2e tests' (the default corpus imported, signed by a fresh curator key, ingested; the
watermark check and the zero-shot detector off, so that every refusal below is the registry's). The service
answers the ten e2e questions (default mode) plus `--extra` more pydoc questions; ungrounded answers to
`--squad-ungrounded` SQuAD questions fill the registry too (the hardest case for the SQuAD false-positive
count: free text on those very topics).

Figures: the laundered file (released answers, citation marks removed, one Markdown file) through the real
ingest; each answer laundered alone; light edits (a word changed per sentence) and reordered sentences;
false positives over the 2,067 SQuAD dev passages and the 79 default-corpus documents; MinHash against a 64-bit
SimHash on the same sentences (why MinHash); size on disk, load and check cost with 100k registered answers
(synthetic fill). The last line printed is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import random
import re
import sys
import tempfile
import time
from pathlib import Path

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
SWAPS = ["thing", "part", "value", "element", "piece", "item", "unit", "aspect"]


def extra_questions(n: int) -> list[str]:
    questions = [f"What does the {s} statement do?" for s in STATEMENTS] + [f"What is {t} in Python?" for t in TOPICS]
    questions += [f"How does the {s} statement work?" for s in STATEMENTS]
    return questions[:n]


def launder(answer: str) -> str:
    return re.sub(r"\s*\[\d+\]", "", answer).strip()


def edit_words(sentences: list[str], rng: random.Random) -> list[str]:
    """A word changed in each sentence (one of its words of four letters or more, else its last word)."""
    edited = []
    for sentence in sentences:
        words = sentence.split()
        long = [i for i, w in enumerate(words) if len(w.strip(".,;:!?")) >= 4] or [len(words) - 1]
        i = rng.choice(long)
        words[i] = rng.choice(SWAPS) + ("." if words[i].endswith(".") else "")
        edited.append(" ".join(words))
    return edited


def simhash(normalised: str) -> int:
    import hashlib

    words = normalised.split()
    shingles = [f"{a} {b}" for a, b in itertools.pairwise(words)] or words
    counts = [0] * 64
    for shingle in shingles:
        h = int.from_bytes(hashlib.blake2b(shingle.encode(), digest_size=8).digest(), "little")
        for bit in range(64):
            counts[bit] += 1 if h >> bit & 1 else -1
    return sum(1 << bit for bit in range(64) if counts[bit] > 0)


def compare_simhash(registered: list[str], edited: list[str], human: list[str], registry: object) -> dict[str, object]:
    """Recall on edited sentences and human sentences flagged, MinHash (at its threshold) vs SimHash (Hamming ≤ k)."""
    import numpy as np

    from rag.guardrails.registry import normalise

    fp = registry.fingerprinter  # type: ignore[attr-defined]
    reg = [normalise(s) for s in registered]
    reg_sig = np.stack([fp.signature(n) for n in reg])
    reg_sim = np.array([simhash(n) for n in reg], dtype=np.uint64)

    def best(text: str) -> tuple[float, int]:
        norm = normalise(text)
        jaccard = float((reg_sig == fp.signature(norm)).mean(axis=1).max())
        hamming = int(min(bin(int(x) ^ simhash(norm)).count("1") for x in reg_sim))
        return jaccard, hamming

    edited_scores = [best(s) for s in edited]
    human_scores = [best(s) for s in human]
    out: dict[str, object] = {
        "minhash": {
            "edited_recall": round(sum(j >= fp.threshold for j, _ in edited_scores) / len(edited_scores), 3),
            "human_sentences_flagged": sum(j >= fp.threshold for j, _ in human_scores),
        }
    }
    for k in (3, 6, 10):
        out[f"simhash_hamming_le_{k}"] = {
            "edited_recall": round(sum(h <= k for _, h in edited_scores) / len(edited_scores), 3),
            "human_sentences_flagged": sum(h <= k for _, h in human_scores),
        }
    out["human_sentences"] = len(human_scores)
    return out


def scale(root: Path, corpus_docs: list[str], squad_passages: list[str], n: int, threshold: float) -> dict[str, float]:
    """A registry of `n` synthetic answers (three sentences of SQuAD words each, plus the whole): size and costs."""
    from rag.guardrails.registry import KIND_ANSWER, KIND_SENTENCE, OutputRegistry, OwnOutputCheck

    vocab = sorted({w for p in squad_passages for w in p.split() if w.isalpha()})
    rng = random.Random(0)
    path = root / "scale" / "outputs.reg"
    filler = OutputRegistry(path, threshold=threshold)
    t0 = time.perf_counter()
    now = int(time.time() * 1000)
    for start in range(0, n, 2000):
        texts: list[tuple[int, str]] = []
        for _ in range(min(2000, n - start)):
            sents = [" ".join(rng.choices(vocab, k=rng.randint(8, 20))) + "." for _ in range(3)]
            texts += [(KIND_SENTENCE, s) for s in sents] + [(KIND_ANSWER, " ".join(sents))]
        filler.append_records(filler.fingerprint(texts, now))
    fill_s = time.perf_counter() - t0
    registry = OutputRegistry(path, threshold=threshold)
    t0 = time.perf_counter()
    records = len(registry)
    read_s = time.perf_counter() - t0
    check = OwnOutputCheck(registry)
    t0 = time.perf_counter()
    check.check(squad_passages[0])  # builds the LSH bands
    first_check_s = time.perf_counter() - t0
    sample = squad_passages[:300]
    t0 = time.perf_counter()
    for passage in sample:
        check.check(passage)
    squad_ms = (time.perf_counter() - t0) * 1000 / len(sample)
    t0 = time.perf_counter()
    for doc in corpus_docs:
        check.check(doc)
    corpus_ms = (time.perf_counter() - t0) * 1000 / len(corpus_docs)
    return {
        "answers": n,
        "records": records,
        "bytes": path.stat().st_size,
        "mib": round(path.stat().st_size / 2**20, 1),
        "fill_s": round(fill_s, 1),
        "load_s": round(read_s, 2),
        "first_check_s_incl_lsh_build": round(first_check_s, 2),
        "check_ms_per_squad_passage": round(squad_ms, 2),
        "check_ms_per_corpus_doc": round(corpus_ms, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", type=Path, default=SHARED / "data" / "squad_dev_v1.1.json")
    parser.add_argument("--extra", type=int, default=30, help="pydoc questions beyond the ten e2e ones")
    parser.add_argument("--squad-ungrounded", type=int, default=30, help="ungrounded answers to SQuAD questions")
    parser.add_argument("--scale", type=int, default=100_000, help="synthetic answers for the size/cost figure")
    args = parser.parse_args()

    from ingest.provenance import sign_document
    from ingest.pydoc_import import import_pydoc
    from ingest.trust import add_trusted_key, load_private_key, write_key_pair
    from rag.guardrails.registry import OwnOutputCheck, sentences
    from rag.settings import Settings
    from rag.wiring import build_answer_service, build_embedder, build_ingestor, build_output_registry

    squad = json.loads(args.dataset.read_text())
    passages = [p["context"] for article in squad["data"] for p in article["paragraphs"]]
    squad_questions = [qa["question"] for a in squad["data"] for p in a["paragraphs"] for qa in p["qas"]]
    random.Random(0).shuffle(squad_questions)

    root = Path(tempfile.mkdtemp(prefix="own-output-"))
    settings = Settings(data_dir=root / "data", trust_path=root / "trust.json", ledger_key_path=root / "lk" / "l.key")
    settings.watermark.detect = False  # every refusal below is the registry's
    if hasattr(settings, "detector"):
        settings.detector.policy = "off"  # nor the zero-shot detector's (and the corpus ingests in seconds)
    key_path, public = write_key_pair("bench-curator", root / "keys")
    add_trusted_key(settings.trust_path, "bench-curator", public)
    corpus = root / "pydoc"
    docs = import_pydoc(corpus, key_path)
    corpus_texts = [d.read_text() for d in docs]
    embedder = build_embedder(settings)
    report = build_ingestor(settings, embedder).ingest([corpus])
    print(f"corpus: {len(report.accepted)} accepted, {len(report.duplicates)} duplicates", flush=True)
    service = build_answer_service(settings, embedder=embedder)
    registry = build_output_registry(settings)
    assert registry is not None

    t0 = time.perf_counter()
    released = []
    for question in [q for q, *_ in IN_SCOPE]:
        result = service.answer(question)
        released.append("" if result.abstained else launder(result.answer))
    extra = [service.answer(q) for q in extra_questions(args.extra)]
    ungrounded = [service.answer(q, grounded=False) for q in squad_questions[: args.squad_ungrounded]]
    answer_s = time.perf_counter() - t0
    answered = [a for a in released if a]
    n_answers = len(IN_SCOPE) + len(extra) + len(ungrounded)
    print(f"{n_answers} questions asked in {answer_s:.0f} s; registry holds {len(registry)} records", flush=True)

    # The laundered file, through the real ingest (registry check only).
    check = OwnOutputCheck(registry, min_matches=settings.registry.min_matches, min_share=settings.registry.min_share)
    key = load_private_key(key_path)
    laundered = root / "laundered"
    laundered.mkdir()
    doc = laundered / "faq.md"
    doc.write_text("# Frequently asked questions\n\n" + "\n\n".join(answered) + "\n")
    sign_document(doc, key, origin="human", curator="bench-curator", authors=["Someone"], license="CC0-1.0")
    ingest = build_ingestor(settings, embedder).ingest([laundered])
    laundered_result = [(r["reason"], r["detail"]) for r in ingest.rejected] or ["accepted"]

    rng = random.Random(0)
    all_sentences = [s for a in answered for s in sentences(a)]
    edited_answers = [edit_words(sentences(a), rng) for a in answered]
    edited_sentences = [s for a in edited_answers for s in a]
    reordered = "\n\n".join(" ".join(reversed(a)) for a in reversed(edited_answers))
    figures: dict[str, object] = {
        "questions": n_answers,
        "registry_records": len(registry),
        "laundered_answers": len(answered),
        "laundered_words": sum(len(a.split()) for a in answered),
        "laundered_ingest": laundered_result,
        "laundered_each_alone_refused": sum(check.check(a) is not None for a in answered),
        "edited_refused": check.check("\n\n".join(" ".join(a) for a in edited_answers)),
        "edited_reordered_refused": check.check(reordered),
        "edited_each_alone_refused": sum(
            check.check(" ".join(edit_words(sentences(a), rng))) is not None for a in answered
        ),
        "sentences_registered_vs_released": f"{len(registry)} records for {len(all_sentences)} released sentences",
    }
    t0 = time.perf_counter()
    squad_refused = [p[:80] for p in passages if check.check(p) is not None]
    squad_ms = (time.perf_counter() - t0) * 1000 / len(passages)
    squad_any = sum(bool(registry.matches(p)) for p in passages)
    corpus_refused = [d.name for d, t in zip(docs, corpus_texts, strict=True) if check.check(t) is not None]
    corpus_any = sum(bool(registry.matches(t)) for t in corpus_texts)
    figures.update(
        squad_passages=len(passages),
        squad_refused=len(squad_refused),
        squad_with_any_matching_sentence=squad_any,
        squad_refused_examples=squad_refused[:3],
        corpus_docs=len(corpus_texts),
        corpus_refused=len(corpus_refused),
        corpus_refused_names=corpus_refused,
        corpus_with_any_matching_sentence=corpus_any,
        check_ms_per_squad_passage_small_registry=round(squad_ms, 3),
    )
    human = [s for p in passages[:600] for s in sentences(p)] + [s for t in corpus_texts[:20] for s in sentences(t)]
    registered = [s for a in answered for s in sentences(a)]
    registered += [s for r in extra if not r.abstained for s in sentences(launder(r.answer))]
    registered += [s for r in ungrounded for s in sentences(r.raw)]
    figures["minhash_vs_simhash"] = compare_simhash(registered, edited_sentences, human, registry)
    for name, value in figures.items():
        print(f"{name}: {value}", flush=True)
    figures["scale"] = scale(root, corpus_texts, passages, args.scale, settings.registry.threshold)
    print(f"scale: {figures['scale']}", flush=True)
    print(json.dumps(figures, default=str))


if __name__ == "__main__":
    main()
