"""GET /metrics (issue 13, part 4): after real requests to a real server, the counters and histograms moved."""

from __future__ import annotations

from pathlib import Path

import httpx
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from ingest.ledger import Ledger
from rag.apikeys import ApiKeyStore
from rag.settings import Settings
from tests.api_curation import WHILE_QUESTION, WHILE_SENTENCE, curation_app, signed, upload_files
from tests.api_server import live_server
from tests.conftest import Curator


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of an exposition, by name and labels."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(scraped: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float:
    return scraped.get((name, frozenset(labels.items())), 0.0)


def test_counters_move_with_real_requests(settings: Settings, corpus: Path, curator: Curator, tmp_path: Path) -> None:
    document, manifest = signed(curator, tmp_path / "up", "while.md")
    bad_document = document.replace(b"repeated", b"single")
    with live_server(curation_app(settings, corpus), settings) as url, httpx.Client(base_url=url, timeout=30) as http:
        before = samples(http.get("/metrics").text)
        assert http.post("/v1/answer", json={"question": WHILE_QUESTION}).json()["abstained"]  # not in the corpus
        assert http.post("/v1/documents", files=upload_files("while.md", document, manifest)).status_code == 201
        assert http.post("/v1/documents", files=upload_files("while.md", bad_document, manifest)).status_code == 422
        answered = http.post("/v1/answer", json={"question": WHILE_QUESTION}).json()
        assert not answered["abstained"]
        assert http.get("/v1/documents/nothing.md").status_code == 404
        assert http.post("/v1/answer", content=b"x" * (settings.server.max_body_bytes + 1)).status_code == 413
        after = samples(http.get("/metrics").text)

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert moved("rag_http_requests_total", route="/v1/answer", method="POST", status="200") == 2
    assert moved("rag_http_requests_total", route="/v1/answer", method="POST", status="413") == 1  # refused unread
    assert moved("rag_http_requests_total", route="/v1/documents", method="POST", status="201") == 1
    assert moved("rag_http_requests_total", route="/v1/documents/{doc_id:path}", method="GET", status="404") == 1
    assert moved("rag_answers_total", outcome="abstained", reason="unsupported_answer", mode="free") == 1
    assert moved("rag_answers_total", outcome="answered", reason="", mode="free") == 1
    assert moved("rag_answer_stage_seconds_count", stage="total") == 2
    assert moved("rag_answer_stage_seconds_count", stage="retrieval") == 2
    assert moved("rag_answer_stage_seconds_count", stage="generation") == 2
    assert moved("rag_answer_stage_seconds_count", stage="check") == 2
    assert moved("rag_answer_stage_seconds_sum", stage="total") > 0
    assert moved("rag_generated_tokens_total") == 2 * len(WHILE_SENTENCE.split())  # generated for both answers
    assert moved("rag_ingest_verdicts_total", verdict="accepted", reason="") == 1
    assert moved("rag_ingest_verdicts_total", verdict="rejected", reason="digest_mismatch") == 1
    assert value(after, "rag_queue_depth") == 0 and value(after, "rag_queue_capacity") == settings.answer.queue_size
    head = Ledger(settings.ledger_path).head()
    assert value(after, "rag_corpus_info", ledger_head=head) == 1  # the corpus version, after the upload
    model = [labels for (name, labels) in after if name == "rag_model_info"]
    assert model and dict(model[0])["generator"] == "fake-generator"


def test_metrics_need_the_admin_role_once_keys_exist(settings: Settings, corpus: Path) -> None:
    with TestClient(curation_app(settings, corpus)) as client:
        store = ApiKeyStore(settings.api_keys_path)
        reader, admin = store.new("r", "reader")[1], store.new("a", "admin")[1]
        assert client.get("/metrics").status_code == 401
        assert client.get("/metrics", headers={"authorization": f"Bearer {reader}"}).status_code == 403
        scraped = client.get("/metrics", headers={"authorization": f"Bearer {admin}"})
        assert scraped.status_code == 200 and scraped.headers["content-type"].startswith("text/plain")
        # The refusals were counted too, by status.
        assert (
            value(samples(scraped.text), "rag_http_requests_total", route="/metrics", method="GET", status="403") == 1
        )


def test_apps_side_by_side_keep_their_own_counters(settings: Settings, corpus: Path) -> None:
    first, second = curation_app(settings, corpus), curation_app(settings, corpus)  # no clash over metric names
    with TestClient(first) as one, TestClient(second) as two:
        for _ in range(3):
            one.get("/v1/documents")
        counted = samples(two.get("/metrics").text)
        assert value(counted, "rag_http_requests_total", route="/v1/documents", method="GET", status="200") == 0
        counted = samples(one.get("/metrics").text)
        assert value(counted, "rag_http_requests_total", route="/v1/documents", method="GET", status="200") == 3
