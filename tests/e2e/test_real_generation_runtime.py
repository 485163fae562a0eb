"""The OpenVINO runtime with the real Gemma 3 270M: it answers as the torch runtime does, and its text carries
the watermark (the loop guard's detector finds it in a long generation)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from rag.evaluation.metrics import token_f1
from rag.generation import LocalGenerator, watermarking_config
from rag.settings import Settings
from rag.watermark import WatermarkCheck
from tests.conftest import pydoc_text

pytestmark = pytest.mark.slow

SQUAD = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "squad_dev_v1.1.json"


def prompts() -> list[tuple[str, str, str]]:
    """(question, passage, mode): a human-written passage from the Python reference in quote mode, and the first
    SQuAD dev questions with their gold passage (when the shared data is there) in free mode."""
    asked = [("What does the pass statement do when it is executed?", pydoc_text("pass")[:1200], "quote")]
    if SQUAD.exists():
        from rag.evaluation.squad import SquadData

        data = SquadData.load(SQUAD)
        asked += [(q.question, data.passages[q.passage], "free") for q in data.questions[:3]]
    return asked


@pytest.fixture(scope="module")
def generators() -> dict[str, LocalGenerator]:
    settings = Settings()
    made = {}
    for runtime in ("torch", "openvino"):
        config = settings.generator.model_copy(update={"runtime": runtime})
        made[runtime] = LocalGenerator(config.model, config, settings.watermark, settings.model_cache_dir)
        made[runtime].warm_up()
    return made


def test_openvino_answers_as_torch_does_with_the_watermark_on(generators: dict[str, LocalGenerator]) -> None:
    asked = prompts()
    same = 0
    for question, passage, mode in asked:
        torch_answer = generators["torch"].generate(question, [passage], mode=mode).text  # type: ignore[arg-type]
        ov_answer = generators["openvino"].generate(question, [passage], mode=mode).text  # type: ignore[arg-type]
        assert ov_answer, (question, mode)
        same += ov_answer == torch_answer
        assert token_f1(ov_answer, torch_answer) >= 0.5, (question, torch_answer, ov_answer)
    assert same >= len(asked) - 1, same  # int8 weights may flip a near-tie, not more


def test_a_long_openvino_generation_carries_the_watermark(generators: dict[str, LocalGenerator]) -> None:
    import torch

    settings = Settings()
    local = generators["openvino"]
    # Prose to continue (a question-answer prompt makes the 270M model list numbers, which the detector skips).
    prompt = "The Python language reference describes the syntax and the core semantics of the language. In this essay"
    ids = local.tokenizer(prompt, return_tensors="pt")["input_ids"]
    check = WatermarkCheck(settings.watermark, settings.model_cache_dir, ("gemma3-270m",))

    def z_score(**watermark: Any) -> float:
        with torch.inference_mode():
            out: Any = local._driver.generate(
                input_ids=ids,
                max_new_tokens=300,
                min_new_tokens=300,
                do_sample=False,
                pad_token_id=0,
                no_repeat_ngram_size=3,  # greedy decoding of a 270M model loops; a loop repeats its pairs
                **watermark,
            )
        text = local.tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)
        detection = check.scores(text)[0]
        assert detection.scored_tokens >= 100, (detection, text[:200])
        return detection.z_score

    assert z_score(watermarking_config=watermarking_config(settings.watermark)) > settings.watermark.z_threshold
    assert z_score() < settings.watermark.z_threshold  # the same decoding without the watermark
