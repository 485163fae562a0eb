"""What the answering service returns: the answer, its citations and support, and the safe views of it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from rag.grounding import SentenceSupport
from rag.types import AnswerMode

ABSTAIN_MESSAGE = "I can't answer that from the verified knowledge base: none of its signed sources supports an answer."
# Heads the text of every ungrounded answer (evaluation, `rag ask --no-grounding`, or an HTTP endpoint an
# operator opened with RAG_ANSWER__ALLOW_UNGROUNDED): a reader that ignores every label still sees it.
UNCHECKED_LABEL = "[unchecked, not grounded]"
EXCERPT_CHARS = 300


@dataclass(frozen=True)
class Citation:
    n: int
    doc_id: str
    title: str
    path: str
    chunk_id: str
    chunk_sha256: str
    signer_name: str
    signer_keyid: str
    license: str
    origin: str
    score: float
    excerpt: str

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class Answer:
    question: str
    answer: str
    abstained: bool
    reason: str | None
    citations: list[Citation]
    support: list[SentenceSupport]
    label: dict[str, Any]
    timings: dict[str, float]
    answer_mode: AnswerMode
    grounded: bool
    raw: str = ""
    # What the service knows about how sure it is: the reader's mean token log-probability (extract mode:
    # the span's log-probability, its probability and its gain), the lowest support score of a released
    # sentence, and the best passage's cosine. Evaluation ranks by these.
    confidence: dict[str, float | None] = field(default_factory=dict)
    retrieved: list[dict[str, Any]] = field(default_factory=list)
    passage_texts: list[str] = field(default_factory=list)  # numbered as in the prompt; not serialised

    @property
    def text(self) -> str:
        """The answer without citation markers or the unchecked label (what evaluation scores)."""
        return " ".join(s.sentence for s in self.support if s.supported) if self.grounded else self.raw

    @property
    def released(self) -> list[SentenceSupport]:
        """Support of the sentences the answer holds: the kept ones, none when it abstained."""
        return [] if self.abstained else [s for s in self.support if s.supported]

    def rejected_summary(self) -> dict[str, Any]:
        """How many checked sentences were not released, by reason code; never their text."""
        reasons: dict[str, int] = {}
        for support in self.support:
            if support.supported and not self.abstained:
                continue
            code = rejection_code(support)
            reasons[code] = reasons.get(code, 0) + 1
        return {"count": sum(reasons.values()), "reasons": reasons}

    def as_dict(self) -> dict[str, Any]:
        """What may leave the service: released sentences only, rejected ones as a count and reason codes."""
        return {
            "question": self.question,
            "answer": self.answer,
            "abstained": self.abstained,
            "reason": self.reason,
            "citations": [c.as_dict() for c in self.citations],
            "support": [s.as_dict() for s in self.released],
            "rejected": self.rejected_summary(),
            "label": self.label,
            "timings": self.timings,
            "answer_mode": self.answer_mode,
            "grounded": self.grounded,
            "confidence": self.confidence,
            "retrieved": self.retrieved,
        }

    def as_diagnostic_dict(self) -> dict[str, Any]:
        """In-process only (`rag ask --explain`, evaluation): every checked sentence and the unchecked raw text.

        Never serialise this over HTTP: it holds text the check rejected."""
        return {**self.as_dict(), "support": [s.as_dict() for s in self.support], "raw": self.raw}


def rejection_code(support: SentenceSupport) -> str:
    """Why a checked sentence was not released (a stable code)."""
    if support.restates_question:
        return "restates_question"
    if support.supported:  # it passed, but the answer was withheld (a later check failed)
        return "withheld"
    return support.reason or "unsupported"


@dataclass(frozen=True)
class Delta:
    """Text that has passed the checks and may be shown (streaming)."""

    text: str
