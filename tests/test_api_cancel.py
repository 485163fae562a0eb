"""Issue 17: a client that leaves, or a request past its deadline, stops the work it started and frees its
generator slot; past the deadline the client gets a coded error, never unchecked text."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from rag.queueing import GenerationQueue, JobCancelledError, JobControl, ServiceBusyError, current_job
from rag.settings import GeneratorSettings, Settings, WatermarkSettings
from tests.api_server import StallingGenerator, live_server, raw_connection, raw_request, serving_app
from tests.test_answering import QUESTION, TRUE_SENTENCE

REJECTED = "It was invented in 1066."


def wait_for(condition: Any, limit: float = 5.0) -> bool:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.01)
    return False


# --- the queue ----------------------------------------------------------------------------------------


def test_a_waiting_job_that_is_cancelled_never_runs_and_frees_its_slot_at_once() -> None:
    queue = GenerationQueue(2)
    release, ran = threading.Event(), []
    first = queue.submit(lambda: release.wait(10))
    control = JobControl()
    second = queue.submit(lambda: ran.append("second"), control)
    with pytest.raises(ServiceBusyError):
        queue.submit(lambda: None)
    control.cancel.set()
    assert second.cancel()  # still waiting: dropped
    third = queue.submit(lambda: ran.append("third"))  # its slot is free again
    release.set()
    first.result(5), third.result(5)
    assert ran == ["third"]
    queue.shutdown()


def test_a_job_whose_deadline_passed_while_waiting_is_not_started() -> None:
    queue = GenerationQueue(2)
    ran: list[str] = []
    future = queue.submit(lambda: ran.append("late"), JobControl(deadline=time.monotonic() - 1))
    with pytest.raises(JobCancelledError):
        future.result(5)
    assert ran == []
    queue.shutdown()


def test_a_running_job_sees_its_control() -> None:
    queue = GenerationQueue(1)
    control = JobControl(deadline=time.monotonic() + 60)
    assert queue.submit(current_job, control).result(5) is control
    assert current_job() is None  # not outside a job
    queue.shutdown()


# --- the local generator's hook (a tiny random model: no weights needed) -----------------------------


@pytest.fixture(scope="module")
def tiny_generator() -> Any:
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig, PreTrainedTokenizerFast

    from rag.generation import LocalGenerator

    vocab = {f"w{i}": i for i in range(512)}
    core = Tokenizer(models.WordLevel(vocab, unk_token="w0"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, unk_token="w0", pad_token="w0", eos_token="w1")
    torch.manual_seed(0)
    config = Gemma3TextConfig(
        vocab_size=512,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=32,
    )
    generator = LocalGenerator(
        "gemma3-270m", GeneratorSettings(max_new_tokens=400), WatermarkSettings(bias=0.0), Path("unused")
    )
    generator._model, generator._tokenizer = Gemma3ForCausalLM(config).eval(), tokenizer
    return generator


def generate_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "generate" and t.is_alive()]


def test_a_cancel_event_stops_local_generation_at_the_next_token(tiny_generator: Any) -> None:
    cancel = threading.Event()
    stream = tiny_generator.stream(QUESTION, ["w5 w6 w7"], cancel=cancel)
    next(stream)
    cancel.set()
    started = time.monotonic()
    with pytest.raises(JobCancelledError):
        for _ in stream:
            pass
    assert time.monotonic() - started < 2 and not generate_threads()


def test_the_running_jobs_cancel_reaches_local_generation(tiny_generator: Any) -> None:
    queue = GenerationQueue(1)
    control = JobControl()
    pieces: list[str] = []

    def job() -> None:
        for piece in tiny_generator.stream(QUESTION, ["w5 w6 w7"]):
            pieces.append(piece)
            control.cancel.set()  # as the API does when the client leaves

    with pytest.raises(JobCancelledError):
        queue.submit(job, control).result(10)
    assert 1 <= len(pieces) < 5 and not generate_threads()
    queue.shutdown()


def test_a_stream_closed_early_stops_its_generate_thread(tiny_generator: Any) -> None:
    stream = tiny_generator.stream(QUESTION, ["w5 w6 w7"])
    next(stream)
    stream.close()
    assert not generate_threads()
    assert tiny_generator.generate(QUESTION, ["w5 w6 w7"], max_new_tokens=3).tokens == 3  # still usable


# --- the API: deadline ------------------------------------------------------------------------------


@pytest.fixture
def short_deadline(settings: Settings) -> Settings:
    settings.answer.deadline_s = 0.6
    settings.answer.queue_size = 1
    return settings


def test_an_answer_past_its_deadline_is_a_504_and_its_work_stops(short_deadline: Settings, corpus: Path) -> None:
    generator = StallingGenerator(f"{TRUE_SENTENCE} {REJECTED}", stall_after=2)
    with TestClient(serving_app(short_deadline, corpus, generator)) as client:
        started = time.monotonic()
        response = client.post("/v1/answer", json={"question": QUESTION})
        assert time.monotonic() - started < 3
        assert response.status_code == 504 and response.json()["error"]["code"] == "deadline_exceeded"
        assert generator.cancelled.wait(30)
        generator.stall_after = None
        short_deadline.answer.deadline_s = 30  # read per request: what follows is not a race with the clock
        again = client.post("/v1/answer", json={"question": QUESTION})  # the slot (queue of 1) is free
        assert again.status_code == 200 and "1066" not in again.text
        late = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": QUESTION}]})
        assert late.status_code == 200


def test_a_stream_past_its_deadline_ends_with_an_error_event_after_checked_text_only(
    short_deadline: Settings, corpus: Path
) -> None:
    # The first sentence is checked and released; the reader then stalls in the middle of the second one. The
    # deadline leaves time for the work before the stall (retrieval, the first sentence's check): in the full
    # suite, on a clean CI clone, 0.6 s ran out before the stall twice, and the stream then ended without the
    # generator ever waiting to be told to stop.
    short_deadline.answer.deadline_s = 3.0
    generator = StallingGenerator(f"{TRUE_SENTENCE} {REJECTED}", stall_after=8)
    body = {"messages": [{"role": "user", "content": QUESTION}], "stream": True}
    with TestClient(serving_app(short_deadline, corpus, generator)) as client:
        with client.stream("POST", "/v1/chat/completions", json=body) as response:
            lines = [line for line in response.iter_lines() if line.startswith("data: ")]
        assert generator.cancelled.wait(30)
    assert lines[-1] == "data: [DONE]"
    events = [json.loads(line[6:]) for line in lines[:-1]]
    assert events[-1]["error"]["code"] == "deadline_exceeded"
    text = "".join(e["choices"][0]["delta"].get("content", "") for e in events if "choices" in e)
    assert text.startswith("When it is executed, nothing happens [") and "1066" not in text and "invented" not in text


# --- the API on a real server: a client that disconnects ------------------------------------------------


@pytest.fixture
def stalled(settings: Settings, corpus: Path) -> Iterator[tuple[str, StallingGenerator]]:
    settings.answer.queue_size = 2
    generator = StallingGenerator(stall_after=1)
    with live_server(serving_app(settings, corpus, generator), settings) as url:
        yield url, generator


def post(path: str, body: dict[str, Any]) -> bytes:
    data = json.dumps(body).encode()
    return raw_request("POST", path, data, {"Content-Type": "application/json", "Content-Length": len(data)})


@pytest.mark.slow  # starts a server
@pytest.mark.parametrize(
    "request_bytes",
    [
        post("/v1/answer", {"question": QUESTION}),
        post("/v1/chat/completions", {"messages": [{"role": "user", "content": QUESTION}]}),
        post("/v1/chat/completions", {"messages": [{"role": "user", "content": QUESTION}], "stream": True}),
    ],
    ids=["answer", "chat", "chat-stream"],
)
def test_a_client_that_disconnects_cancels_its_work(
    stalled: tuple[str, StallingGenerator], request_bytes: bytes
) -> None:
    url, generator = stalled
    with raw_connection(url) as sock:
        sock.sendall(request_bytes)
        assert generator.started.wait(5)
    assert generator.cancelled.wait(30)  # the client left: its generation was stopped
    generator.stall_after = None
    response = httpx.post(f"{url}/v1/answer", json={"question": QUESTION}, timeout=10)
    assert response.status_code == 200


@pytest.mark.slow  # starts a server
def test_a_waiting_request_whose_client_left_is_dropped_without_running(
    stalled: tuple[str, StallingGenerator],
) -> None:
    url, generator = stalled
    running = raw_connection(url)
    running.sendall(post("/v1/answer", {"question": QUESTION}))
    assert generator.started.wait(5)
    with raw_connection(url) as waiting:  # the queue's second slot
        waiting.sendall(post("/v1/answer", {"question": "What does the del statement do?"}))
        time.sleep(0.3)
    # Its slot is free again at once, though the first request still holds the generator.
    third: dict[str, int] = {}
    worker = threading.Thread(
        target=lambda: third.update(
            status=httpx.post(f"{url}/v1/answer", json={"question": QUESTION}, timeout=20).status_code
        )
    )
    worker.start()
    time.sleep(0.5)
    assert worker.is_alive() and len(generator.calls) == 1  # queued behind the first, not refused with 503
    generator.stall_after = None
    running.close()  # the first client leaves too: its work stops and the third request runs
    worker.join(20)
    assert third == {"status": 200}
    assert [question for question, _, _ in generator.calls] == [QUESTION, QUESTION]  # the dropped one never ran
