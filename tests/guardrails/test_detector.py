"""The synthetic-text score (Fast-DetectGPT, analytic) on a tiny hand-made model, and the ingest policy."""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import torch

from ingest.admit import AdmittedDigests, admit
from ingest.ledger import Ledger
from ingest.pipeline import Ingestor
from rag.errors import NotFoundError
from rag.guardrails.detector import (
    FAILED,
    REASON,
    FastDetectScorer,
    SyntheticTextCheck,
    TokenStats,
    coverage,
    token_stats,
    windows,
)
from rag.settings import DetectorSettings, Settings
from tests.conftest import Curator
from tests.fakes import FakeEmbedder, InMemoryStore

# Every position predicts token 0 with p = 1/2 and tokens 1 and 2 with p = 1/4 each. By hand, in units of ln 2:
# mu = -(1/2)(1) - (1/2)(2) = -1.5; E[lp^2] = (1/2)(1) + (1/2)(4) = 2.5; var = 2.5 - 2.25 = 0.25.
ROW = [math.log(0.5), math.log(0.25), math.log(0.25)]
LN2 = math.log(2)


class FakeScoringModel:
    """Words starting with "m" are token 0 (what the model expects), any other word token 1 (a surprise)."""

    name = "fake"
    bos_id: int | None = None

    def __init__(self) -> None:
        self.calls = 0

    def encode(self, text: str) -> list[int]:
        return [0 if word.startswith("m") else 1 for word in text.split()]

    def logit_slices(self, ids: Sequence[int]) -> Iterator[tuple[int, Any]]:
        self.calls += 1
        rows = torch.tensor([ROW] * len(ids)) + 7.0  # a shift of the logits changes no probability
        yield 0, rows[:2]
        yield 2, rows[2:]


def test_token_stats_match_the_hand_computed_moments() -> None:
    stats = token_stats(torch.tensor([ROW, ROW]), torch.tensor([0, 1]))
    assert stats.tokens == 2
    assert stats.ll == pytest.approx(-3 * LN2)
    assert stats.mu == pytest.approx(-3 * LN2)
    assert stats.var == pytest.approx(0.5 * LN2**2)
    # An expected token scores (−1 + 1.5) / 0.5 = +1 above the model's own expectation, a surprise −1.
    assert token_stats(torch.tensor([ROW]), torch.tensor([0])).criterion == pytest.approx(1.0)
    assert token_stats(torch.tensor([ROW]), torch.tensor([2])).criterion == pytest.approx(-1.0)


def test_uniform_rows_have_no_variance_and_score_zero() -> None:
    stats = token_stats(torch.zeros(3, 4), torch.tensor([0, 1, 2]))
    assert stats.mu == pytest.approx(-3 * math.log(4))
    assert stats.var == pytest.approx(0.0, abs=1e-9) and stats.criterion == 0.0
    assert TokenStats().criterion == 0.0


def test_score_sums_over_positions_and_slices() -> None:
    scorer = FastDetectScorer(FakeScoringModel(), DetectorSettings(max_tokens=64, windows=1))
    # Without a BOS the first word is context; n expected tokens score (0.5 n) / sqrt(0.25 n) = sqrt(n).
    machine = scorer.score("m " * 10)
    assert machine.tokens == 9 and machine.score == pytest.approx(3.0)
    human = scorer.score("the " * 10)
    assert human.tokens == 9 and human.score == pytest.approx(-3.0)
    assert scorer.score("alone").tokens == 0 and scorer.score("").score == 0.0


def test_long_texts_are_scored_in_windows_spread_over_them() -> None:
    assert windows(list(range(10)), 4, 2) == [[0, 1], [8, 9]]  # more windows needed than allowed: spread
    assert windows(list(range(3)), 4, 2) == [[0, 1], [1, 2]]  # tiled whole, the last window ending at the end
    assert windows(list(range(2)), 4, 2) == [[0, 1]]
    assert windows(list(range(7)), 8, 4) == [[0, 1], [2, 3], [4, 5], [5, 6]]
    assert windows([], 4, 2) == []
    assert coverage(7, 8, 4) == 1.0 and coverage(100, 16, 2) == pytest.approx(0.16)
    scorer = FastDetectScorer(FakeScoringModel(), DetectorSettings(max_tokens=16, windows=2))
    scored = scorer.score("m " * 100)
    assert scored.tokens == 2 * 7  # two windows of 8, each with its first token as context
    assert scored.windows == 2 and scored.coverage == pytest.approx(0.16)


