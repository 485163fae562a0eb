"""Answering benchmark: retrieval latency (SQuAD dev, and a 100k-chunk store), answer latency over HTTP,
tokens/s and server RSS, side by side with the LangChain peer in the same run.

    python bench/answer.py [--dataset ../shared/data/squad_dev_v1.1.json] [--questions 40] [--no-peer]
                           [--runtime openvino|torch]
    python bench/answer.py --compare-runtimes [--squad-prompts 100] [--rounds 2] [--variants torch,openvino]

Ours: the SQuAD passages are signed and ingested through the real path; `rag serve` runs as a
subprocess on that store and answers `POST /v1/answer` (hybrid retrieval, Gemma 3 270M, watermark,
groundedness check). The peer (`../shared/bench/langchain_baseline.py`, SmolLM2, dense top-3, no
checks) answers the same seeded sample. The last line printed is one JSON object with every figure.

`--compare-runtimes` measures the generator alone on its runtimes (`RAG_GENERATOR__RUNTIME`), each in a
fresh process, alternating over `--rounds` rounds (medians): load time (and the OpenVINO export's first
build, once), decode tokens/s (64 tokens forced, watermark on), answer time and RSS, and agreement with
the first variant: the share of identical greedy answers on the 10 end-to-end questions of
tests/e2e/test_real_answering.py (given the cited topic's first 1,200 characters; free mode unless the test
names one)
and on `--squad-prompts` SQuAD dev questions (seed 0, gold passage, free mode), with F1 against gold.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
sys.path[0] = str(REPO)  # run as a script, this folder would shadow the `ingest` package

SCALE_CHUNKS = 100_000


def run_peer(dataset: Path, limit: int) -> dict[str, float]:
    script = SHARED / "bench" / "langchain_baseline.py"
    out = subprocess.run(
        [sys.executable, str(script), "--dataset", str(dataset), "--limit", str(limit), "--seed", "0"],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def machine() -> dict[str, str]:
    """The CPU the figures were measured on (README figures are per CPU)."""
    from rag.embedder_choice import cpu_description

    cpu, flags = cpu_description()
    return {"cpu": cpu, "cpu_flags": " ".join(flags)}


def retrieval_latency(retriever: object, questions: list[str]) -> list[float]:
    timings = []
    for question in questions:
        start = time.perf_counter()
        retriever.retrieve(question, top_k=4)  # type: ignore[attr-defined]
        timings.append((time.perf_counter() - start) * 1000)
    return timings


def scaled_store(root: Path, settings: object, source: object, embedder: object) -> object:
    """A 100k-chunk Chroma collection: the real chunks, then perturbed copies of their real vectors."""
    import numpy as np

    from rag.retrieval import HybridRetriever, LexicalIndex
    from rag.stores import ChromaStore
    from rag.types import Chunk

    ids = source.ids()  # type: ignore[attr-defined]
    base = source.get(ids)  # type: ignore[attr-defined]
    vectors = np.asarray(embedder.embed([c.text for c in base]), dtype=np.float32)  # type: ignore[attr-defined]
    store = ChromaStore.open(path=root / "chroma100k", url=None, collection="scaled")
    rng = np.random.default_rng(0)
    batch: list[Chunk] = []
    rows: list[np.ndarray] = []
    for n in range(SCALE_CHUNKS):
        original = base[n % len(base)]
        vector = vectors[n % len(base)] + (rng.normal(0, 0.02, vectors.shape[1]) if n >= len(base) else 0)
        rows.append(vector / np.linalg.norm(vector))
        meta = {**original.metadata, "doc_id": f"{original.metadata['doc_id']}#{n // len(base)}"}
        batch.append(Chunk(f"s{n:06d}", meta["doc_id"], 0, original.text, "", "", meta))
        if len(batch) == 4096 or n == SCALE_CHUNKS - 1:
            store.upsert(batch, [r.tolist() for r in rows])
            batch, rows = [], []
    lexical = LexicalIndex(root / "bm25-100k")
    lexical.rebuild(store, "scaled")
    return HybridRetriever(store, embedder, lexical)  # type: ignore[arg-type]


def serve(settings_env: dict[str, str], port: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-c", "from rag.cli import main; main()", "serve", "--port", str(port)],
        cwd=REPO,
        env={**os.environ, **settings_env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


# --- the generator's two runtimes ------------------------------------------------------------------

DECODE_TOKENS = 64


def e2e_prompts() -> list[dict[str, Any]]:
    """The in-scope questions of the end-to-end test, each with the first chunk of the topic it must cite."""
    from pydoc_data.topics import topics

    source = (REPO / "tests" / "e2e" / "test_real_answering.py").read_text()
    table = next(
        node.value
        for node in ast.parse(source).body
        if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "IN_SCOPE" for t in node.targets)
    )
    prompts = []
    for question, *middle, doc_id in ast.literal_eval(table):
        # (question, facts, doc) or (question, mode, facts, doc); facts and docs: alternatives joined by |
        mode = middle[0] if len(middle) == 2 else "free"
        topic = doc_id.split("|")[0].removesuffix(".md")
        passages = [topics[topic][:1200]]
        prompts.append(
            {"set": "e2e", "question": question, "mode": mode, "gold": middle[-1].split("|"), "passages": passages}
        )
    return prompts


def squad_prompts(dataset: Path, count: int) -> list[dict[str, Any]]:
    from rag.evaluation.squad import SquadData

    data = SquadData.load(dataset)
    return [
        {
            "set": "squad",
            "question": q.question,
            "mode": "free",
            "gold": q.answers,
            "passages": [data.passages[q.passage]],
        }
        for q in random.Random(0).sample(data.questions, count)
    ]


def variant_settings(variant: str) -> dict[str, str]:
    """`torch[:quantize]` or `openvino[:weights]` as generator settings."""
    runtime, _, option = variant.partition(":")
    if runtime not in ("torch", "openvino"):
        raise SystemExit(f"unknown runtime in {variant!r}")
    update = {"runtime": runtime}
    if option:
        update["quantize" if runtime == "torch" else "openvino_weights"] = option
    return update


def runtime_worker(variant: str, prompts_path: Path, out_path: Path) -> None:
    """One variant in this process: load, decode speed, every prompt's answer, RSS. Writes one JSON file."""
    import resource

    import psutil
    import torch

    from rag.generation import LocalGenerator, build_prompt, watermarking_config
    from rag.settings import Settings

    settings = Settings()
    config = settings.generator.model_copy(update=variant_settings(variant))
    generator = LocalGenerator(config.model, config, settings.watermark, settings.model_cache_dir)
    started = time.perf_counter()
    generator.warm_up()
    figures: dict[str, Any] = {"variant": variant, "model_id": generator.model_id}
    figures["load_s"] = round(time.perf_counter() - started, 2)
    figures["rss_loaded_mb"] = round(psutil.Process().memory_info().rss / 2**20, 1)

    prompts = json.loads(prompts_path.read_text())
    # Decode speed: a fixed number of new tokens (no stop), watermark on, minus the one-token run's time.
    sample = prompts[-1]
    ids = generator.tokenizer(build_prompt(sample["question"], sample["passages"]), return_tensors="pt")["input_ids"]
    model = generator._driver  # what `stream` drives: the torch model or the OpenVINO one

    def timed(tokens: int) -> float:
        begin = time.perf_counter()
        with torch.inference_mode():
            model.generate(
                input_ids=ids,
                max_new_tokens=tokens,
                min_new_tokens=tokens,
                do_sample=False,
                pad_token_id=0,
                watermarking_config=watermarking_config(settings.watermark),
            )
        return time.perf_counter() - begin

    rates, prefills = [], []
    for _ in range(3):
        first = timed(1)
        prefills.append(first)
        rates.append(DECODE_TOKENS / (timed(DECODE_TOKENS + 1) - first))
    figures["decode_tokens_per_s"] = round(statistics.median(rates), 2)
    figures["decode_runs"] = [round(r, 2) for r in rates]
    figures["prefill_s"] = round(statistics.median(prefills), 3)
    figures["prompt_tokens"] = int(ids.shape[1])

    answers, seconds, tokens = [], [], 0
    for item in prompts:
        result = generator.generate(item["question"], item["passages"], mode=item["mode"])
        answers.append(result.text)
        seconds.append(result.seconds)
        tokens += result.tokens
    figures.update(
        answers=answers,
        answer_p50_s=round(statistics.median(seconds), 3),
        answer_tokens_per_s=round(tokens / sum(seconds), 2),
        rss_mb=round(psutil.Process().memory_info().rss / 2**20, 1),
        peak_rss_mb=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    )
    out_path.write_text(json.dumps(figures))


