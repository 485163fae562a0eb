"""Curators over HTTP (issue 13, part 2): uploads and removals go through `rag ingest`'s and `rag remove`'s own
code, the running service answers from them at once, and the ledger is readable and checkable over HTTP.

Real Chroma, fake embedder and generator; the server is open (loopback, no keys): auth has its own tests."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from ingest.ledger import Ledger
from ingest.ledger_admin import ingest_lock
from rag.settings import Settings
from rag.wiring import build_store
from tests.api_curation import WHILE_QUESTION, curation_app, signed, upload_files
from tests.api_server import live_server
from tests.conftest import Curator


@pytest.fixture
def client(settings: Settings, corpus: Path) -> Iterator[TestClient]:
    with TestClient(curation_app(settings, corpus)) as test_client:
        yield test_client


def post(client: TestClient, name: str, document: bytes, manifest: bytes, **kw: object) -> httpx.Response:
    return client.post("/v1/documents", files=upload_files(name, document, manifest), **kw)  # type: ignore[arg-type]


def cited(client: TestClient) -> set[str]:
    body = client.post("/v1/answer", json={"question": WHILE_QUESTION}).json()
    return {c["doc_id"] for c in body["citations"]} if not body["abstained"] else set()


def test_upload_is_admitted_then_answerable_without_restart_then_removed(
    client: TestClient, curator: Curator, tmp_path: Path, settings: Settings
) -> None:
    assert cited(client) == set()  # nothing in the corpus supports the sentence: it abstains
    document, manifest = signed(curator, tmp_path / "up", "while.md")

    created = post(client, "while.md", document, manifest)
    assert created.status_code == 201, created.text
    body = created.json()
    assert body["status"] == "accepted" and body["doc_id"] == "while.md"
    assert body["document"]["signer_name"] == curator.name and body["document"]["chunks"] >= 1
    assert client.get("/v1/documents/while.md").json()["sha256"] == body["document"]["sha256"]
    assert cited(client) == {"while.md"}  # the running service followed the ledger head

    again = post(client, "while.md", document, manifest)
    assert again.status_code == 200 and again.json()["status"] == "skipped_unchanged"

    removed = client.delete("/v1/documents/while.md")
    assert removed.status_code == 200 and removed.json()["document"]["doc_id"] == "while.md"
    assert cited(client) == set()
    assert client.get("/v1/documents/while.md").status_code == 404
    gone = client.delete("/v1/documents/while.md")
    assert gone.status_code == 404 and gone.json()["error"]["code"] == "unknown_document"
    actions = [(e["action"], e["doc_id"]) for e in Ledger(settings.ledger_path).entries()]
    assert actions[-2:] == [("add", "while.md"), ("remove", "while.md")]  # the CLI's own entries
    assert client.get("/v1/ledger/verify").json()["ok"] is True


def test_upload_under_a_signed_path_and_a_replacement(client: TestClient, curator: Curator, tmp_path: Path) -> None:
    document, manifest = signed(curator, tmp_path / "up", "guides/while.md")
    plain = post(client, "guides/while.md", document, manifest)  # the file name alone is not the signed id
    assert plain.status_code == 422 and plain.json()["error"]["code"] == "subject_mismatch"
    named = post(client, "guides/while.md", document, manifest, data={"name": "guides/while.md"})
    assert named.status_code == 201 and named.json()["doc_id"] == "guides/while.md"

    edited, manifest2 = signed(curator, tmp_path / "up", "guides/while.md", text=document.decode() + "\nMore.\n")
    replaced = post(client, "x.md", edited, manifest2, data={"name": "guides/while.md"})
    assert replaced.status_code == 200 and replaced.json()["status"] == "replaced"


@pytest.mark.parametrize(
    ("case", "code"),
    [
        ("edited_after_signing", "digest_mismatch"),
        ("untrusted_key", "unknown_signer"),
        ("ai_generated", "disallowed_origin"),
        ("manifest_of_another_document", "digest_mismatch"),
        ("not_a_manifest", "malformed_manifest"),
        ("not_utf8", "not_utf8"),
    ],
)
def test_refused_uploads_are_422_with_the_reason_code(
    client: TestClient, curator: Curator, tmp_path: Path, settings: Settings, case: str, code: str
) -> None:
    folder = tmp_path / "up"
    if case == "untrusted_key":
        stranger = Curator(tmp_path / "stranger", tmp_path / "not-configured-trust.json", "stranger")
        document, manifest = signed(stranger, folder, "while.md")
    else:
        origin = "ai-generated" if case == "ai_generated" else "human"
        document, manifest = signed(curator, folder, "while.md", origin=origin)
    if case == "edited_after_signing":
        document = document.replace(b"repeated", b"single")
    elif case == "manifest_of_another_document":
        _, manifest = signed(curator, tmp_path / "other", "while.md", text="Some other text entirely.\n")
    elif case == "not_a_manifest":
        manifest = b"{not json"
    elif case == "not_utf8":
        document = b"\xff\xfe caf\xe9\n"
    before = len(list(Ledger(settings.ledger_path).entries()))

    refused = post(client, "while.md", document, manifest)
    assert refused.status_code == 422, refused.text
    error = refused.json()["error"]
    assert error["code"] == code and "while.md" in error["message"] and "rag-upload-" not in error["message"]
    assert client.get("/v1/documents/while.md").status_code == 404
    entries = list(Ledger(settings.ledger_path).entries())
    assert entries[before:] and entries[-1]["action"] == "reject" and entries[-1]["reason"] == code  # as rag ingest
    assert "rag-upload-" not in json.dumps(entries[-1])  # the ledger names the document, not the upload folder


@pytest.mark.parametrize(
    ("name", "code"),
    [("../while.md", "invalid_document_name"), ("/etc/while.md", "invalid_document_name"),
     ("a//b.md", "invalid_document_name"), ("while.exe", "unsupported_type"), ("a\\b.md", "invalid_document_name"),
     ("w" * 244 + ".md", "invalid_document_name")],  # fits a file name, its `.prov.json` beside it does not
)  # fmt: skip
def test_bad_names_are_refused_before_anything_is_written(
    client: TestClient, curator: Curator, tmp_path: Path, settings: Settings, name: str, code: str
) -> None:
    document, manifest = signed(curator, tmp_path / "up", "while.md")
    before = list(Ledger(settings.ledger_path).entries())
    refused = post(client, "while.md", document, manifest, data={"name": name})
    assert refused.status_code == 422 and refused.json()["error"]["code"] == code
    assert list(Ledger(settings.ledger_path).entries()) == before


def test_bad_multipart_bodies_are_4xx(client: TestClient, curator: Curator, tmp_path: Path) -> None:
    document, manifest = signed(curator, tmp_path / "up", "while.md")
    only_document = client.post("/v1/documents", files={"document": ("while.md", document, "text/markdown")})
    assert only_document.status_code == 422 and only_document.json()["error"]["code"] == "invalid_request"
    assert "manifest" in only_document.json()["error"]["message"]
    as_json = client.post("/v1/documents", json={"document": document.decode()})
    assert as_json.status_code == 422
    broken = client.post(
        "/v1/documents",
        content=b'--xyz\r\nContent-Disposition: form-data; name="document"\r\n\r\nno end',
        headers={"content-type": "multipart/form-data; boundary=xyz"},
    )
    assert 400 <= broken.status_code < 500 and "error" in broken.json()
    extra = upload_files("while.md", document, manifest) | {"third": ("x.md", b"x", "text/plain")}
    too_many = client.post("/v1/documents", files=extra)  # type: ignore[arg-type]
    assert too_many.status_code == 400 and too_many.json()["error"]["code"] == "bad_request"


def test_an_upload_over_the_limit_is_413_unread(client: TestClient, curator: Curator, tmp_path: Path) -> None:
    document, manifest = signed(curator, tmp_path / "up", "while.md", text="A long line of words. " * 4000)
    refused = post(client, "while.md", document, manifest)
    assert refused.status_code == 413 and refused.json()["error"]["code"] == "request_too_large"
    assert "65,536" in refused.json()["error"]["message"]  # server.max_upload_bytes, not the 1 MiB of other bodies


def test_a_crash_mid_upload_leaves_store_and_ledger_consistent(
    settings: Settings, corpus: Path, curator: Curator, tmp_path: Path
) -> None:
    app = curation_app(settings, corpus)
    with TestClient(app, raise_server_exceptions=False) as client:
        embedder = app.state.service_state().service.retriever.embedder
        document, manifest = signed(curator, tmp_path / "up", "while.md")
        embedder.fail_after = len(embedder.calls)  # the next embedding call fails, after verification and checks
        crashed = post(client, "while.md", document, manifest)
        assert crashed.status_code == 500 and crashed.json()["error"]["code"] == "internal_error"
        assert client.get("/v1/documents/while.md").status_code == 404
        assert client.get("/v1/ledger/verify").json()["ok"] is True  # nothing half-written was left behind

        embedder.fail_after = None
        assert post(client, "while.md", document, manifest).status_code == 201  # the next try admits it
        assert client.get("/v1/ledger/verify").json()["ok"] is True


def test_uploads_wait_for_a_cli_ingest_holding_the_lock(
    settings: Settings, corpus: Path, curator: Curator, tmp_path: Path
) -> None:
    document, manifest = signed(curator, tmp_path / "up", "while.md")
    app = curation_app(settings, corpus)
    result: dict[str, httpx.Response] = {}
    with live_server(app, settings) as url, ingest_lock(settings.data_dir):  # what `rag ingest` holds while it writes

        def send() -> None:
            result["r"] = httpx.post(f"{url}/v1/documents", files=upload_files("while.md", document, manifest))

        sender = threading.Thread(target=send)
        sender.start()
        time.sleep(1.5)
        assert "r" not in result and "while.md" not in Ledger(settings.ledger_path).live()  # waiting its turn
    sender.join(30)
    assert result["r"].status_code == 201 and "while.md" in Ledger(settings.ledger_path).live()


def test_ledger_pages_and_verify(client: TestClient, settings: Settings) -> None:
    entries = list(Ledger(settings.ledger_path).entries())
    first = client.get("/v1/ledger", params={"limit": 2}).json()
    assert first["total"] == len(entries) and first["entries"] == entries[:2] and first["head"] == entries[-1]["hash"]
    rest = client.get("/v1/ledger", params={"offset": 2, "limit": 1000}).json()
    assert rest["entries"] == entries[2:]
    assert client.get("/v1/ledger", params={"offset": 10_000}).json()["entries"] == []
    for bad in ({"limit": 0}, {"limit": 1001}, {"offset": -1}, {"limit": "ten"}):
        assert client.get("/v1/ledger", params=bad).status_code == 422

    check = client.get("/v1/ledger/verify").json()
    assert check["ok"] is True and check["entries"] == len(entries) and check["store_checked"] is True
    store = build_store(settings)
    store.delete(store.ids()[:1])  # a chunk the ledger commits goes missing behind its back
    check = client.get("/v1/ledger/verify").json()
    assert check["ok"] is False and check["problems"] and str(settings.data_dir.resolve()) not in str(check)