def test_machine_text_between_human_text_scores_as_its_window() -> None:
    """The score is the highest window's, over windows tiling the whole text: padding does not dilute it."""
    settings = DetectorSettings(max_tokens=2048, windows=16, threshold=1.5)  # windows of 128 tokens
    scorer = FastDetectScorer(FakeScoringModel(), settings)
    sandwich = "h " * 400 + "m " * 200 + "h " * 400
    scored = scorer.score(sandwich)
    assert scored.pooled < 0 < settings.threshold < scored.score  # pooled, the human text would hide it
    assert scored.flagged(settings.threshold) and scored.coverage == 1.0 and scored.windows == 8
    assert not scorer.score("h " * 1000).flagged(settings.threshold)


def test_quarantine_holds_machine_text_padded_with_human_text(
    settings: Settings, corpus: Path, curator: Curator
) -> None:
    ingestor, _ = build(settings, "quarantine")
    settings.detector.max_tokens, settings.detector.windows = 2048, 16
    notes = corpus / "notes.md"
    notes.write_text("# Notes\n\n" + "h " * 400 + "m " * 200 + "h " * 400 + "\n", encoding="utf-8")
    curator.sign(notes, origin="human-edited-ai", title="notes")
    report = ingestor.ingest([notes])
    assert [(r["doc_id"], r["reason"]) for r in report.rejected] == [("notes.md", REASON)]
    assert "8 windows" in report.rejected[0]["detail"] and "100% of the text" in report.rejected[0]["detail"]


def test_the_ledger_note_records_windows_and_coverage(settings: Settings, corpus: Path, curator: Curator) -> None:
    made_up(corpus / "notes.md", curator)
    ingestor, _ = build(settings, "flag")
    settings.detector.max_tokens, settings.detector.windows = 32, 2  # 62 words, 2 windows of 16: 32 / 62
    ingestor.ingest([corpus])
    note = live_entry(settings, "notes.md")["synthetic"]
    assert note["windows"] == 2 and note["coverage"] == pytest.approx(32 / 62, abs=1e-4)


class BrokenScorer:
    def score(self, text: str) -> Any:
        raise RuntimeError("model cache missing")


def test_a_detector_failure_under_flag_admits_and_records_the_error(
    settings: Settings, corpus: Path, curator: Curator, caplog: pytest.LogCaptureFixture
) -> None:
    settings.detector.policy = "flag"
    check = SyntheticTextCheck(settings.detector, BrokenScorer, AdmittedDigests(settings.ledger_path))  # type: ignore[arg-type]
    report = Ingestor(settings, InMemoryStore(), FakeEmbedder(), checks=[check]).ingest([corpus])
    assert not report.rejected and len(report.accepted) == 3
    assert live_entry(settings, "del.md")["synthetic"] == {"error": "RuntimeError: model cache missing"}
    assert "detector failed" in caplog.text


def test_a_detector_failure_under_quarantine_holds_only_that_document(
    settings: Settings, corpus: Path, curator: Curator
) -> None:
    settings.detector.policy = "quarantine"

    class FailsOnDel:
        def score(self, text: str) -> Any:
            if "del" in text:
                raise RuntimeError("out of memory")
            return FastDetectScorer(FakeScoringModel(), settings.detector).score(text)

    check = SyntheticTextCheck(settings.detector, FailsOnDel, AdmittedDigests(settings.ledger_path))  # type: ignore[arg-type]
    report = Ingestor(settings, InMemoryStore(), FakeEmbedder(), checks=[check]).ingest([corpus])
    assert [(r["doc_id"], r["reason"]) for r in report.rejected] == [("del.md", FAILED)]
    assert "out of memory" in report.rejected[0]["detail"] and len(report.accepted) == 2


