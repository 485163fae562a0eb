"""The generator's runtime: which model generates, where the OpenVINO export is cached, and that a real export of
tiny random models decodes exactly as torch does, watermark and quote mode included (no model weights needed)."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

from rag import ov_generation
from rag.generation import LocalGenerator
from rag.models import MODELS, ModelSpec
from rag.settings import GeneratorSettings, Settings, WatermarkSettings


class FakeModel:
    """Stands for a loaded model; only its identity matters here."""

    def __init__(self, name: str) -> None:
        self.name = name


@pytest.fixture
def loads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record every model load instead of loading: 'openvino' or 'torch'."""
    seen: list[str] = []

    def load_openvino(name: str, cache_root: Path, weights: str, *, threads: int | None = None) -> tuple[Any, Any]:
        seen.append("openvino")
        return FakeModel(f"openvino-{weights}"), "openvino tokenizer"

    def load_torch(self: LocalGenerator) -> Any:
        seen.append("torch")
        self._tokenizer = self._tokenizer or "torch tokenizer"
        return FakeModel("torch")

    monkeypatch.setattr(ov_generation, "load", load_openvino)
    monkeypatch.setattr(LocalGenerator, "_load_torch", load_torch)
    return seen


def generator(runtime: str, **settings: Any) -> LocalGenerator:
    config = GeneratorSettings(runtime=runtime, **settings)  # type: ignore[arg-type]
    return LocalGenerator("gemma3-270m", config, WatermarkSettings(), Path("unused"))


def test_the_runtime_is_a_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    assert GeneratorSettings().runtime in ("openvino", "torch")
    monkeypatch.setenv("RAG_GENERATOR__RUNTIME", "torch")
    monkeypatch.setenv("RAG_GENERATOR__OPENVINO_WEIGHTS", "int4")
    settings = Settings()
    assert settings.generator.runtime == "torch" and settings.generator.openvino_weights == "int4"


def test_openvino_generates_and_the_torch_model_loads_only_when_asked_for(loads: list[str]) -> None:
    local = generator("openvino", openvino_weights="int4")
    local.warm_up()
    local.warm_up()
    assert loads == ["openvino"] and local._driver.name == "openvino-int4"
    assert local.tokenizer == "openvino tokenizer"
    assert "OpenVINO int4" in local.model_id

    model, tokenizer = local.torch_model()  # the extractive reader's and the detector's forward passes
    assert model.name == "torch" and tokenizer == "openvino tokenizer"
    assert local._model is model and local.torch_model()[0] is model
    assert loads == ["openvino", "torch"]  # loaded once, and generation still runs on OpenVINO
    assert local._driver.name == "openvino-int4"


def test_torch_generates_with_the_model_it_hands_out(loads: list[str]) -> None:
    local = generator("torch")
    model, _ = local.torch_model()
    assert loads == ["torch"] and local._driver is model and local._model is model
    assert "transformers gguf_file" in local.model_id


def test_a_model_handed_over_directly_generates_whatever_the_runtime(loads: list[str]) -> None:
    local = generator("openvino")
    local._model = FakeModel("given")
    local.warm_up()
    assert loads == [] and local._driver.name == "given"


# --- the saved export ---------------------------------------------------------------------------------------------


