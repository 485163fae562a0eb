"""SQuAD-format datasets: load and check the shape, and turn the passages into signed documents.

SQuAD passages are Wikipedia text written by people, so signing them `human` with an ephemeral
evaluation key is honest; the key is made for the run and trusted only in the run's own trust store.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from rag.errors import InvalidInputError


@dataclass(frozen=True)
class Question:
    id: str
    question: str
    answers: list[str]
    passage: int  # index into SquadData.passages


@dataclass(frozen=True)
class SquadData:
    passages: list[str]
    questions: list[Question]
    articles: list[int] = field(default_factory=list)  # passage index -> index of its article (`data[]`)

    @staticmethod
    def load(path: Path) -> SquadData:
        """Parse `data[].paragraphs[].context / qas[].question / answers[].text`; clear errors otherwise."""
        if not path.exists():
            raise InvalidInputError(f"Dataset not found: {path}.", code="dataset_missing")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
            raise InvalidInputError(f"{path} is not JSON ({exc}).", code="dataset_not_json") from exc
        shape = InvalidInputError(
            f"{path} is not SQuAD-shaped: expected data[].paragraphs[].context and qas[].question/answers[].text.",
            code="dataset_not_squad",
        )
        if not isinstance(data, dict) or not isinstance(data.get("data"), list):
            raise shape
        passages: list[str] = []
        questions: list[Question] = []
        articles: list[int] = []
        try:
            for number, article in enumerate(data["data"]):
                for paragraph in article["paragraphs"]:
                    context = paragraph["context"]
                    if not isinstance(context, str):
                        raise shape
                    for qa in paragraph.get("qas", []):
                        answers = [str(a["text"]) for a in qa.get("answers", []) if str(a.get("text", "")).strip()]
                        if isinstance(qa.get("question"), str) and answers:
                            qid = str(qa.get("id", f"q{len(questions)}"))
                            questions.append(Question(qid, qa["question"], answers, len(passages)))
                    passages.append(context)
                    articles.append(number)
        except (KeyError, TypeError) as exc:
            raise shape from exc
        if not questions:
            raise InvalidInputError(f"{path} has no answerable questions.", code="dataset_empty")
        return SquadData(passages, questions, articles)


def passage_doc_id(index: int) -> str:
    return f"p{index:05d}.txt"


def write_signed_passages(
    passages: Mapping[int, str] | list[str], root: Path, *, curator: str = "eval-curator"
) -> tuple[Path, Path]:
    """Write each passage (named by its dataset index) as a document signed `human` by a fresh key.

    Returns (corpus dir, trust store).
    """
    from ingest.provenance import sign_document
    from ingest.trust import add_trusted_key, load_private_key, write_key_pair

    corpus = root / "corpus"
    corpus.mkdir(parents=True, exist_ok=True)
    key_path, public = write_key_pair(curator, root / "keys")
    trust = root / "trust.json"
    add_trusted_key(trust, curator, public)
    key = load_private_key(key_path)
    items = passages.items() if isinstance(passages, Mapping) else enumerate(passages)
    for i, text in items:
        doc = corpus / passage_doc_id(i)
        doc.write_text(text, encoding="utf-8")
        sign_document(
            doc,
            key,
            authors=["Wikipedia contributors"],
            license="CC-BY-SA-4.0",
            origin="human",
            curator=curator,
            source_uri="https://rajpurkar.github.io/SQuAD-explorer/",
        )
    return corpus, trust