# --- the ingest policy ---------------------------------------------------------------------------------


def made_up(path: Path, curator: Curator, words: str = "m ") -> Path:
    """A document we wrote for the test (so not signed as human), that the fake model finds predictable."""
    path.write_text("# Notes\n\n" + words * 60 + "\n", encoding="utf-8")
    curator.sign(path, origin="human-edited-ai", title="notes")
    return path


def build(settings: Settings, policy: str, model: FakeScoringModel | None = None) -> tuple[Ingestor, InMemoryStore]:
    settings.detector.policy = policy  # type: ignore[assignment]
    settings.detector.threshold = 0.5
    fake = model or FakeScoringModel()
    check = SyntheticTextCheck(
        settings.detector, lambda: FastDetectScorer(fake, settings.detector), AdmittedDigests(settings.ledger_path)
    )
    store = InMemoryStore()
    return Ingestor(settings, store, FakeEmbedder(), checks=[check]), store


def live_entry(settings: Settings, doc_id: str) -> dict[str, Any]:
    return Ledger(settings.ledger_path).live()[doc_id].entry


def test_flag_admits_and_marks(settings: Settings, corpus: Path, curator: Curator) -> None:
    made_up(corpus / "notes.md", curator)
    ingestor, store = build(settings, "flag")
    report = ingestor.ingest([corpus])
    assert not report.rejected and len(report.accepted) == 4
    assert live_entry(settings, "notes.md")["synthetic"]["flagged"] is True
    human = live_entry(settings, "del.md")["synthetic"]
    assert human["flagged"] is False and human["score"] < 0 and human["model"] == "fake"
    shown = {d["doc_id"]: d["synthetic"] for d in ingestor.documents()}
    assert shown["notes.md"]["score"] > 0.5 and shown["notes.md"]["threshold"] == 0.5
    assert any(c.doc_id == "notes.md" for c, _ in store.rows.values())


def test_off_scores_nothing(settings: Settings, corpus: Path, curator: Curator) -> None:
    made_up(corpus / "notes.md", curator)
    model = FakeScoringModel()
    ingestor, _ = build(settings, "off", model)
    assert len(ingestor.ingest([corpus]).accepted) == 4
    assert model.calls == 0 and "synthetic" not in live_entry(settings, "notes.md")


def test_quarantine_holds_until_a_curator_admits(settings: Settings, corpus: Path, curator: Curator) -> None:
    notes = made_up(corpus / "notes.md", curator)
    ingestor, store = build(settings, "quarantine")
    report = ingestor.ingest([corpus])
    (held,) = report.rejected
    assert held["doc_id"] == "notes.md" and held["reason"] == REASON and "rag admit" in held["detail"]
    assert all(c.doc_id != "notes.md" for c, _ in store.rows.values())
    assert list(Ledger(settings.ledger_path).entries())[-1]["reason"] == REASON
    with pytest.raises(NotFoundError):
        admit(ingestor, "del.md", curator="alice")

    done = admit(ingestor, "notes.md", curator="alice")
    assert done.recorded and [a["doc_id"] for a in done.report.accepted] == ["notes.md"]
    actions = [(e["action"], e.get("doc_id")) for e in Ledger(settings.ledger_path).entries()][-2:]
    assert actions == [("admit", "notes.md"), ("add", "notes.md")]
    note = live_entry(settings, "notes.md")["synthetic"]
    assert note["flagged"] is True and note["admitted_by_curator"] is True
    assert any(c.doc_id == "notes.md" for c, _ in store.rows.values())

    # The admission covers that text only: an edited version is a new decision, and is held again.
    made_up(notes, curator, words="m m more ")
    again = build(settings, "quarantine")[0].ingest([corpus])
    assert [(r["doc_id"], r["reason"]) for r in again.rejected] == [("notes.md", REASON)]
    assert [w["doc_id"] for w in again.withdrawn] == []  # the admitted version stays until a curator decides


