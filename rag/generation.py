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


class GeneratorError(BackendUnavailableError):
    code = "generator_failed"


def build_prompt(question: str, passages: Sequence[str] | None) -> str:
    """Completion prompt with numbered passages (DESIGN.md: better than chat templates for both models).

    `passages=None` is the ungrounded prompt used by evaluation: same format, no context.
    """
    if passages is None:
        q, a = _EXAMPLE_CLOSED_BOOK
        return (
            f"Answer each question with a short phrase.\n\nQuestion: {q}\nAnswer: {a}\n\n"
            f"Question: {' '.join(question.split())}\nAnswer:"
        )
    numbered = "\n".join(f"[{n}] {' '.join(text.split())}" for n, text in enumerate(passages, start=1) if text.strip())
    return (
        "Answer each question with a short phrase copied from the context.\n\n"
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

    def __init__(self, name: str, settings: GeneratorSettings, watermark: WatermarkSettings, cache_root: Path) -> None:
        from rag.models import model_spec

        self.spec = model_spec(name)
        self.settings = settings
        self.watermark = watermark
        self.cache_root = cache_root
        self._model: Any = None
        self._tokenizer: Any = None
        self._lock = threading.Lock()

    @property
    def model_id(self) -> str:
        return f"{self.spec.name} ({self.spec.description}, transformers gguf_file)"

    @property
    def tokenizer(self) -> Any:
        self.warm_up()
        return self._tokenizer

    def warm_up(self) -> None:
        with self._lock:
            if self._model is not None:
                return
            import torch

            from rag.models import load_model

            if self.settings.threads:
                torch.set_num_threads(self.settings.threads)
            try:
                self._model, self._tokenizer = load_model(self.spec.name, self.cache_root)
                if self.settings.quantize == "int8-head":
                    self._model.lm_head = _int8_linear(self._model.lm_head)
            except BackendUnavailableError:
                raise
            except Exception as exc:
                raise GeneratorError(f"Could not load {self.spec.name}: {exc}.") from exc

    def stream(
        self,
        question: str,
        passages: Sequence[str] | None,
        *,
        mode: AnswerMode = "free",
        max_new_tokens: int | None = None,
    ) -> Iterator[str]:
        """Yield the answer's text as it is generated (one line at most)."""
        self.warm_up()
        generation: dict[str, Any] = {}
        pieces = self._start(question, passages, mode, max_new_tokens, generation)
        emitted = ""
        for piece in pieces:
            if "\n" in piece:
                piece = piece.split("\n", 1)[0]
                if piece:
                    emitted += piece
                    yield piece
                break
            emitted += piece
            yield piece
        generation["thread"].join()
        if "error" in generation:
            raise GeneratorError(f"Generation failed: {generation['error']}.")

    def generate(
        self,
        question: str,
        passages: Sequence[str] | None,
        *,
        mode: AnswerMode = "free",
        max_new_tokens: int | None = None,
    ) -> Generation:
        self.warm_up()
        started = time.perf_counter()
        generation: dict[str, Any] = {}
        text = "".join(self._start(question, passages, mode, max_new_tokens, generation))
        generation["thread"].join()
        if "error" in generation:
            raise GeneratorError(f"Generation failed: {generation['error']}.")
        return Generation(
            text=text.split("\n", 1)[0].strip(),
            tokens=int(generation.get("new_tokens", 0)),
            seconds=time.perf_counter() - started,
            prompt_tokens=int(generation.get("prompt_tokens", 0)),
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
        encoded = tokenizer(prompt, return_tensors="pt", return_offsets_mapping=mode == "quote")
        input_ids = encoded["input_ids"]
        newline_ids = [i for i in tokenizer.encode("\n", add_special_tokens=False)]
        stop_ids = [*newline_ids, *_as_list(tokenizer.eos_token_id)]

        class _StopAtNewline(StoppingCriteria):
            def __init__(self, prompt_len: int) -> None:
                self.prompt_len = prompt_len

            def __call__(self, ids: Any, scores: Any, **kwargs: Any) -> Any:
                done = ids.shape[1] > self.prompt_len and "\n" in tokenizer.decode(ids[0, -1:])
                return torch.full((ids.shape[0],), done, dtype=torch.bool)

        processors = LogitsProcessorList()
        if mode == "quote":
            assert passages is not None
            spans = _passage_token_spans(prompt, encoded["offset_mapping"][0].tolist(), passages)
            processors.append(QuoteLogitsProcessor(input_ids[0].tolist(), spans, stop_ids))
        streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
        kwargs: dict[str, Any] = {
            "input_ids": input_ids,
            "attention_mask": encoded["attention_mask"],
            "max_new_tokens": max_new_tokens or self.settings.max_new_tokens,
            "do_sample": False,
            "logits_processor": processors,
            "stopping_criteria": StoppingCriteriaList([_StopAtNewline(input_ids.shape[1])]),
            "streamer": streamer,
            "pad_token_id": tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stop_ids[-1],
        }
        if self.watermark.bias > 0:
            kwargs["watermarking_config"] = watermarking_config(self.watermark)
        out["prompt_tokens"] = int(input_ids.shape[1])

        def run() -> None:
            try:
                with torch.inference_mode():
                    result = self._model.generate(**kwargs)
                out["new_tokens"] = int(result.shape[1] - input_ids.shape[1])
            except Exception as exc:  # reported by the caller, after the streamer ends
                log.exception("generation failed")
                out["error"] = str(exc)
                streamer.end()

        out["thread"] = threading.Thread(target=run, name="generate", daemon=True)
        out["thread"].start()
        return iter(streamer)


def _int8_linear(layer: Any) -> Any:
    """Dynamic per-channel int8 copy of one Linear layer (the 262k-row output layer dominates decoding)."""
    import warnings

    import torch
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch marks eager quantisation as deprecated
        wrapped = quantize_dynamic(torch.nn.Sequential(layer), {torch.nn.Linear: per_channel_dynamic_qconfig})
    return wrapped[0]


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
        body = " ".join(text.split())
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
            with httpx.Client(transport=self.transport, timeout=self.settings.timeout_s) as client:
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
