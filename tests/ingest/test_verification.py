"""Every rejection reason code, through the real verification and policy path (fake embedder/store)."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from ingest.pipeline import Ingestor
from ingest.provenance import manifest_path, text_digest, verify_document
from ingest.trust import TrustStore, read_trust_file, write_key_pair
from rag.settings import Settings
from tests.conftest import Curator, pydoc_text
from tests.fakes import FakeEmbedder, InMemoryStore


def make_ingestor(settings: Settings) -> Ingestor:
    return Ingestor(settings, InMemoryStore(), FakeEmbedder())


def reason_of(settings: Settings, path: Path) -> str | None:
    report = make_ingestor(settings).ingest([path])
    assert len(report.rejected) <= 1
    return report.rejected[0]["reason"] if report.rejected else None


def write(root: Path, name: str, topic: str = "pass") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    doc = root / name
    doc.write_text(pydoc_text(topic), encoding="utf-8")
    return doc


def test_signed_human_document_is_accepted(settings: Settings, curator: Curator, tmp_path: Path) -> None:
    doc = write(tmp_path / "c", "pass.md")
    curator.sign(doc)
    report = make_ingestor(settings).ingest([doc])
    assert [a["doc_id"] for a in report.accepted] == ["pass.md"]
    assert report.exit_code == 0


def test_missing_manifest(settings: Settings, tmp_path: Path) -> None:
    assert reason_of(settings, write(tmp_path / "c", "a.md")) == "missing_manifest"


@pytest.mark.parametrize(
    "mangle",
    [
        lambda m: "{not json",
        lambda m: json.dumps({**json.loads(m), "payload": "!!!not-base64"}),
        lambda m: json.dumps({**json.loads(m), "signatures": []}),
        lambda m: json.dumps({**json.loads(m), "payload": base64.b64encode(b'{"_type": "x"}').decode()}),
    ],
    ids=["not-json", "bad-base64", "no-signature", "wrong-statement"],
)
def test_malformed_manifest(settings: Settings, curator: Curator, tmp_path: Path, mangle) -> None:  # type: ignore[no-untyped-def]
    doc = write(tmp_path / "c", "a.md")
    sidecar = curator.sign(doc)
    sidecar.write_text(mangle(sidecar.read_text()))
    assert reason_of(settings, doc) == "malformed_manifest"


def test_unknown_signer(settings: Settings, tmp_path: Path) -> None:
    doc = write(tmp_path / "c", "a.md")
    stranger = Curator(tmp_path / "stranger", tmp_path / "stranger-trust.json", "stranger")
    stranger.sign(doc)
    assert reason_of(settings, doc) == "unknown_signer"


def _edit_trust(settings: Settings, **changes: object) -> None:
    store = read_trust_file(settings.trust_path)
    store.keys = [k.model_copy(update=changes) for k in store.keys]
    settings.trust_path.write_text(store.model_dump_json())


def test_revoked_signer(settings: Settings, curator: Curator, tmp_path: Path) -> None:
    doc = write(tmp_path / "c", "a.md")
    curator.sign(doc)
    _edit_trust(settings, revoked=True)
    assert reason_of(settings, doc) == "revoked_signer"


def test_expired_signer(settings: Settings, curator: Curator, tmp_path: Path) -> None:
    doc = write(tmp_path / "c", "a.md")
    curator.sign(doc)
    _edit_trust(settings, expires=(datetime.now(UTC) - timedelta(days=1)).isoformat())
    assert reason_of(settings, doc) == "expired_signer"


def test_key_with_future_expiry_still_verifies(settings: Settings, curator: Curator, tmp_path: Path) -> None:
    doc = write(tmp_path / "c", "a.md")
    curator.sign(doc)
    _edit_trust(settings, expires=(datetime.now(UTC) + timedelta(days=1)).isoformat())
    assert reason_of(settings, doc) is None


def test_bad_signature_when_manifest_payload_is_edited(settings: Settings, curator: Curator, tmp_path: Path) -> None:
    doc = write(tmp_path / "c", "a.md")
    sidecar = curator.sign(doc)
    envelope = json.loads(sidecar.read_text())
    statement = json.loads(base64.b64decode(envelope["payload"]))
    statement["predicate"]["origin"] = "human"
    statement["predicate"]["authors"] = ["Someone Else"]
    envelope["payload"] = base64.b64encode(json.dumps(statement).encode()).decode()
    sidecar.write_text(json.dumps(envelope))
    assert reason_of(settings, doc) == "bad_signature"


def test_bad_signature_when_signature_bytes_are_edited(settings: Settings, curator: Curator, tmp_path: Path) -> None:
    doc = write(tmp_path / "c", "a.md")
    sidecar = curator.sign(doc)
    envelope = json.loads(sidecar.read_text())
    sig = bytearray(base64.b64decode(envelope["signatures"][0]["sig"]))
    sig[0] ^= 1
    envelope["signatures"][0]["sig"] = base64.b64encode(bytes(sig)).decode()
    sidecar.write_text(json.dumps(envelope))
    assert reason_of(settings, doc) == "bad_signature"


def test_digest_mismatch_when_document_is_edited(settings: Settings, curator: Curator, tmp_path: Path) -> None:
    doc = write(tmp_path / "c", "a.md")
    curator.sign(doc)
    doc.write_text(doc.read_text() + "\nOne more line.\n")
    assert reason_of(settings, doc) == "digest_mismatch"


def test_digest_ignores_line_endings_and_unicode_normal_form(
    settings: Settings, curator: Curator, tmp_path: Path
) -> None:
    doc = tmp_path / "c" / "a.txt"
    doc.parent.mkdir()
    doc.write_bytes("Caf\u00e9 line one\nline two\n".encode())
    curator.sign(doc)
    doc.write_bytes("Cafe\u0301 line one\r\nline two\r\n".encode())
    assert text_digest(doc.read_text()) == text_digest("Caf\u00e9 line one\nline two\n")
    assert reason_of(settings, doc) is None


def test_subject_mismatch_when_manifest_moves_to_another_file(
    settings: Settings, curator: Curator, tmp_path: Path
) -> None:
    doc = write(tmp_path / "c", "a.md")
    curator.sign(doc)
    other = tmp_path / "c" / "b.md"
    doc.rename(other)
    manifest_path(doc).rename(manifest_path(other))
    assert reason_of(settings, other) == "subject_mismatch"


def test_disallowed_origin_for_ai_generated(settings: Settings, curator: Curator, tmp_path: Path) -> None:
    doc = write(tmp_path / "c", "a.md")
    curator.sign(doc, origin="ai-generated")
    assert reason_of(settings, doc) == "disallowed_origin"


def test_binary_file_is_not_utf8(settings: Settings, curator: Curator, tmp_path: Path) -> None:
    doc = tmp_path / "c" / "a.txt"
    doc.parent.mkdir()
    doc.write_bytes(b"\xff\xfe\x00binary")
    assert reason_of(settings, doc) == "not_utf8"


def test_too_large(settings: Settings, curator: Curator, tmp_path: Path) -> None:
    doc = write(tmp_path / "c", "a.md", topic="assignment")
    curator.sign(doc)
    settings.ingest.max_document_bytes = 1000
    assert reason_of(settings, doc) == "too_large"


def test_human_floor_limits_human_edited_ai(settings: Settings, curator: Curator, tmp_path: Path) -> None:
    root = tmp_path / "c"
    human = write(root, "human.md", topic="assignment")  # about 20k characters
    curator.sign(human, root=root)
    ingestor = make_ingestor(settings)
    assert not ingestor.ingest([human]).rejected
    small = write(root, "small.md", topic="pass")  # a few hundred characters: stays above 0.9
    curator.sign(small, origin="human-edited-ai", root=root)
    big = write(root, "big.md", topic="typesseq")  # large: would push the human share under 0.9
    curator.sign(big, origin="human-edited-ai", root=root)
    report = ingestor.ingest([small, big])
    assert [a["doc_id"] for a in report.accepted] == ["small.md"]
    assert [(r["doc_id"], r["reason"]) for r in report.rejected] == [("big.md", "human_floor")]


def test_duplicate_content_under_another_name_is_skipped(settings: Settings, curator: Curator, tmp_path: Path) -> None:
    root = tmp_path / "c"
    first, second = write(root, "one.md"), write(root, "two.md")
    curator.sign(first, root=root)
    curator.sign(second, root=root)
    report = make_ingestor(settings).ingest([root])
    assert len(report.accepted) == 1
    assert [d["doc_id"] for d in report.duplicates] == ["two.md"]
    assert report.exit_code == 0


def test_verification_order_prefers_signer_over_digest(settings: Settings, tmp_path: Path) -> None:
    doc = write(tmp_path / "c", "a.md")
    stranger = Curator(tmp_path / "s", tmp_path / "s.json", "stranger")
    stranger.sign(doc, origin="ai-generated")
    doc.write_text("edited")
    verdict = verify_document(doc, doc.parent, TrustStore.load(settings.trust_path), max_bytes=10**6)
    assert verdict.reason == "unknown_signer"


def test_committed_examples_are_all_refused_with_their_reasons(tmp_path: Path) -> None:
    from tests.conftest import REPO

    settings = Settings(trust_path=REPO / "knowledge_base" / "trust.json")
    report = make_ingestor(settings).ingest([REPO / "knowledge_base" / "examples" / "rejected"])
    reasons = {Path(r["path"]).name: r["reason"] for r in report.rejected}
    assert reasons == {
        "unsigned.md": "missing_manifest",
        "tampered.md": "digest_mismatch",
        "ai_generated.md": "disallowed_origin",
        "unknown_signer.md": "unknown_signer",
    }
    assert not report.accepted


def test_committed_examples_state_a_non_human_origin() -> None:
    from tests.conftest import REPO

    for sidecar in (REPO / "knowledge_base" / "examples" / "rejected").glob("*.prov.json"):
        payload = json.loads(base64.b64decode(json.loads(sidecar.read_text())["payload"]))
        assert payload["predicate"]["origin"] == "ai-generated"


def test_private_key_is_0600_and_never_overwritten(tmp_path: Path) -> None:
    from rag.errors import KeyFileError

    key, _ = write_key_pair("alice", tmp_path)
    assert key.stat().st_mode & 0o777 == 0o600
    before = key.read_bytes()
    with pytest.raises(KeyFileError) as err:
        write_key_pair("alice", tmp_path)
    assert err.value.code == "key_exists"
    assert key.read_bytes() == before


def test_a_symlink_out_of_the_corpus_is_refused_and_the_run_goes_on(
    settings: Settings, curator: Curator, tmp_path: Path
) -> None:
    root = tmp_path / "c"
    outside = write(tmp_path, "out.md")
    curator.sign(outside)
    (root / "link.md").parent.mkdir(parents=True, exist_ok=True)
    (root / "link.md").symlink_to(outside)
    curator.sign(write(root, "ok.md", "del"), root=root)
    report = make_ingestor(settings).ingest([root])
    assert [(r["doc_id"], r["reason"]) for r in report.rejected] == [("link.md", "outside_root")]
    assert [a["doc_id"] for a in report.accepted] == ["ok.md"]
