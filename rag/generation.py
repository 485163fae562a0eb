"""Answer generation: local GGUF models through transformers, or any OpenAI-compatible server.

Both sit behind the `Generator` protocol. Local generation is deterministic (greedy), watermarked
with transformers' `WatermarkingConfig` (KGW, left-hash, context width 1), stops at the end of the
line, and can be constrained to quote the passages (`QuoteLogitsProcessor`).
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from rag.errors import BackendUnavailableError, InvalidInputError
from rag.injection import fenced
from rag.settings import GeneratorSettings, WatermarkSettings
from rag.types import AnswerMode, Generation

log = logging.getLogger(__name__)

# One worked example, written for this prompt (it is not knowledge-base text).
_EXAMPLE_PASSAGE = (
    "The Rhine rises in the Swiss Alps, forms part of the border between Germany and France, "
    "and flows into the North Sea near Rotterdam."
)
_EXAMPLE_QUESTION = "Into which sea does the Rhine flow?"
_EXAMPLE_ANSWER = "the North Sea"
_EXAMPLE_CLOSED_BOOK = ("What is the capital of Japan?", "Tokyo")
INSTRUCTION = "Answer each question with a short phrase copied from the context."
# The prompt's own words: a released answer never repeats them (`rag.injection.release_problem`).
PROMPT_TEXTS = (INSTRUCTION, _EXAMPLE_PASSAGE, _EXAMPLE_QUESTION)


class GeneratorError(BackendUnavailableError):
    code = "generator_failed"


def build_prompt(question: str, passages: Sequence[str] | None) -> str:
    """Completion prompt with numbered passages (DESIGN.md: better than chat templates for both models).

    Each passage is fenced (`rag.injection.fenced`): one line, its `[n]`, labels and control tokens
    neutralised, so it cannot imitate the prompt's layout. `passages=None` is the ungrounded prompt used
    by evaluation: same format, no context.
    """
    if passages is None:
        q, a = _EXAMPLE_CLOSED_BOOK
        return (
            f"Answer each question with a short phrase.\n\nQuestion: {q}\nAnswer: {a}\n\n"
            f"Question: {' '.join(question.split())}\nAnswer:"
        )
    numbered = "\n".join(f"[{n}] {fenced(text)}" for n, text in enumerate(passages, start=1) if text.strip())
    return (
        f"{INSTRUCTION}\n\n"
        f"Context:\n[1] {_EXAMPLE_PASSAGE}\nQuestion: {_EXAMPLE_QUESTION}\nAnswer: {_EXAMPLE_ANSWER}\n\n"
        f"Context:\n{numbered}\nQuestion: {' '.join(question.split())}\nAnswer:"
    )


def watermark_label(settings: WatermarkSettings) -> dict[str, Any]:
    key_id = hashlib.sha256(str(settings.key).encode()).hexdigest()[:16]
    return {
        "scheme": "kgw-lefthash-1",
        "library": "transformers.WatermarkingConfig",
        "key_id": key_id,
        "greenlist_ratio": settings.greenlist_ratio,
        "bias": settings.bias,
    }


def watermarking_config(settings: WatermarkSettings) -> Any:
    from transformers import WatermarkingConfig

    return WatermarkingConfig(
        greenlist_ratio=settings.greenlist_ratio,
        bias=settings.bias,
        hashing_key=settings.key,
        seeding_scheme="lefthash",
        context_width=1,
    )


class QuoteLogitsProcessor:
    """Allow only tokens that extend a span of the passages' own tokens, so the answer is a quotation.

    Spans are located in the prompt's token ids (the passages as the model saw them), so there is no
    mismatch between how a passage is tokenised alone and in context. After the first token, the
    answer may also end (end-of-text or newline), and nothing else.
    """

    def __init__(self, prompt_ids: Sequence[int], spans: Sequence[tuple[int, int]], stop_ids: Sequence[int]) -> None:
        self.prompt_len = len(prompt_ids)
        self.ids = list(prompt_ids)
        self.spans = list(spans)
        self.stop_ids = sorted(set(stop_ids))
        self.positions = [p for start, end in self.spans for p in range(start, end)]
        self._end_of: dict[int, int] = {p: end for start, end in self.spans for p in range(start, end)}
        self.active: list[int] | None = None  # positions of allowed next tokens

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        import torch

        generated = input_ids[0, self.prompt_len :].tolist()
        if not generated:
            self.active = list(self.positions)
        else:
            last = generated[-1]
            assert self.active is not None
            self.active = [p + 1 for p in self.active if self.ids[p] == last and p + 1 < self._end_of[p]]
        allowed = {self.ids[p] for p in self.active}
        if generated:
            allowed.update(self.stop_ids)
        if not allowed:
            allowed.update(self.stop_ids)
        mask = torch.full_like(scores, float("-inf"))
        index = torch.tensor(sorted(allowed), dtype=torch.long)
        mask[:, index] = 0.0
        return scores + mask


class LocalGenerator:
    """A GGUF model from a PyPI package, loaded with transformers; greedy, watermarked, CPU."""

    watermarked = True
    last_tokens = 0  # tokens generated by the last `stream` call
    last_logprob: float | None = None  # mean log-probability of those tokens (the reader's confidence)
    last_prompt_tokens = 0

    def __init__(self, name: str, settings: GeneratorSettings, watermark: WatermarkSettings, cache_root: Path) -> None:
        from rag.models import model_spec

        self.spec = model_spec(name)
        self.settings = settings
        self.watermark = watermark
        self.cache_root = cache_root
        self._driver: Any = None  # the model `generate()` runs on: the torch model, or the OpenVINO one
        self._torch: Any = None  # the torch model (`_model`)
        self._tokenizer: Any = None
        self._lock = threading.Lock()

    @property
    def model_id(self) -> str:
        if self.settings.runtime == "openvino":
            return f"{self.spec.name} ({self.spec.description}, OpenVINO {self.settings.openvino_weights} weights)"
        weights = "" if self.settings.quantize == "none" else f", {self.settings.quantize}"
        return f"{self.spec.name} ({self.spec.description}, transformers gguf_file{weights})"

    @property
    def _model(self) -> Any:
        """The torch model. With the OpenVINO runtime it loads on first use: the detector and the extractive reader
        run its forward pass over whole texts, which the OpenVINO model (last position's logits only) does not."""
        if self._torch is None and self._driver is not None:
            with self._lock:
                if self._torch is None:
                    self._torch = self._load_torch()
        return self._torch

    @_model.setter
    def _model(self, model: Any) -> None:
        self._torch = model

    @property
    def tokenizer(self) -> Any:
        self.warm_up()
        return self._tokenizer

    def warm_up(self) -> None:
        with self._lock:
            if self._driver is not None:
                return
            if self._torch is not None:  # a model handed over directly (tests) generates, whatever the runtime
                self._driver = self._torch
                return
            try:
                if self.settings.runtime == "openvino":
                    from rag import ov_generation

                    self._driver, self._tokenizer = ov_generation.load(
                        self.spec.name, self.cache_root, self.settings.openvino_weights, threads=self.settings.threads
                    )
                else:
                    self._driver = self._torch = self._load_torch()
            except BackendUnavailableError:
                raise
            except Exception as exc:
                raise GeneratorError(f"Could not load {self.spec.name}: {exc}.") from exc

    def _load_torch(self) -> Any:
        import torch

        from rag.models import load_model
        from rag.runtime import release_freed_memory

        if self.settings.threads:
            torch.set_num_threads(self.settings.threads)
        tied = self.settings.quantize == "compact-table"
        model, tokenizer = load_model(self.spec.name, self.cache_root, in_memory=tied)
        if self.settings.quantize == "int8-head":
            model.lm_head = _int8_linear(model.lm_head)
        elif tied:
            _compact_token_table(model)
            release_freed_memory()  # the float32 table is freed now, not at some later collection
        self._tokenizer = self._tokenizer or tokenizer
        return model

    def torch_model(self) -> tuple[Any, Any]:
        """The torch causal LM and its tokenizer (the extractive reader scores spans with its forward pass).

        With the torch runtime it is the model that generates; with OpenVINO it loads on the first call."""
        self.warm_up()
        return self._model, self._tokenizer

    def stream(
        self,
        question: str,
        passages: Sequence[str] | None,
        *,
        mode: AnswerMode = "free",
        max_new_tokens: int | None = None,
        cancel: threading.Event | None = None,
    ) -> Iterator[str]:
        """Yield the answer's text as it is generated (one line at most).

        `cancel` (default: the running queue job's, `rag.queueing.current_job`) stops generation at the
        next token, and the stream then raises `JobCancelledError` instead of ending on partial text."""
        from rag.queueing import JobCancelledError, current_job

        self.warm_up()
        job = current_job()
        cancel = cancel or (job.cancel if job is not None else None)
        if cancel is not None and cancel.is_set():
            raise JobCancelledError("Generation was cancelled before it started.")
        generation: dict[str, Any] = {"cancel": cancel, "halt": threading.Event()}
        try:
            for piece in self._start(question, passages, mode, max_new_tokens, generation):
                line, newline, _ = piece.partition("\n")
                if line:
                    yield line
                if newline:
                    break
        finally:  # a reader that stops early (its client left) must not leave generate() running
            generation["halt"].set()
            if "thread" in generation:
                generation["thread"].join()
        if cancel is not None and cancel.is_set():
            raise JobCancelledError("Generation was cancelled.")
        if "error" in generation:
            raise GeneratorError(f"Generation failed: {generation['error']}.")
        self.last_tokens = int(generation.get("new_tokens", 0))
        self.last_prompt_tokens = int(generation.get("prompt_tokens", 0))
        steps = generation["logprobs"][: self.last_tokens]
        self.last_logprob = sum(steps) / len(steps) if steps else None

    def generate(
        self,
        question: str,
        passages: Sequence[str] | None,
        *,
        mode: AnswerMode = "free",
        max_new_tokens: int | None = None,
        cancel: threading.Event | None = None,
    ) -> Generation:
        started = time.perf_counter()
        text = "".join(self.stream(question, passages, mode=mode, max_new_tokens=max_new_tokens, cancel=cancel))
        return Generation(
            text=text.strip(),
            tokens=self.last_tokens,
            seconds=time.perf_counter() - started,
            prompt_tokens=self.last_prompt_tokens,
        )

    def _start(
        self,
        question: str,
        passages: Sequence[str] | None,
        mode: AnswerMode,
        max_new_tokens: int | None,
        out: dict[str, Any],
    ) -> Iterator[str]:
        import torch
        from transformers import LogitsProcessorList, StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer

        if mode == "quote" and not passages:
            raise InvalidInputError("Quote mode needs passages to quote from.", code="quote_needs_passages")
        tokenizer = self._tokenizer
        prompt = build_prompt(question, passages)
        # A control token's text inside a passage ("<end_of_turn>") stays text: the prompt itself holds none.
        encoded = tokenizer(
            prompt, return_tensors="pt", return_offsets_mapping=mode == "quote", split_special_tokens=True
        )
        input_ids = encoded["input_ids"]
        stop_ids = [*tokenizer.encode("\n", add_special_tokens=False), *_as_list(tokenizer.eos_token_id)]

        class _StopAtNewline(StoppingCriteria):
            def __init__(self, prompt_len: int) -> None:
                self.prompt_len = prompt_len

            def __call__(self, ids: Any, scores: Any, **kwargs: Any) -> Any:
                done = ids.shape[1] > self.prompt_len and "\n" in tokenizer.decode(ids[0, -1:])
                return torch.full((ids.shape[0],), done, dtype=torch.bool)

        stops = [event for event in (out["halt"], out.get("cancel")) if event is not None]

        class _Halted(StoppingCriteria):
            def __call__(self, ids: Any, scores: Any, **kwargs: Any) -> Any:
                halted = any(event.is_set() for event in stops)
                return torch.full((ids.shape[0],), halted, dtype=torch.bool)

        processors = LogitsProcessorList()
        if mode == "quote":
            assert passages is not None
            spans = _passage_token_spans(prompt, encoded["offset_mapping"][0].tolist(), passages)
            processors.append(QuoteLogitsProcessor(input_ids[0].tolist(), spans, stop_ids))
        out["logprobs"] = []
        chosen = _ChosenLogProb(out["logprobs"])
        processors.append(chosen)
        streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
        kwargs: dict[str, Any] = {
            "input_ids": input_ids,
            "attention_mask": encoded["attention_mask"],
            "max_new_tokens": max_new_tokens or self.settings.max_new_tokens,
            "do_sample": False,
            "logits_processor": processors,
            "stopping_criteria": StoppingCriteriaList([_StopAtNewline(input_ids.shape[1]), _Halted()]),
            "streamer": streamer,
            "pad_token_id": tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stop_ids[-1],
        }
        if self.watermark.bias > 0:
            kwargs["watermarking_config"] = watermarking_config(self.watermark)
        out["prompt_tokens"] = int(input_ids.shape[1])

        def run() -> None:
            try:
                with torch.inference_mode():
                    result = self._driver.generate(**kwargs)
                out["new_tokens"] = int(result.shape[1] - input_ids.shape[1])
                if out["new_tokens"]:
                    chosen.finish(int(result[0, -1]))
            except Exception as exc:  # reported by the caller, after the streamer ends
                log.exception("generation failed")
                out["error"] = str(exc)
                streamer.end()

        out["thread"] = threading.Thread(target=run, name="generate", daemon=True)
        out["thread"].start()
        return iter(streamer)


class _ChosenLogProb:
    """Records the model's log-probability of each token it emitted (the reader's confidence).

    transformers runs custom processors before its watermark, so the row seen here is the model's own
    distribution (quote constraints applied, watermark bias not). The token decoding chose from the
    final scores is only known at the next step (the last token of `input_ids`) or, for the last
    step, from the returned sequence (`finish`). One row is kept at a time.
    """

    def __init__(self, sink: list[float]) -> None:
        self.sink = sink
        self.previous: Any = None

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        if self.previous is not None:
            self.sink.append(float(self.previous[int(input_ids[0, -1])]))
        self.previous = scores[0].float().log_softmax(-1)
        return scores

    def finish(self, last_token: int) -> None:
        if self.previous is not None:
            self.sink.append(float(self.previous[last_token]))
            self.previous = None


def _int8_linear(layer: Any) -> Any:
    """Dynamic per-channel int8 copy of one Linear layer (the 262k-row output layer dominates decoding)."""
    import warnings

    import torch
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch marks eager quantisation as deprecated
        wrapped = quantize_dynamic(torch.nn.Sequential(layer), {torch.nn.Linear: per_channel_dynamic_qconfig})
    return wrapped[0]


RESCORED = 32  # output-layer candidates recomputed from the bfloat16 rows at each step


def _compact_token_table(model: Any) -> None:
    """Hold Gemma's tied token table as bfloat16 rows plus an int8 output layer; free the float32 one.

    The 262k x 640 table is 62% of the weights (670 MB in float32); this keeps 335 + 168 MB. The
    input lookup reads the bfloat16 rows. The output layer is a dynamic per-row int8 Linear over the
    whole vocabulary, and its `RESCORED` best tokens are then recomputed exactly from their bfloat16
    rows in float32: int8 logits alone changed 2 of our 10 end-to-end answers, the rescored ones
    match float32 greedy decoding on them.
    """
    import torch

    embeddings = model.get_input_embeddings()
    rows = embeddings.weight.detach().to(torch.bfloat16)
    head = _int8_linear(model.lm_head)
    factor = getattr(embeddings, "embed_scale", None)
    factor = float(factor) if factor is not None else 1.0

    class Bf16Lookup(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.rows = rows  # CPU only: a plain attribute, never a parameter

        def forward(self, ids: torch.Tensor) -> torch.Tensor:
            return self.rows[ids].to(torch.float32) * factor

    class RescoredHead(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.head, self.rows = head, rows

        def forward(self, hidden: torch.Tensor) -> torch.Tensor:
            logits: torch.Tensor = self.head(hidden)
            top = logits.topk(min(RESCORED, logits.shape[-1]), dim=-1).indices
            exact = torch.einsum("...h,...kh->...k", hidden, self.rows[top].to(torch.float32))
            return logits.scatter(-1, top, exact)

    model.set_input_embeddings(Bf16Lookup())
    model.lm_head = RescoredHead()
    model.config.tie_word_embeddings = False  # nothing may re-tie the freed float32 table


def _as_list(value: Any) -> list[int]:
    if value is None:
        return []
    return [int(v) for v in value] if isinstance(value, list | tuple) else [int(value)]


def _passage_token_spans(
    prompt: str, offsets: Sequence[Sequence[int]], passages: Sequence[str]
) -> list[tuple[int, int]]:
    """Token index ranges [start, end) of each numbered passage inside the prompt."""
    context_at = prompt.rindex("Context:\n")
    spans: list[tuple[int, int]] = []
    cursor = context_at
    for n, text in enumerate(passages, start=1):
        body = fenced(text)
        if not body:
            continue
        start_char = prompt.index(f"[{n}] {body}", cursor) + len(f"[{n}] ")
        end_char = start_char + len(body)
        cursor = end_char
        tokens = [i for i, (a, b) in enumerate(offsets) if b > a and a >= start_char - 1 and b <= end_char]
        if tokens:
            spans.append((tokens[0], tokens[-1] + 1))
    return spans


class OpenAICompatibleGenerator:
    """Any server speaking the OpenAI chat completions API (vLLM, llama.cpp server, Ollama).

    Remote output cannot carry our watermark, and the label says so; quote mode needs logits and is
    therefore local-only.
    """

    watermarked = False

    def __init__(self, settings: GeneratorSettings, *, transport: Any = None) -> None:
        if not settings.base_url:
            raise InvalidInputError(
                "RAG_GENERATOR__BASE_URL is required with the openai backend.", code="missing_base_url"
            )
        self.settings = settings
        self.base_url = settings.base_url.rstrip("/")
        self.transport = transport  # an httpx transport; tests pass httpx.MockTransport

    @property
    def model_id(self) -> str:
        return f"openai-compatible:{self.settings.remote_model}@{self.base_url}"

    def warm_up(self) -> None:
        return None

    def stream(
        self,
        question: str,
        passages: Sequence[str] | None,
        *,
        mode: AnswerMode = "free",
        max_new_tokens: int | None = None,
    ) -> Iterator[str]:
        yield self.generate(question, passages, mode=mode, max_new_tokens=max_new_tokens).text

    def generate(
        self,
        question: str,
        passages: Sequence[str] | None,
        *,
        mode: AnswerMode = "free",
        max_new_tokens: int | None = None,
    ) -> Generation:
        import httpx

        if mode == "quote":
            raise InvalidInputError(
                "Quote mode needs a local generator (it constrains logits).", code="quote_unsupported"
            )
        from rag.queueing import current_job

        timeout = self.settings.timeout_s
        job = current_job()
        if job is not None:  # a queued request's deadline bounds the whole call, not each operation
            job.check()
            remaining = job.remaining()
            timeout = timeout if remaining is None else max(0.05, min(timeout, remaining))
        headers = {"Authorization": f"Bearer {self.settings.api_key}"} if self.settings.api_key else {}
        body = {
            "model": self.settings.remote_model,
            "messages": [{"role": "user", "content": build_prompt(question, passages)}],
            "temperature": 0,
            "max_tokens": max_new_tokens or self.settings.max_new_tokens,
            "stop": ["\n"],
        }
        started = time.perf_counter()
        try:
            with httpx.Client(transport=self.transport, timeout=timeout) as client:
                response = client.post(f"{self.base_url}/chat/completions", json=body, headers=headers)
            response.raise_for_status()
            data = response.json()
            text = str(data["choices"][0]["message"]["content"] or "")
        except (httpx.HTTPError, KeyError, IndexError, ValueError) as exc:
            raise GeneratorError(f"The generation server at {self.base_url} failed: {exc}.") from exc
        usage = data.get("usage") or {}
        return Generation(
            text=text.split("\n", 1)[0].strip(),
            tokens=int(usage.get("completion_tokens") or 0),
            seconds=time.perf_counter() - started,
            prompt_tokens=int(usage.get("prompt_tokens") or 0),
        )
