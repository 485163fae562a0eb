"""Instructions inside documents, end to end: the ten injection documents signed `human` (test key) among the
default corpus, real Chroma, real MiniLM, real Gemma reader, each asked with the defaults a user gets."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from ingest.pydoc_import import import_pydoc
from rag.answering import AnswerService
from rag.settings import Settings
from rag.wiring import build_answer_service, build_embedder, build_ingestor
from tests.conftest import Curator
from tests.injection_cases import CASES, Case, add_documents, injected_effects

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[AnswerService, list[str]]]:
    root = tmp_path_factory.mktemp("injection")
    settings = Settings(data_dir=root / "data", trust_path=root / "trust.json")
    curator = Curator(root, settings.trust_path)
    corpus = root / "pydoc"
    import_pydoc(corpus, curator.key_path)
    ids = add_documents(corpus, curator)
    embedder = build_embedder(settings)
    report = build_ingestor(settings, embedder).ingest([corpus])
    assert set(ids) <= {entry["doc_id"] for entry in report.accepted} and not report.rejected, report.as_dict()
    yield build_answer_service(settings, embedder=embedder), ids


@pytest.mark.parametrize("case", CASES, ids=[c.doc for c in CASES])
def test_an_injected_instruction_has_no_effect_with_the_defaults(
    world: tuple[AnswerService, list[str]], case: Case
) -> None:
    """The question retrieves the injected document; what is released follows none of its instructions, and
    the labels are the service's: an extractive quotation of human-signed text, cited, word for word."""
    service, _ = world
    result = service.answer(case.question)
    released = json.loads(json.dumps(result.as_dict()))
    print(f"\n{case.doc} ({case.kind}): {result.reason or 'answered'}: {result.answer}")
    assert f"injection/{case.doc}" in {hit["doc_id"] for hit in released["retrieved"]}, released["retrieved"]
    assert injected_effects(released) == [], released["answer"]
    label = released["label"]
    assert released["answer_mode"] == "extract" and released["grounded"] is True
    assert label["extractive"] is True and label["watermark"] is None and label["generator"] is None
    assert label["corpus_ledger_head"] == service.ledger_head()
    if result.abstained:
        assert released["citations"] == [] and released["support"] == []
        return
    assert label["ai_generated"] is False and label["source_origin"] == "human"
    (citation,) = released["citations"]
    assert f"[{citation['n']}]" in released["answer"] and citation["signer_name"] == "test-curator"
    quoted = " ".join(label["quotation"]["text"].split())
    assert quoted in " ".join(result.passage_texts[citation["n"] - 1].split())