def test_an_admission_is_of_one_text_under_one_id(settings: Settings, corpus: Path, curator: Curator) -> None:
    made_up(corpus / "notes.md", curator)
    ingestor, _ = build(settings, "quarantine")
    ingestor.ingest([corpus])
    admit(ingestor, "notes.md", curator="alice")
    check = SyntheticTextCheck(
        settings.detector,
        lambda: FastDetectScorer(FakeScoringModel(), settings.detector),
        AdmittedDigests(settings.ledger_path),
    )
    text = (corpus / "notes.md").read_text(encoding="utf-8")
    assert check.check(text, doc_id="notes.md") is None
    # The very same text under another id (or with none) is a new decision: held.
    assert (check.check(text, doc_id="copy.md") or ("",))[0] == REASON
    assert (check.check(text) or ("",))[0] == REASON


def test_admit_digests_the_file_not_the_quarantine_report(settings: Settings, corpus: Path, curator: Curator) -> None:
    from rag.errors import InvalidInputError

    notes = made_up(corpus / "notes.md", curator)
    ingestor, _ = build(settings, "quarantine")
    ingestor.ingest([corpus])
    # The report says another text was held (a tampered or stale file): the admission is refused.
    report = json.loads(settings.quarantine_path.read_text())
    for item in report.values():
        item["sha256"] = "0" * 64
    settings.quarantine_path.write_text(json.dumps(report))
    with pytest.raises(InvalidInputError, match="not the text that was held"):
        admit(ingestor, "notes.md", curator="alice")
    assert not [e for e in Ledger(settings.ledger_path).entries() if e["action"] == "admit"]
    # Restored, the recorded digest is the file's own.
    for item in report.values():
        item["sha256"] = hashlib.sha256(notes.read_bytes()).hexdigest()
    settings.quarantine_path.write_text(json.dumps(report))
    done = admit(ingestor, "notes.md", curator="alice")
    assert done.sha256 == hashlib.sha256(notes.read_bytes()).hexdigest()


def test_documents_lists_held_and_admit_refuses_what_is_not_held(
    settings: Settings, corpus: Path, curator: Curator
) -> None:
    from tests.ingest.test_cli import rag

    made_up(corpus / "notes.md", curator)
    build(settings, "flag")[0].ingest([corpus / "del.md"])
    build(settings, "quarantine")[0].ingest([corpus / "notes.md"])
    listed = rag("documents", "--json")
    assert listed.returncode == 0, listed.stderr
    status = {d["doc_id"]: (d["status"], (d.get("synthetic") or {}).get("flagged")) for d in json.loads(listed.stdout)}
    assert status == {"del.md": ("live", False), "notes.md": ("held", None)}
    table = rag("documents")
    assert "held: synthetic_suspected" in table.stdout and "1 held" in table.stdout
    refused = rag("admit", "del.md")
    assert refused.returncode == 2 and "not_held" in refused.stderr


# --- the real model ---------------------------------------------------------------------------------------


@pytest.mark.slow
def test_real_scores_separate_human_from_model_text(settings: Settings) -> None:
    """Human documentation scores below the threshold, Gemma's own greedy continuation above it."""
    from rag.guardrails.detector import load_scoring_model
    from tests.conftest import pydoc_text

    model = load_scoring_model(settings.detector, settings.model_cache_dir)
    scorer = FastDetectScorer(model, settings.detector)
    threshold = settings.detector.threshold
    for topic in ("assert", "del", "while"):
        human = scorer.score(pydoc_text(topic))
        assert human.tokens > 50 and human.score < threshold, (topic, human)

    from rag.models import load_model

    lm, tokenizer = load_model(settings.detector.model, settings.model_cache_dir)  # generates; the scorer is int8
    generated = []
    # Prompts written for this test: only the model's continuation is scored.
    for prompt in ("The history of the city begins in the Middle Ages, when", "A compiler translates a program"):
        ids = tokenizer(prompt, return_tensors="pt")
        with torch.inference_mode():
            out = lm.generate(**ids, do_sample=False, max_new_tokens=100, pad_token_id=tokenizer.eos_token_id)
        generated.append(tokenizer.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True))
    for text in generated:
        machine = scorer.score(text)
        assert machine.tokens > 50 and machine.score > threshold, (text[:80], machine)
