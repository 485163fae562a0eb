"""Generator plumbing without model weights: prompts, the quote processor, the remote backend."""

from __future__ import annotations

import json

import httpx
import pytest
import torch

from rag.errors import InvalidInputError
from rag.generation import GeneratorError, OpenAICompatibleGenerator, QuoteLogitsProcessor, build_prompt
from rag.settings import GeneratorSettings


def test_prompt_numbers_passages_and_keeps_numbering_when_one_is_empty() -> None:
    prompt = build_prompt("Where?", ["First  passage.", "", "Third\npassage."])
    assert (
        "[1] First passage." in prompt
        and "[3] Third passage." in prompt  # whitespace collapsed
        and "[2]" not in prompt.split("Context:")[-1]
    )
    assert prompt.endswith("Question: Where?\nAnswer:")
    assert "Context" not in build_prompt("Where?", None)


def test_quote_processor_only_allows_continuations_of_passage_spans() -> None:
    # prompt ids: 9 9 | passage 1 2 3 | 9 | passage 4 2 5 | 9  (spans [2,5) and [6,9))
    prompt = [9, 9, 1, 2, 3, 9, 4, 2, 5, 9]
    processor = QuoteLogitsProcessor(prompt, [(2, 5), (6, 9)], stop_ids=[0])

    def allowed(generated: list[int]) -> set[int]:
        scores = processor(torch.tensor([prompt + generated]), torch.zeros(1, 12))
        return {i for i in range(12) if scores[0, i] > float("-inf")}

    assert allowed([]) == {1, 2, 3, 4, 5}  # any passage token may start; no stop before a token
    assert allowed([2]) == {3, 5, 0}  # "2" continues as "3" (span 1) or "5" (span 2), or stops
    assert allowed([2, 5]) == {0}  # span 2 ends: only stopping is left


def completion(text: str) -> httpx.Response:
    return httpx.Response(200, json={"choices": [{"message": {"content": text}}], "usage": {"completion_tokens": 3}})


def test_remote_generator_speaks_the_openai_protocol() -> None:
    seen: list[dict[str, object]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(json.loads(request.content))
        assert request.url.path == "/v1/chat/completions" and request.headers["authorization"] == "Bearer k"
        return completion("the North Sea\nextra line")

    settings = GeneratorSettings(backend="openai", base_url="http://llm:8000/v1/", remote_model="m", api_key="k")
    generator = OpenAICompatibleGenerator(settings, transport=httpx.MockTransport(handler))
    result = generator.generate("Where?", ["The Rhine flows into the North Sea."])
    assert result.text == "the North Sea" and result.tokens == 3
    assert seen[0]["model"] == "m" and seen[0]["temperature"] == 0
    assert generator.watermarked is False and generator.model_id == "openai-compatible:m@http://llm:8000/v1"
    with pytest.raises(InvalidInputError):
        generator.generate("Where?", ["x"], mode="quote")


def test_remote_failure_is_a_generator_error() -> None:
    settings = GeneratorSettings(backend="openai", base_url="http://llm:8000/v1")
    failing = OpenAICompatibleGenerator(settings, transport=httpx.MockTransport(lambda r: httpx.Response(500)))
    with pytest.raises(GeneratorError) as err:
        failing.generate("Where?", ["x"])
    assert err.value.code == "generator_failed" and err.value.http_status == 503
    with pytest.raises(InvalidInputError):
        OpenAICompatibleGenerator(GeneratorSettings(backend="openai"))


def test_compact_token_table_keeps_the_tiny_models_outputs() -> None:
    import torch
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    from rag.generation import _compact_token_table

    torch.manual_seed(0)
    config = Gemma3TextConfig(
        vocab_size=512,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=32,
        tie_word_embeddings=True,
    )
    model = Gemma3ForCausalLM(config).eval()
    ids = torch.randint(0, 512, (1, 24))
    with torch.inference_mode():
        before_embed = model.get_input_embeddings()(ids)
        before = model(ids).logits
    _compact_token_table(model)
    with torch.inference_mode():
        after_embed = model.get_input_embeddings()(ids)
        after = model(ids).logits
    assert model.config.tie_word_embeddings is False
    assert not any(p.shape == (512, 64) and p.dtype == torch.float32 for p in model.parameters())  # table freed
    assert torch.nn.functional.cosine_similarity(before_embed, after_embed, dim=-1).min() > 0.999
    assert torch.nn.functional.cosine_similarity(before, after, dim=-1).min() > 0.99
    assert torch.equal(before.argmax(-1), after.argmax(-1))  # the rescored top tokens are exact


def test_malloc_arena_cap_applies_on_glibc() -> None:
    import platform

    from rag.runtime import limit_malloc_arenas

    applied = limit_malloc_arenas()
    assert applied is (platform.libc_ver()[0] == "glibc")


def test_confidence_is_the_models_log_probability_of_each_emitted_token() -> None:
    import torch

    from rag.generation import _ChosenLogProb

    sink: list[float] = []
    record = _ChosenLogProb(sink)
    first, second = torch.tensor([[0.0, 2.0, 0.0]]), torch.tensor([[1.0, 1.0, 1.0]])
    assert record(torch.tensor([[5, 6]]), first) is first  # scores pass through unchanged
    # A later processor (the watermark) made decoding pick token 2, not the arg-max 1: the
    # confidence is the model's own log-probability of token 2.
    record(torch.tensor([[5, 6, 2]]), second)
    record.finish(0)
    expected = [first[0].log_softmax(-1)[2].item(), second[0].log_softmax(-1)[0].item()]
    assert sink == pytest.approx(expected)
    record.finish(1)  # nothing pending: nothing recorded twice
    assert len(sink) == 2
