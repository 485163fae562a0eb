"""Load benchmark: concurrent clients against a real `rag serve` on loopback, with the real default service.

    python bench/load.py [--clients 16] [--requests 500] [--max-seconds 360] [--seed 17] [--no-retry-wait]
                         [--mix answer=0.4,chat_stream=0.3,documents=0.3] [--warm-up-s 60]
                         [--stub-generator SECONDS] [--work DIR] [--out FILE]

Set-up as `bash run.sh` does it, in a fresh folder (or `--work DIR`, reused when it already holds an ingested
store): a curator key, the default corpus (`rag import pydoc`, 79 topics) signed and ingested by `rag ingest`
(with the synthetic-text detector off: it costs seconds a document and ingest is not what is measured here),
one reader API key per client, then `rag serve` in a subprocess (real MiniLM embedder, real Gemma 3 270M,
extract mode: the defaults). With `--stub-generator SECONDS` the server asks a stand-in remote generator
instead, which takes that long and quotes the first sentence of the best passage (free mode, as with any
remote generator): the server's own machinery (HTTP, keys, queue, retrieval with the real embedder, the checks)
measured apart from the model's CPU time.

After a short warm-up (one answer, one streamed answer, four listings, not counted), `--clients` clients run a
seeded plan of `--requests` mixed requests (POST /v1/answer, streamed POST /v1/chat/completions,
GET /v1/documents), bounded by `--max-seconds`. The generator runs one answer at a time behind a queue of
`RAG_ANSWER__QUEUE_SIZE`: under 16 clients most answer requests are refused with 503 `busy`, which is what this
measures, along with every other non-2xx (target 0), p50/p95/p99 per route, throughput, and the server's RSS
(psutil) when ready, `--warm-up-s` into the run, at its peak after that and at the end (target: growth under
10% after warm-up; the JSON holds the whole curve). Prints a table and writes every figure and every request's
outcome as JSON under bench/reports/load/.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")

REPO = Path(__file__).resolve().parents[1]
# Run as a script, this file's folder comes first on sys.path and its name would shadow the package.
sys.path[0] = str(REPO)

from bench.load_clients import (  # noqa: E402
    ROUTES,
    Outcome,
    Planned,
    make_plan,
    run_clients,
    start_stub_generator,
)

REPORTS = REPO / "bench" / "reports" / "load"


def rag(env: dict[str, str], *args: str, timeout: float = 900) -> None:
    """Run the `rag` command as a user would (this interpreter's), stopping the benchmark when it fails."""
    done = subprocess.run(
        [sys.executable, "-c", "from rag.cli import main; main()", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if done.returncode != 0:
        sys.exit(f"`rag {' '.join(args)}` failed ({done.returncode}):\n{done.stderr[-2000:]}")


def prepare(work: Path, clients: int) -> tuple[dict[str, str], list[str]]:
    """The environment of an isolated deployment in `work` with the default corpus ingested; one reader token per
    client (made afresh each run)."""
    from rag.apikeys import ApiKeyStore
    from rag.settings import Settings

    conf, data = work / "conf", work / "data"
    env = {
        **os.environ,
        "RAG_DATA_DIR": str(data),
        "RAG_TRUST_PATH": str(conf / "trust.json"),
        "RAG_LEDGER_KEY_PATH": str(conf / "ledger.key"),
    }
    if not (data / "ledger.jsonl").exists():
        print("set-up: curator key, default corpus, ingest (a minute or two) ...", flush=True)
        rag(env, "keys", "new", "load-curator", "--out", str(conf / "keys"), "--trust", str(conf / "trust.json"))
        corpus = data / "corpus" / "pydoc"
        rag(env, "import", "pydoc", "--out", str(corpus), "--key", str(conf / "keys" / "load-curator.key"))
        rag({**env, "RAG_DETECTOR__POLICY": "off"}, "ingest", str(corpus))
    settings = Settings(data_dir=data, trust_path=conf / "trust.json", ledger_key_path=conf / "ledger.key")
    keys = ApiKeyStore(settings.api_keys_path)
    stamp = time.strftime("%H%M%S")
    tokens = [keys.new(f"load-{stamp}-{n}", "reader")[1] for n in range(clients)]
    return env, tokens


class Server:
    """`rag serve` in a subprocess, and its RSS sampled every `interval` seconds from a thread."""

    def __init__(self, env: dict[str, str], port: int, log: Path, interval: float = 0.2) -> None:
        self.url = f"http://127.0.0.1:{port}"
        self.log = log.open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-c", "from rag.cli import main; main()", "serve", "--port", str(port)],
            cwd=REPO,
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        self.interval = interval
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._sampler = threading.Thread(target=self._sample, daemon=True)

    def wait_ready(self, timeout: float = 600) -> float:
        import httpx

        start = time.monotonic()
        while time.monotonic() - start < timeout:
            if self.process.poll() is not None:
                sys.exit(f"the server exited ({self.process.returncode}); see {self.log.name}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=5).status_code == 200:
                    self._sampler.start()
                    return time.monotonic() - start
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        sys.exit("the server did not become ready")

    def rss(self) -> int:
        import psutil

        return int(psutil.Process(self.process.pid).memory_info().rss)

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.samples.append((time.monotonic(), self.rss()))
            except Exception:  # the process has gone
                return

    def stop(self) -> None:
        self._stop.set()
        self.process.terminate()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self.log.close()


def percentiles(values: list[float]) -> dict[str, float | None]:
    from rag.evaluation.summary import percentile

    if not values:
        return {"p50": None, "p95": None, "p99": None}
    return {name: round(percentile(values, q), 3) for name, q in (("p50", 0.5), ("p95", 0.95), ("p99", 0.99))}


def is_busy(outcome: Outcome) -> bool:
    return outcome.status == 503 and outcome.code == "busy"


def failure(outcome: Outcome) -> str | None:
    """What went wrong with a request, other than a 503 `busy` (None when nothing did)."""
    if outcome.transport_error:
        return f"transport:{outcome.transport_error}"
    if is_busy(outcome):
        return None
    if not 200 <= outcome.status < 300:
        return f"{outcome.status}:{outcome.code}"
    if outcome.route == "chat_stream" and (outcome.code or not outcome.done):
        return f"stream:{outcome.code or 'no_done'}"
    return None


def route_figures(outcomes: list[Outcome]) -> dict[str, Any]:
    ok = [o for o in outcomes if failure(o) is None and not is_busy(o)]
    busy = [o for o in outcomes if is_busy(o)]
    figures: dict[str, Any] = {
        "requests": len(outcomes),
        "ok": len(ok),
        "busy_503": len(busy),
        "busy_without_retry_after": sum(not o.retry_after for o in busy),
        "other_failures": dict(Counter(f for o in outcomes if (f := failure(o)) is not None)),
        "ok_seconds": percentiles([o.seconds for o in ok]),
        "busy_seconds": percentiles([o.seconds for o in busy]),
    }
    answered = [o for o in ok if o.abstained is not None]
    if answered:
        figures["answered"] = sum(not o.abstained for o in answered)
        figures["abstained"] = sum(bool(o.abstained) for o in answered)
    firsts = [o.first_text_s for o in ok if o.first_text_s is not None]
    if firsts:
        figures["first_text_seconds"] = percentiles(firsts)
    return figures


def rss_figures(server: Server, start: int, began: float, ended: float, warm_up_s: float) -> dict[str, Any]:
    """RSS when the server turned ready; after warm-up (the median over the minute from `warm_up_s` into the run:
    caches for new input shapes fill during the first few dozen answers) and at the end (the median over the
    run's last minute): medians, since each extractive answer holds its logits over Gemma's 262k-token vocabulary
    for a moment (hundreds of MB, then freed); and the peak after warm-up, those moments included."""
    mb = 2**20
    warm_at = began + warm_up_s
    first = [rss for at, rss in server.samples if warm_at <= at < warm_at + 60]
    last = [rss for at, rss in server.samples if ended - 60 <= at <= ended]
    after = [rss for at, rss in server.samples if at >= warm_at]
    if not first or not last:
        return {"start_mb": round(start / mb, 1), "note": f"the run was shorter than {warm_up_s:g} s + 60 s"}
    warm, end, peak = statistics.median(first), statistics.median(last), max(after)
    return {
        "start_mb": round(start / mb, 1),
        "warm_up_s": warm_up_s,
        "after_warm_up_mb": round(warm / mb, 1),
        "peak_mb": round(peak / mb, 1),
        "end_mb": round(end / mb, 1),
        "end_growth_after_warm_up_pct": round(100 * (end - warm) / warm, 1),
        "peak_over_warm_up_pct": round(100 * (peak - warm) / warm, 1),
    }


def timeline(server: Server, since: float, every: float = 5.0) -> list[tuple[float, float]]:
    """(seconds since the measured phase began, RSS MB), one sample every `every` seconds."""
    out: list[tuple[float, float]] = []
    for at, rss in server.samples:
        if at >= since and (not out or at - since - out[-1][0] >= every):
            out.append((round(at - since, 1), round(rss / 2**20, 1)))
    return out


def warm_up(url: str, token: str, timeout_s: float) -> list[Outcome]:
    """One answer, one streamed answer and four listings, one after another (loads the reader's kernels)."""
    question = "What does the pass statement do when it is executed?"
    plan = [Planned(-1, "answer", question), Planned(-2, "chat_stream", question)]
    plan += [Planned(-3 - n, "documents", None) for n in range(4)]
    outcomes, _, _ = asyncio.run(run_clients(url, [token], plan, max_seconds=1e9, timeout_s=timeout_s))
    return outcomes


def print_table(report: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    def fmt(value: Any) -> str:
        return "-" if value is None else str(value)

    title = f"{report['clients']} clients, {report['sent']} requests in {report['wall_s']} s ({report['generator']})"
    table = Table(title=title)
    for column in ("route", "requests", "ok", "503 busy", "other", "p50 s", "p95 s", "p99 s", "busy p95 s"):
        table.add_column(column, justify="left" if column in ("route", "other") else "right")
    for route, f in report["routes"].items():
        s, b = f["ok_seconds"], f["busy_seconds"]
        other = ", ".join(f"{k} x{v}" for k, v in f["other_failures"].items()) or "0"
        table.add_row(route, fmt(f["requests"]), fmt(f["ok"]), fmt(f["busy_503"]), other, fmt(s["p50"]),
                      fmt(s["p95"]), fmt(s["p99"]), fmt(b["p95"]))  # fmt: skip
    console = Console(width=max(120, Console().width))
    console.print(table)
    rss = report["rss"]
    console.print(
        f"throughput {report['throughput_rps']} requests/s ({report['ok_rps']} ok/s); 503 busy "
        f"{report['busy_503']} (without Retry-After: {report['busy_without_retry_after']}); other failures "
        f"{report['other_failures']}; not sent {report['not_sent']}"
    )
    if "note" in rss:
        console.print(f"server RSS MB: start {rss['start_mb']} ({rss['note']})")
        return
    console.print(
        f"server RSS MB: start {rss['start_mb']}, after warm-up {rss['after_warm_up_mb']} (median of the minute "
        f"from {rss['warm_up_s']:g} s), end {rss['end_mb']} (median of the last minute, "
        f"{rss['end_growth_after_warm_up_pct']:+}%), peak {rss['peak_mb']} ({rss['peak_over_warm_up_pct']:+}%)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--max-seconds", type=float, default=360, help="No request starts after this.")
    parser.add_argument("--mix", default="answer=0.4,chat_stream=0.3,documents=0.3")
    parser.add_argument("--seed", type=int, default=17)
    parser.add_argument("--port", type=int, default=8766)
    parser.add_argument(
        "--warm-up-s", type=float, default=60, help="RSS growth is measured from this many seconds into the run."
    )
    parser.add_argument("--timeout", type=float, default=90, help="Client timeout per request, seconds.")
    parser.add_argument("--no-retry-wait", action="store_true", help="Do not wait Retry-After after a 503/429.")
    parser.add_argument(
        "--stub-generator",
        type=float,
        metavar="SECONDS",
        help="Serve with a stand-in remote generator taking SECONDS an answer, instead of the local model.",
    )
    parser.add_argument("--work", type=Path, help="Deployment folder to use and keep (reused when ingested).")
    parser.add_argument("--out", type=Path, help="JSON report (default: bench/reports/load/load-<time>.json).")
    args = parser.parse_args()
    mix = {name: float(weight) for name, weight in (part.split("=") for part in args.mix.split(","))}
    if set(mix) - set(ROUTES):
        sys.exit(f"--mix names unknown routes: {sorted(set(mix) - set(ROUTES))}; known: {ROUTES}")

    work = args.work or Path(tempfile.mkdtemp(prefix="rag-load-"))
    try:
        report = run(args, mix, work)
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    out = args.out or REPORTS / f"load-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print_table(report)
    print(f"report: {out.relative_to(REPO) if out.is_relative_to(REPO) else out}")


def run(args: argparse.Namespace, mix: dict[str, float], work: Path) -> dict[str, Any]:
    env, tokens = prepare(work, args.clients)
    stub = None
    if args.stub_generator is not None:
        base_url, stub = start_stub_generator(args.stub_generator)
        env = {**env, "RAG_GENERATOR__BACKEND": "openai", "RAG_GENERATOR__BASE_URL": base_url}
        env["RAG_GENERATOR__REMOTE_MODEL"] = "stub"
    load_before = os.getloadavg()
    server = Server(env, args.port, work / "server.log")
    try:
        ready_s = server.wait_ready()
        start_rss = server.rss()
        print(f"server ready in {ready_s:.1f} s; warming up ...", flush=True)
        warm = warm_up(server.url, tokens[0], args.timeout)
        plan = make_plan(args.requests, mix, args.seed)
        print(f"running {len(plan)} requests with {args.clients} clients ...", flush=True)
        measured_from = time.monotonic()
        outcomes, wall, not_sent = asyncio.run(
            run_clients(
                server.url,
                tokens,
                plan,
                max_seconds=args.max_seconds,
                timeout_s=args.timeout,
                retry_wait=not args.no_retry_wait,
            )
        )
        rss = rss_figures(server, start_rss, measured_from, time.monotonic(), args.warm_up_s)
    finally:
        server.stop()
        if stub is not None:
            stub.shutdown()
    sent = len(outcomes)
    busy = [o for o in outcomes if is_busy(o)]
    failures = Counter(f for o in outcomes if (f := failure(o)) is not None)
    return {
        "clients": args.clients,
        "planned": args.requests,
        "sent": sent,
        "not_sent": not_sent,
        "mix": mix,
        "seed": args.seed,
        "retry_wait": not args.no_retry_wait,
        "generator": "local (default)" if args.stub_generator is None else f"stub, {args.stub_generator} s an answer",
        "wall_s": round(wall, 1),
        "throughput_rps": round(sent / wall, 2),
        "ok_rps": round(sum(failure(o) is None and not is_busy(o) for o in outcomes) / wall, 2),
        "busy_503": len(busy),
        "busy_without_retry_after": sum(not o.retry_after for o in busy),
        "other_failures": dict(failures),
        "routes": {route: route_figures([o for o in outcomes if o.route == route]) for route in mix},
        "rss": rss,
        "rss_timeline_mb": timeline(server, measured_from),
        "server_ready_s": round(ready_s, 1),
        "warm_up": [o.as_dict() for o in warm],
        "load_average_before_after": [list(load_before), list(os.getloadavg())],
        "commit": subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
        ).stdout.strip(),
        "outcomes": [o.as_dict() for o in sorted(outcomes, key=lambda o: o.n)],
    }


if __name__ == "__main__":
    main()