@pytest.fixture
def gguf(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "model.gguf"
    path.write_bytes(b"GGUF")
    monkeypatch.setitem(MODELS, "gemma3-270m", ModelSpec("gemma3-270m", "test", lambda: path))
    return path


def fake_build(calls: list[Path]) -> Any:
    def build(out: Path) -> None:
        calls.append(out)
        (out / "model.xml").write_text("<net/>")

    return build


def test_the_export_is_built_once_and_reused(tmp_path: Path, gguf: Path) -> None:
    calls: list[Path] = []
    first = ov_generation.saved_model("gemma3-270m", tmp_path, "int8", build=fake_build(calls))
    again = ov_generation.saved_model("gemma3-270m", tmp_path, "int8", build=fake_build(calls))
    assert first == again and len(calls) == 1
    assert first.parent == tmp_path / "openvino" and first.name.startswith("gemma3-270m-int8-")
    assert (first / "identity.json").exists() and (first / "model.xml").exists()
    assert not [p for p in first.parent.iterdir() if ".tmp" in p.name]


def test_other_weights_or_another_model_file_build_another_export(tmp_path: Path, gguf: Path) -> None:
    calls: list[Path] = []
    int8 = ov_generation.saved_model("gemma3-270m", tmp_path, "int8", build=fake_build(calls))
    int4 = ov_generation.saved_model("gemma3-270m", tmp_path, "int4", build=fake_build(calls))
    gguf.write_bytes(b"GGUF, another version")
    changed = ov_generation.saved_model("gemma3-270m", tmp_path, "int8", build=fake_build(calls))
    assert len({int8, int4, changed}) == 3 and len(calls) == 3


def test_a_failed_build_leaves_no_model(tmp_path: Path, gguf: Path) -> None:
    def broken(out: Path) -> None:
        (out / "model.xml").write_text("<half")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        ov_generation.saved_model("gemma3-270m", tmp_path, "int8", build=broken)
    assert [p.name for p in (tmp_path / "openvino").iterdir()] == ["build.lock"]
    calls: list[Path] = []
    assert (ov_generation.saved_model("gemma3-270m", tmp_path, "int8", build=fake_build(calls)) / "model.xml").exists()


def test_concurrent_first_starts_build_once(tmp_path: Path, gguf: Path) -> None:
    calls: list[Path] = []
    gate = threading.Event()

    def slow(out: Path) -> None:
        gate.wait(5)
        fake_build(calls)(out)

    results: list[Path] = []
    threads = [
        threading.Thread(
            target=lambda: results.append(ov_generation.saved_model("gemma3-270m", tmp_path, "int8", build=slow))
        )
        for _ in range(3)
    ]
    for thread in threads:
        thread.start()
    gate.set()
    for thread in threads:
        thread.join(10)
    assert len(calls) == 1 and len(set(results)) == 1 and len(results) == 3


# --- a real export of tiny random models --------------------------------------------------------------------------


def tiny_tokenizer() -> Any:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.WordLevel({f"w{i}": i for i in range(512)}, unk_token="w0"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=core, unk_token="w0", pad_token="w0", eos_token="w1")


def tiny_model(kind: str) -> Any:
    import torch
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)  # weights spread wider than the default's: random models' near-ties flip on float noise
    if kind == "llama":  # SmolLM2's architecture
        llama = LlamaConfig(
            vocab_size=512,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            initializer_range=0.2,
        )
        return LlamaForCausalLM(llama).eval()
    # Gemma 3 with a sliding window far shorter than the prompt, so the window's mask matters.
    gemma = Gemma3TextConfig(
        vocab_size=512,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=3,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=32,
        sliding_window=8,
        layer_types=["sliding_attention", "full_attention", "sliding_attention"],
        initializer_range=0.2,
    )
    return Gemma3ForCausalLM(gemma).eval()


@pytest.mark.parametrize("kind", ["gemma", "llama"])
def test_an_exported_model_decodes_as_torch_does(kind: str) -> None:
    import openvino as ov

    torch_model, tokenizer = tiny_model(kind), tiny_tokenizer()
    compiled = ov.Core().compile_model(ov_generation.export(torch_model), "CPU", ov_generation.compile_config(1, "f32"))
    openvino_model = ov_generation.openvino_causal_lm_class()(torch_model.config, compiled)
    openvino_model.generation_config = torch_model.generation_config

    def answers(runtime: str, model: Any) -> list[tuple[str, int, float | None]]:
        local = generator(runtime, max_new_tokens=24)
        local._model, local._tokenizer = model, tokenizer  # handed over: no loading
        out = []
        question = " ".join(f"w{i}" for i in range(40, 52))
        passages = [" ".join(f"w{i}" for i in range(60, 90)), "w5 w6 w7 w8 w9"]
        for mode in ("free", "quote"):
            text = local.generate(question, passages, mode=mode).text  # type: ignore[arg-type]
            out.append((text, local.last_tokens, local.last_logprob))
        return out

    expected, got = answers("torch", torch_model), answers("openvino", openvino_model)
    for (text, tokens, logprob), (ov_text, ov_tokens, ov_logprob) in zip(expected, got, strict=True):
        assert (ov_text, ov_tokens) == (text, tokens) and tokens > 0
        assert ov_logprob == pytest.approx(logprob, abs=1e-4)
    passage_words = {f"w{i}" for i in range(60, 90)} | {"w5", "w6", "w7", "w8", "w9"}
    assert set(got[1][0].split()) <= passage_words  # quote mode quoted
