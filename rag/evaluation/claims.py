"""The claim in figures: of what a mode releases, how much is right, and how that trades against coverage.

- `correct`: the released answer contains a gold answer after the official SQuAD normalisation, or
  reaches token F1 ≥ 0.5 with one of them (a right answer worded more briefly or more fully).
- `precision`: correct / released, over answerable questions; `coverage`: released / answerable;
  `hallucination_withheld`: released / withheld (any answer there is unsupported by the corpus).
- Risk–coverage (selective prediction): the released answers to answerable questions, ordered by the
  mode's own confidence, best first. At coverage c = k / answerable, accuracy is the share correct of
  the k most confident. `aurc` is the mean selective risk (1 - accuracy) over k = 1..released (lower is
  better; 0 when every released answer is right, whatever the order), and `accuracy_at_half_coverage`
  the accuracy of the most confident answers that cover half of the answerable questions (None when
  the mode releases fewer than that).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from rag.evaluation.metrics import best_over_gold, contains_answer, normalize_answer, token_f1

CORRECT_F1 = 0.5
# Which confidence orders the released answers: the reader's mean token log-probability exists in
# every mode (grounded or not), so all three are ranked by the same kind of signal.
CONFIDENCE_SIGNAL = "reader_logprob"
SIGNALS = ("reader_logprob", "support", "retrieval")


def correct(text: str, golds: Sequence[str]) -> bool:
    """A released answer is right when it contains a gold answer, or overlaps one with F1 ≥ 0.5 while
    one's words are a subset of the other's (a shorter or fuller form of the same answer).

    The subset rule keeps a changed number, date or name from counting: "15 million" against
    "12 million" has F1 0.5 but says something else."""
    if not text.strip():
        return False
    if best_over_gold(contains_answer, text, golds):
        return True
    predicted = set(normalize_answer(text).split())
    for gold in golds:
        expected = set(normalize_answer(gold).split())
        if token_f1(text, gold) >= CORRECT_F1 and (predicted <= expected or expected <= predicted):
            return True
    return False


@dataclass(frozen=True)
class Released:
    """One released answer to an answerable question: was it right, and how sure was the system."""

    correct: bool
    confidence: float | None


def risk_coverage(items: Sequence[Released], answerable: int) -> list[tuple[float, float]]:
    """(coverage, accuracy) after each of the released answers, most confident first.

    An answer without a confidence ranks last; ties keep their order (the order of the records)."""
    if answerable <= 0:
        return []
    ranked = sorted(items, key=lambda r: (r.confidence is None, -(r.confidence or 0.0)))
    points, right = [], 0
    for k, item in enumerate(ranked, start=1):
        right += item.correct
        points.append((k / answerable, right / k))
    return points


def aurc(points: Sequence[tuple[float, float]], answerable: int | None = None) -> float | None:
    """Area under the risk–coverage curve (None when nothing was released).

    With `answerable`, the curve is taken over the whole coverage range: the questions the mode did
    not answer are appended last as errors, so a mode cannot lower its AURC by answering less (one
    right answer and nothing else is not a perfect score). Without it, the mean selective risk over
    the released answers alone."""
    if not points:
        return None
    risks = [1 - accuracy for _, accuracy in points]
    if answerable is not None and answerable > len(points):
        k, right = len(points), points[-1][1] * len(points)
        risks += [1 - right / n for n in range(k + 1, answerable + 1)]
    return round(sum(risks) / len(risks), 4)


def accuracy_at_coverage(points: Sequence[tuple[float, float]], coverage: float) -> float | None:
    """Accuracy of the most confident answers that reach `coverage`; None when the curve stops short."""
    for reached, accuracy in points:
        if reached >= coverage - 1e-9:
            return round(accuracy, 4)
    return None


def mode_claims(
    answerable: Sequence[dict[str, Any]], withheld: Sequence[dict[str, Any]], golds: Sequence[Sequence[str]]
) -> dict[str, Any]:
    """Precision, coverage, hallucination and risk–coverage for one mode's per-question records.

    `answerable[i]` is the mode's record for a question whose gold answers are `golds[i]`; a record has
    `text`, `abstained` and `confidence` (a dict of signals)."""
    released = [(record, gold) for record, gold in zip(answerable, golds, strict=True) if not record["abstained"]]
    right = [correct(record["text"], gold) for record, gold in released]
    out: dict[str, Any] = {
        "released_answerable": len(released),
        "precision": round(sum(right) / len(released), 4) if released else None,
        "coverage": round(len(released) / len(answerable), 4) if answerable else None,
        "hallucination_withheld": (
            round(sum(not r["abstained"] for r in withheld) / len(withheld), 4) if withheld else None
        ),
        "confidence_signal": CONFIDENCE_SIGNAL,
    }
    curves: dict[str, list[tuple[float, float]]] = {}
    for signal in SIGNALS:
        items = [
            Released(ok, (record.get("confidence") or {}).get(signal))
            for (record, _), ok in zip(released, right, strict=True)
        ]
        if signal != CONFIDENCE_SIGNAL and all(item.confidence is None for item in items):
            continue
        curves[signal] = risk_coverage(items, len(answerable))
    main = curves.get(CONFIDENCE_SIGNAL, [])
    ranked = any((record.get("confidence") or {}).get(CONFIDENCE_SIGNAL) is not None for record, _ in released)
    if not ranked:  # no confidence to rank by (e.g. a remote generator): no curve, rather than record order
        main, curves = [], {k: v for k, v in curves.items() if k != CONFIDENCE_SIGNAL}
    out["aurc"] = aurc(main, len(answerable))
    out["aurc_released"] = aurc(main)
    out["accuracy_at_half_coverage"] = accuracy_at_coverage(main, 0.5)
    out["aurc_by_signal"] = {signal: aurc(points, len(answerable)) for signal, points in curves.items()}
    out["risk_coverage"] = [[round(c, 4), round(a, 4)] for c, a in main]
    return out
