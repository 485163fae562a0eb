"""The client side of `bench/load.py`: a seeded plan of mixed requests, and concurrent clients that run it.

Each client has its own API key (so its own rate-limit bucket, as separate users would) and its own connection
pool, takes the next request of the shared plan, and records what came back: status, error code, latency,
`Retry-After` on a 503, and for a streamed answer whether it ended with `[DONE]` and when its first text came.
A client given a 503 or 429 waits what `Retry-After` says (capped) before its next request, as OpenAI's
clients do; `retry_wait=False` makes it go on at once (a stress test of the refusal path instead).
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from dataclasses import asdict, dataclass, field
from typing import Any

ROUTES = ("answer", "chat_stream", "documents")

# Questions a user of the default corpus (the Python Language Reference topics) would ask, and a few it cannot
# answer (abstentions decided by the relevance gate, before any generation).
IN_SCOPE = [
    "What does the pass statement do when it is executed?",
    "What happens when a break statement runs inside a loop?",
    "What does the continue statement do?",
    "What exception is raised when an assert statement fails?",
    "What does the del statement do?",
    "What are lambda expressions used to create?",
    "What does the global statement declare?",
    "What does the try statement specify?",
    "How does a while loop decide to run its suite again?",
    "What does the return statement leave when no expression is given?",
]
OUT_OF_SCOPE = [
    "Who painted the Mona Lisa?",
    "What is the boiling point of water at sea level?",
    "Which planet is closest to the sun?",
]
RETRY_WAIT_CAP_S = 10.0


@dataclass(frozen=True)
class Planned:
    n: int
    route: str
    question: str | None


@dataclass
class Outcome:
    """What one request got back."""

    n: int
    route: str
    client: int
    started_s: float  # since the phase began
    seconds: float
    status: int
    code: str | None = None  # the error code of a non-2xx (or of an error event in a stream)
    retry_after: str | None = None
    abstained: bool | None = None
    first_text_s: float | None = None  # streamed: when the first released text arrived
    done: bool | None = None  # streamed: whether the stream ended with [DONE]
    transport_error: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def make_plan(count: int, mix: dict[str, float], seed: int) -> list[Planned]:
    """`count` requests, routes drawn with the weights of `mix`, questions from the pools (one in five out of scope)."""
    rng = random.Random(seed)
    routes = list(mix)
    weights = [mix[r] for r in routes]
    plan = []
    for n in range(count):
        route = rng.choices(routes, weights)[0]
        question = None
        if route != "documents":
            question = rng.choice(OUT_OF_SCOPE) if rng.random() < 0.2 else rng.choice(IN_SCOPE)
        plan.append(Planned(n, route, question))
    return plan


def _error_code(body: bytes) -> str | None:
    try:
        data = json.loads(body)
    except ValueError:
        return "not_json"
    error = data.get("error") if isinstance(data, dict) else None
    return str(error.get("code")) if isinstance(error, dict) else None


async def _answer(client: Any, item: Planned, outcome: Outcome) -> None:
    response = await client.post("/v1/answer", json={"question": item.question})
    outcome.status = response.status_code
    if response.is_success:
        body = response.json()
        outcome.abstained = bool(body.get("abstained"))
        outcome.extra["timings"] = body.get("timings")  # the server's own account: retrieve, generate, check
    else:
        outcome.code = _error_code(response.content)
        outcome.retry_after = response.headers.get("retry-after")


async def _documents(client: Any, item: Planned, outcome: Outcome) -> None:
    response = await client.get("/v1/documents")
    outcome.status = response.status_code
    if response.is_success:
        body = response.json()
        outcome.extra["documents"] = len(body["documents"]) if isinstance(body, dict) else len(body)
    else:
        outcome.code = _error_code(response.content)
        outcome.retry_after = response.headers.get("retry-after")


async def _chat_stream(client: Any, item: Planned, outcome: Outcome, began: float) -> None:
    body = {"messages": [{"role": "user", "content": item.question}], "stream": True}
    async with client.stream("POST", "/v1/chat/completions", json=body) as response:
        outcome.status = response.status_code
        if not response.is_success:
            outcome.code = _error_code(await response.aread())
            outcome.retry_after = response.headers.get("retry-after")
            return
        outcome.done = False
        async for line in response.aiter_lines():
            if not line.startswith("data: "):
                continue
            data = line.removeprefix("data: ")
            if data == "[DONE]":
                outcome.done = True
                continue
            event = json.loads(data)
            if "error" in event:
                outcome.code = str(event["error"].get("code"))
                continue
            choice = (event.get("choices") or [{}])[0]
            if choice.get("delta", {}).get("content") and outcome.first_text_s is None:
                outcome.first_text_s = time.perf_counter() - began
            if isinstance(event.get("rag"), dict):
                outcome.abstained = bool(event["rag"].get("abstained"))


async def _one(client: Any, item: Planned, who: int, phase_start: float) -> Outcome:
    began = time.perf_counter()
    outcome = Outcome(item.n, item.route, who, round(began - phase_start, 3), 0.0, 0)
    try:
        if item.route == "answer":
            await _answer(client, item, outcome)
        elif item.route == "chat_stream":
            await _chat_stream(client, item, outcome, began)
        else:
            await _documents(client, item, outcome)
    except Exception as exc:  # a cut connection, a timeout: recorded, never hidden
        outcome.transport_error = type(exc).__name__
    outcome.seconds = time.perf_counter() - began
    return outcome


async def run_clients(
    base_url: str,
    tokens: list[str],
    plan: list[Planned],
    *,
    max_seconds: float,
    timeout_s: float,
    retry_wait: bool = True,
) -> tuple[list[Outcome], float, int]:
    """Run `plan` with one client per token; (outcomes, wall seconds, requests not sent before `max_seconds`)."""
    import httpx

    pending: asyncio.Queue[Planned] = asyncio.Queue()
    for item in plan:
        pending.put_nowait(item)
    outcomes: list[Outcome] = []
    start = time.perf_counter()

    async def client_loop(who: int, token: str) -> None:
        headers = {"Authorization": f"Bearer {token}"}
        async with httpx.AsyncClient(base_url=base_url, headers=headers, timeout=timeout_s) as client:
            while time.perf_counter() - start < max_seconds:
                try:
                    item = pending.get_nowait()
                except asyncio.QueueEmpty:
                    return
                outcome = await _one(client, item, who, start)
                outcomes.append(outcome)
                if retry_wait and outcome.status in (429, 503) and outcome.retry_after:
                    await asyncio.sleep(min(float(outcome.retry_after), RETRY_WAIT_CAP_S))

    await asyncio.gather(*(client_loop(who, token) for who, token in enumerate(tokens)))
    return outcomes, time.perf_counter() - start, pending.qsize()


def start_stub_generator(seconds: float) -> tuple[str, Any]:
    """An OpenAI-compatible chat server in a thread that waits `seconds` (a remote generator's time, no CPU here)
    and answers with the first sentence of the first passage in the prompt (`rag.generation.build_prompt`'s
    layout), so the service's checks find it supported. Returns (base URL, server: call `shutdown()`)."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers.get("content-length", 0))))
            prompt = str(body["messages"][-1]["content"])
            passage = prompt.rsplit("Context:\n[1] ", 1)[-1].split("\n", 1)[0]
            sentence = passage.split(". ", 1)[0].rstrip(".")[:300] + "."
            time.sleep(seconds)
            reply = {
                "choices": [{"index": 0, "message": {"role": "assistant", "content": sentence}}],
                "usage": {"prompt_tokens": len(prompt.split()), "completion_tokens": len(sentence.split())},
            }
            data = json.dumps(reply).encode()
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            return

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{server.server_address[1]}/v1", server