def build_worker(weights: str, out_path: Path) -> None:
    """Time the OpenVINO export into a scratch folder (what a machine's first start pays once)."""
    from rag import ov_generation
    from rag.settings import Settings

    settings = Settings()
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        model, cache_root = settings.generator.model, settings.model_cache_dir
        ov_generation.saved_model(model, cache_root, weights, folder=Path(tmp))  # type: ignore[arg-type]
        out_path.write_text(json.dumps({"first_build_s": round(time.perf_counter() - started, 1)}))


def compare_runtimes(args: argparse.Namespace) -> None:
    """Each variant in fresh processes, alternating over the rounds; agreement against the first variant."""
    from rag.evaluation.metrics import best_over_gold, token_f1

    variants = args.variants.split(",")
    reference = variants[0]
    prompts = e2e_prompts() + squad_prompts(args.dataset, args.squad_prompts)
    runs: dict[str, list[dict[str, Any]]] = {variant: [] for variant in variants}
    figures: dict[str, Any] = {"rounds": args.rounds, "prompts": len(prompts), "reference": reference}
    with tempfile.TemporaryDirectory() as tmp:
        prompts_path = Path(tmp) / "prompts.json"
        prompts_path.write_text(json.dumps(prompts))
        for variant in variants:
            if variant.startswith("openvino") and not args.no_build:
                weights = variant_settings(variant).get("openvino_weights", "int8")
                out = Path(tmp) / "build.json"
                subprocess.run([sys.executable, __file__, "--build-worker", weights, "--out", str(out)], check=True)
                figures[f"{variant}_first_build_s"] = json.loads(out.read_text())["first_build_s"]
                print(f"{variant}: first build {figures[f'{variant}_first_build_s']} s", flush=True)
        for round_ in range(args.rounds):
            for variant in variants if round_ % 2 == 0 else variants[::-1]:
                out = Path(tmp) / f"{variant}-{round_}.json"
                command = [sys.executable, __file__, "--runtime-worker", variant, "--prompts", str(prompts_path)]
                subprocess.run([*command, "--out", str(out)], check=True)
                run = json.loads(out.read_text())
                run["load_average"] = round(os.getloadavg()[0], 2)
                runs[variant].append(run)
                print(
                    f"round {round_ + 1} {variant}: load {run['load_s']} s, decode {run['decode_tokens_per_s']} tok/s "
                    f"{run['decode_runs']}, answer p50 {run['answer_p50_s']} s, RSS {run['rss_mb']} MB "
                    f"(host load average {run['load_average']})",
                    flush=True,
                )

    members = {part: [i for i, item in enumerate(prompts) if item["set"] == part] for part in ("e2e", "squad")}
    for variant, done in runs.items():
        for key in ("load_s", "decode_tokens_per_s", "prefill_s", "answer_p50_s", "answer_tokens_per_s", "rss_mb"):
            figures[f"{variant}_{key}"] = round(statistics.median(float(run[key]) for run in done), 3)
        figures[f"{variant}_peak_rss_mb"] = max(run["peak_rss_mb"] for run in done)
        figures[f"{variant}_model_id"] = done[0]["model_id"]
        # Greedy decoding is deterministic: every round of a variant must give the same answers.
        figures[f"{variant}_rounds_agree"] = all(run["answers"] == done[0]["answers"] for run in done)
        answers, expected = done[0]["answers"], runs[reference][0]["answers"]
        hits = sum(any(fact.lower() in answers[i].lower() for fact in prompts[i]["gold"]) for i in members["e2e"])
        figures[f"{variant}_e2e_facts"] = f"{hits}/{len(members['e2e'])}"  # the fact the e2e test wants
        f1 = [best_over_gold(token_f1, answers[i], prompts[i]["gold"]) for i in members["squad"]]
        figures[f"{variant}_squad_f1"] = round(sum(f1) / len(f1), 4)
        if variant == reference:
            continue
        for part, rows in members.items():
            same = sum(answers[i] == expected[i] for i in rows)
            figures[f"{variant}_agreement_{part}"] = f"{same}/{len(rows)}"
        figures[f"{variant}_decode_speedup"] = round(
            figures[f"{variant}_decode_tokens_per_s"] / figures[f"{reference}_decode_tokens_per_s"], 2
        )
        figures[f"{variant}_f1_difference"] = round(
            figures[f"{variant}_squad_f1"] - figures[f"{reference}_squad_f1"], 4
        )
        figures[f"{variant}_differing"] = [
            {"question": prompts[i]["question"], reference: expected[i], variant: answers[i]}
            for i in range(len(prompts))
            if answers[i] != expected[i]
        ]
    table = [
        ("load, s", "load_s"),
        ("decode tokens/s", "decode_tokens_per_s"),
        ("prefill, s", "prefill_s"),
        ("answer p50, s", "answer_p50_s"),
        ("answer tokens/s", "answer_tokens_per_s"),
        ("RSS after answers, MB", "rss_mb"),
        ("peak RSS, MB", "peak_rss_mb"),
        ("SQuAD F1", "squad_f1"),
        ("e2e facts", "e2e_facts"),
        ("same answers, e2e", "agreement_e2e"),
        ("same answers, SQuAD", "agreement_squad"),
        ("decode speed-up", "decode_speedup"),
    ]
    print(f"{'figure':<24}" + "".join(f"{variant:>16}" for variant in variants))
    for label, key in table:
        print(f"{label:<24}" + "".join(f"{figures.get(f'{variant}_{key}', '-')!s:>16}" for variant in variants))
    figures.update(machine())
    if args.save:
        args.save.write_text(json.dumps({"figures": figures, "prompts": prompts, "runs": runs}, indent=1))
    print(json.dumps(figures))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", type=Path, default=SHARED / "data" / "squad_dev_v1.1.json")
    parser.add_argument("--questions", type=int, default=40, help="Answered questions (both systems).")
    parser.add_argument("--retrieval-questions", type=int, default=300)
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--no-peer", action="store_true")
    parser.add_argument(
        "--retrieval-only",
        action="store_true",
        help="Only retrieval latency at the SQuAD size and at 100k chunks: no peer, no server, no answers.",
    )
    parser.add_argument("--runtime", choices=["openvino", "torch"], help="The served generator's runtime.")
    parser.add_argument("--compare-runtimes", action="store_true", help="Measure the generator on both runtimes.")
    parser.add_argument("--squad-prompts", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument(
        "--variants",
        default="torch,openvino",
        help="Comma-separated runtime[:option] (torch:QUANTIZE, openvino:WEIGHTS); the first is the reference.",
    )
    parser.add_argument("--no-build", action="store_true", help="Skip timing the OpenVINO export.")
    parser.add_argument("--save", type=Path, help="Write every answer and figure of the comparison to this file.")
    parser.add_argument("--runtime-worker", help=argparse.SUPPRESS)
    parser.add_argument("--build-worker", help=argparse.SUPPRESS)
    parser.add_argument("--prompts", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.runtime_worker:
        return runtime_worker(args.runtime_worker, args.prompts, args.out)
    if args.build_worker:
        return build_worker(args.build_worker, args.out)
    if args.compare_runtimes:
        return compare_runtimes(args)

    import httpx
    import psutil

    from rag.evaluation.squad import SquadData, write_signed_passages
    from rag.evaluation.summary import percentile
    from rag.settings import Settings
    from rag.wiring import build_embedder, build_ingestor, build_retriever, build_store

    data = SquadData.load(args.dataset)
    figures: dict[str, float | int | str] = {"passages": len(data.passages)}
    peer = None if args.no_peer or args.retrieval_only else run_peer(args.dataset, args.questions)  # clean peak RSS
    sample = random.Random(0).sample(data.questions, args.retrieval_questions)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        corpus, trust = write_signed_passages(data.passages, root / "signed")
        settings = Settings(data_dir=root / "data", trust_path=trust)
        # Setting up, not measured: without the synthetic-text detector (seconds a document with Gemma).
        unscored = settings.model_copy(update={"detector": settings.detector.model_copy(update={"policy": "off"})})
        build_ingestor(unscored, build_embedder(settings)).ingest([corpus])
        embedder = build_embedder(settings, serving=True)  # the server's runtime for queries
        figures.update(machine(), embedder_runtime=str(getattr(embedder, "runtime", "")))
        retriever = build_retriever(settings, embedder)
        retriever.warm_up()  # what the server does before /readyz turns ready
        small = retrieval_latency(retriever, [q.question for q in sample])
        figures.update(
            chunks=build_store(settings).count(),
            retrieval_p50_ms=round(percentile(small, 0.5), 2),
            retrieval_p95_ms=round(percentile(small, 0.95), 2),
        )
        print(f"retrieval over {figures['chunks']} chunks: p50 {figures['retrieval_p50_ms']} ms", flush=True)
        scaled = scaled_store(root, settings, build_store(settings), embedder)
        scaled.warm_up()  # type: ignore[attr-defined]
        large = retrieval_latency(scaled, [q.question for q in sample])
        figures.update(
            retrieval_p50_ms_100k=round(percentile(large, 0.5), 2),
            retrieval_p95_ms_100k=round(percentile(large, 0.95), 2),
        )
        print(f"retrieval over 100k chunks: p95 {figures['retrieval_p95_ms_100k']} ms", flush=True)
        del scaled, retriever, embedder
        if args.retrieval_only:
            figures["load_1min_at_end"] = round(os.getloadavg()[0], 2)
            print(json.dumps(figures))
            return

        env = {"RAG_DATA_DIR": str(settings.data_dir), "RAG_TRUST_PATH": str(trust)}
        if args.runtime:
            env["RAG_GENERATOR__RUNTIME"] = args.runtime
            figures["runtime"] = args.runtime
        server = serve(env, args.port)
        try:
            url = f"http://127.0.0.1:{args.port}"
            deadline = time.time() + 600
            while time.time() < deadline:
                try:
                    if httpx.get(f"{url}/readyz", timeout=5).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                time.sleep(1)
            else:
                raise SystemExit("the server did not become ready")
            process = psutil.Process(server.pid)
            asked = random.Random(0).sample(data.questions, args.questions)
            seconds, tokens, generate_s, rss, abstained = [], 0, 0.0, 0, 0
            for question in asked:
                start = time.perf_counter()
                response = httpx.post(f"{url}/v1/answer", json={"question": question.question}, timeout=120)
                seconds.append(time.perf_counter() - start)
                body = response.json()
                abstained += bool(body["abstained"])
                tokens += int(body["timings"].get("tokens", 0) or 0)
                generate_s += float(body["timings"].get("generate_ms", 0)) / 1000
                rss = max(rss, process.memory_info().rss)
        finally:
            server.terminate()
            server.wait(30)
    figures.update(
        questions=args.questions,
        answer_p50_s=round(percentile(seconds, 0.5), 3),
        answer_p95_s=round(percentile(seconds, 0.95), 3),
        tokens_per_s=round(tokens / generate_s, 2) if generate_s else 0.0,
        abstention_rate=round(abstained / args.questions, 3),
        rss_mb=round(rss / 2**20, 1),
    )
    if peer is not None:
        figures.update(
            peer_retrieval_p50_ms=peer["retrieval_p50_ms"],
            peer_retrieval_p95_ms=peer["retrieval_p95_ms"],
            peer_answer_p50_s=peer["answer_p50_s"],
            peer_answer_p95_s=peer["answer_p95_s"],
            peer_tokens_per_s=peer["grounded_tokens_per_s"],
            peer_rss_mb=peer["peak_rss_mb"],
            retrieval_speedup_vs_peer=round(peer["retrieval_p95_ms"] / float(figures["retrieval_p95_ms"]), 2),
            answer_speedup_vs_peer=round(peer["answer_p50_s"] / float(figures["answer_p50_s"]), 2),
        )
    rows = [
        ("retrieval p50, ms", "retrieval_p50_ms", "peer_retrieval_p50_ms"),
        ("retrieval p95, ms", "retrieval_p95_ms", "peer_retrieval_p95_ms"),
        ("retrieval p95 @100k, ms", "retrieval_p95_ms_100k", None),
        ("answer p50, s", "answer_p50_s", "peer_answer_p50_s"),
        ("answer p95, s", "answer_p95_s", "peer_answer_p95_s"),
        ("tokens/s", "tokens_per_s", "peer_tokens_per_s"),
        ("RSS, MB", "rss_mb", "peer_rss_mb"),
    ]
    print(f"{'figure':<26}{'ours':>12}{'peer':>12}")
    for label, ours, theirs in rows:
        print(f"{label:<26}{figures[ours]!s:>12}{figures.get(theirs or '', '-')!s:>12}")
    print(
        f"speed-up vs peer: retrieval p95 {figures.get('retrieval_speedup_vs_peer', '-')}x, "
        f"answer p50 {figures.get('answer_speedup_vs_peer', '-')}x"
    )
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
