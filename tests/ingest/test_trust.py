"""Trust files that can be relied on: key ids, merging, dates, not-before, and revocation end to end."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from ingest.ledger import Ledger
from ingest.pipeline import Ingestor
from ingest.provenance import verify_document
from ingest.trust import TrustStore, read_trust_file, revoke_key
from rag.errors import TrustStoreError
from rag.settings import Settings
from tests.conftest import REPO, Curator, pydoc_text
from tests.fakes import FakeEmbedder, InMemoryStore


def rag(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", "from rag.cli import main; main()", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, "COLUMNS": "200"},
        timeout=120,
    )


def entries_of(path: Path) -> list[dict[str, object]]:
    return [dict(k) for k in json.loads(path.read_text())["keys"]]


def write_entries(path: Path, keys: list[dict[str, object]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"version": 1, "keys": keys}))


def signed(root: Path, curator: Curator, name: str = "pass.md", topic: str = "pass") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    doc = root / name
    doc.write_text(pydoc_text(topic), encoding="utf-8")
    curator.sign(doc, root=root)
    return doc


def in_days(days: int) -> str:
    return (datetime.now(UTC) + timedelta(days=days)).replace(microsecond=0).isoformat()


# --- loading --------------------------------------------------------------------------------


def test_alias_key_id_beside_its_revoked_entry_is_refused_at_load(settings: Settings, curator: Curator) -> None:
    # The key id in a DSSE signature is not signed, so a second, unrevoked id for a revoked key
    # would let its old signatures through under the alias.
    (entry,) = entries_of(settings.trust_path)
    alias = {**entry, "keyid": "ab" * 32, "revoked": False}
    write_entries(settings.trust_path, [{**entry, "revoked": True}, alias])
    with pytest.raises(TrustStoreError) as raised:
        TrustStore.load(settings.trust_path)
    assert raised.value.code == "trust_store_invalid" and "SHA-256" in raised.value.message


def test_a_public_key_listed_twice_is_refused(settings: Settings, curator: Curator) -> None:
    (entry,) = entries_of(settings.trust_path)
    write_entries(settings.trust_path, [{**entry, "revoked": True}, {**entry, "name": "again"}])
    with pytest.raises(TrustStoreError, match="twice") as raised:
        read_trust_file(settings.trust_path)
    assert raised.value.code == "trust_store_invalid"


@pytest.mark.parametrize("field", ["expires", "not_before", "added", "revoked_at"])
def test_a_malformed_date_is_refused_at_load(settings: Settings, curator: Curator, field: str) -> None:
    (entry,) = entries_of(settings.trust_path)
    write_entries(settings.trust_path, [{**entry, field: "next tuesday"}])
    with pytest.raises(TrustStoreError) as raised:
        TrustStore.load(settings.trust_path)
    assert raised.value.code == "trust_store_invalid" and field in raised.value.message


def test_malformed_date_is_one_coded_line_from_the_cli(settings: Settings, curator: Curator, tmp_path: Path) -> None:
    doc = signed(tmp_path / "c", curator)
    (entry,) = entries_of(settings.trust_path)
    write_entries(settings.trust_path, [{**entry, "expires": "2027-13-45T99:00:00Z"}])
    for command in (["verify", str(doc)], ["ingest", str(doc)], ["keys", "revoke", str(entry["keyid"])]):
        result = rag(*command)
        assert result.returncode == 2, (command, result.stdout, result.stderr)
        assert "Traceback" not in result.stderr + result.stdout
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and "[trust_store_invalid]" in lines[0], result.stderr


def test_committed_trust_file_loads() -> None:
    store = TrustStore.load(REPO / "knowledge_base" / "trust.json")
    assert store.keys and all(store.usable(keyid) is None for keyid in store.keys)


# --- merging --------------------------------------------------------------------------------


def test_a_local_file_cannot_un_revoke(settings: Settings, curator: Curator, tmp_path: Path) -> None:
    doc = signed(tmp_path / "c", curator)
    (entry,) = entries_of(settings.trust_path)
    write_entries(settings.trust_path, [{**entry, "revoked": True}])
    write_entries(settings.local_trust_path, [{**entry, "revoked": False, "name": "un-revoked locally"}])
    for order in ((settings.trust_path, settings.local_trust_path), (settings.local_trust_path, settings.trust_path)):
        store = TrustStore.load(*order)
        assert store.usable(str(entry["keyid"])) == "revoked_signer"
        assert verify_document(doc, doc.parent, store, max_bytes=10**6).reason == "revoked_signer"
    report = Ingestor(settings, InMemoryStore(), FakeEmbedder()).ingest([doc])
    assert [r["reason"] for r in report.rejected] == ["revoked_signer"]


def test_the_earliest_expiry_and_the_latest_not_before_win(settings: Settings, curator: Curator) -> None:
    (entry,) = entries_of(settings.trust_path)
    latest_not_before = in_days(-30)
    write_entries(settings.trust_path, [{**entry, "expires": in_days(-1), "not_before": latest_not_before}])
    write_entries(settings.local_trust_path, [{**entry, "expires": in_days(365), "not_before": in_days(-60)}])
    merged = TrustStore.load(settings.trust_path, settings.local_trust_path).get(str(entry["keyid"]))
    assert merged is not None
    assert merged.expires is not None and datetime.fromisoformat(merged.expires) < datetime.now(UTC)
    assert merged.not_before == latest_not_before
    assert TrustStore.load(settings.local_trust_path, settings.trust_path).usable(str(entry["keyid"])) == (
        "expired_signer"
    )


def test_not_before_in_the_future_refuses(settings: Settings, curator: Curator, tmp_path: Path) -> None:
    doc = signed(tmp_path / "c", curator)
    (entry,) = entries_of(settings.trust_path)
    write_entries(settings.trust_path, [{**entry, "not_before": in_days(2)}])
    report = Ingestor(settings, InMemoryStore(), FakeEmbedder()).ingest([doc])
    assert [r["reason"] for r in report.rejected] == ["not_yet_valid"] and not report.accepted
    write_entries(settings.trust_path, [{**entry, "not_before": in_days(-2)}])
    assert Ingestor(settings, InMemoryStore(), FakeEmbedder()).ingest([doc]).accepted


# --- revocation -----------------------------------------------------------------------------


def test_revoke_then_ingest_withdraws_the_signers_documents(
    settings: Settings, curator: Curator, tmp_path: Path
) -> None:
    root = tmp_path / "c"
    other = Curator(tmp_path / "bob", settings.trust_path, "bob")
    signed(root, curator, "pass.md", "pass")
    signed(root, curator, "del.md", "del")
    signed(root, other, "assert.md", "assert")
    store = InMemoryStore()
    assert len(Ingestor(settings, store, FakeEmbedder()).ingest([root]).accepted) == 3

    revoked = rag("keys", "revoke", curator.entry.keyid[:12], "--reason", "laptop stolen")
    assert revoked.returncode == 0, revoked.stderr
    local = read_trust_file(settings.local_trust_path).keys
    assert [(k.keyid, k.revoked, k.revoked_reason) for k in local] == [(curator.entry.keyid, True, "laptop stolen")]
    assert not read_trust_file(settings.trust_path).keys[0].revoked  # the committed file is left alone
    revoke_entry = list(Ledger(settings.ledger_path).entries())[-1]
    assert revoke_entry["action"] == "revoke" and revoke_entry["signer_keyid"] == curator.entry.keyid
    again = rag("keys", "revoke", curator.entry.keyid)
    assert again.returncode == 0 and "already revoked" in again.stdout
    assert list(Ledger(settings.ledger_path).entries())[-1]["index"] == revoke_entry["index"]

    # The next ingest withdraws them even when only another folder is ingested.
    elsewhere = signed(tmp_path / "elsewhere", other, "try.md", "try")
    report = Ingestor(settings, store, FakeEmbedder()).ingest([elsewhere])
    assert sorted((w["doc_id"], w["reason"]) for w in report.withdrawn) == [
        ("del.md", "revoked_signer"),
        ("pass.md", "revoked_signer"),
    ]
    assert {c.doc_id for c, _ in store.rows.values()} == {"assert.md", "try.md"}
    withdraws = [e for e in Ledger(settings.ledger_path).entries() if e["action"] == "withdraw"]
    assert {e["doc_id"] for e in withdraws} == {"pass.md", "del.md"}
    assert all(e["reason"] == "revoked_signer" and e["signer_keyid"] == curator.entry.keyid for e in withdraws)
    assert set(Ledger(settings.ledger_path).live()) == {"assert.md", "try.md"}

    listed = rag("documents", "--json")
    assert listed.returncode == 0, listed.stderr
    status = {d["doc_id"]: (d["status"], d.get("withdrawn_reason")) for d in json.loads(listed.stdout)}
    assert status == {
        "assert.md": ("live", None),
        "try.md": ("live", None),
        "del.md": ("withdrawn", "revoked_signer"),
        "pass.md": ("withdrawn", "revoked_signer"),
    }
    table = rag("documents")
    assert "withdrawn: revoked_signer" in table.stdout and "2 withdrawn" in table.stdout

    # Nothing more to do on the next run; the revoked key's manifests are refused, once in the ledger.
    length = len(list(Ledger(settings.ledger_path).entries()))
    rerun = Ingestor(settings, store, FakeEmbedder()).ingest([root])
    assert not rerun.withdrawn and {r["reason"] for r in rerun.rejected} == {"revoked_signer"}
    assert len(list(Ledger(settings.ledger_path).entries())) == length


def test_a_revoked_signers_document_can_be_taken_over_after_withdrawal(
    settings: Settings, curator: Curator, tmp_path: Path
) -> None:
    root = tmp_path / "c"
    doc = signed(root, curator)
    store = InMemoryStore()
    ingestor = Ingestor(settings, store, FakeEmbedder())
    ingestor.ingest([root])
    ingestor.revoke(curator.entry.keyid, settings.local_trust_path, "left the project")
    bob = Curator(tmp_path / "bob", settings.trust_path, "bob")
    bob.sign(doc, root=root)
    report = Ingestor(settings, store, FakeEmbedder()).ingest([root])
    assert [w["doc_id"] for w in report.withdrawn] == ["pass.md"]
    assert [a["doc_id"] for a in report.accepted] == ["pass.md"] and not report.rejected
    assert {c.metadata["signer_name"] for c, _ in store.rows.values()} == {"bob"}


def test_revoking_an_unknown_key_is_one_coded_line(settings: Settings, curator: Curator) -> None:
    result = rag("keys", "revoke", "0123456789abcdef")
    assert result.returncode == 2 and "[unknown_key]" in result.stderr and "Traceback" not in result.stderr
    assert not settings.local_trust_path.exists()


def test_a_revoked_key_is_not_trusted_again_by_keys_new(settings: Settings, curator: Curator) -> None:
    from ingest.trust import add_trusted_key

    Ingestor(settings, None, None).revoke(curator.entry.keyid, settings.trust_path)
    with pytest.raises(TrustStoreError):
        add_trusted_key(settings.trust_path, "again", curator.key.public_key())
    assert TrustStore.load(settings.trust_path).usable(curator.entry.keyid) == "revoked_signer"


@pytest.mark.slow
def test_revocation_withdraws_from_real_chroma(settings: Settings, curator: Curator, tmp_path: Path) -> None:
    from rag.wiring import build_store

    root = tmp_path / "c"
    signed(root, curator, "pass.md", "pass")
    signed(root, curator, "del.md", "del")
    store = build_store(settings)
    Ingestor(settings, store, FakeEmbedder()).ingest([root])
    assert {i.partition("@")[0] for i in store.ids()} == {"pass.md", "del.md"}
    Ingestor(settings, None, None).revoke(curator.entry.keyid, settings.local_trust_path, "compromised")
    report = Ingestor(settings, build_store(settings), FakeEmbedder()).ingest([root])
    assert sorted(w["doc_id"] for w in report.withdrawn) == ["del.md", "pass.md"]
    assert build_store(settings).ids() == []
    assert Ledger(settings.ledger_path).live() == {}
    views = Ingestor(settings, None, None).documents(include_withdrawn=True)
    assert [(v["doc_id"], v["status"]) for v in views] == [("del.md", "withdrawn"), ("pass.md", "withdrawn")]


# --- revocation sticks: the ledger's revoke entries hold whatever the trust files say ----------------


def test_a_revocation_survives_deleting_the_trust_file_it_was_written_to(
    settings: Settings, curator: Curator, corpus: Path
) -> None:
    from rag.wiring import build_answer_service
    from tests.ingest.test_commitments import FirstSentenceGenerator, ingestor, verify_cli

    settings.answer.relevance_threshold = 0.05
    ingestor(settings).ingest([corpus])
    service = build_answer_service(settings, embedder=FakeEmbedder(), generator=FirstSentenceGenerator())
    assert service.answer("What does the pass statement do?").citations
    Ingestor(settings, None, None).revoke(curator.entry.keyid, settings.local_trust_path, "stolen")
    settings.local_trust_path.unlink()  # un-revoke by deleting the file (data-dir write access, or a mistake)

    assert service.answer("What does the pass statement do?").abstained  # the gate reads the ledger's revoke
    report = ingestor(settings).ingest([corpus])
    assert sorted(w["doc_id"] for w in report.withdrawn) == ["assert.md", "del.md", "pass.md"]
    assert not report.accepted and {r["reason"] for r in report.rejected} == {"revoked_signer"}
    assert service.answer("What does the pass statement do?").abstained and verify_cli()[0] == 0
    verdicts = Ingestor(settings, None, None).verify([corpus])
    assert {v.reason for v in verdicts} == {"revoked_signer"}


def test_revoking_into_a_file_the_service_does_not_read_is_refused(
    settings: Settings, curator: Curator, tmp_path: Path
) -> None:
    other = tmp_path / "revocations.json"
    result = rag("keys", "revoke", curator.entry.keyid, "--trust", str(other))
    assert result.returncode == 2 and "[trust_file_not_configured]" in result.stderr
    assert not other.exists() and not settings.ledger_path.exists()
    ok = rag("keys", "revoke", curator.entry.keyid, "--trust", str(settings.trust_path))
    assert ok.returncode == 0, ok.stderr
    assert read_trust_file(settings.trust_path).keys[0].revoked


def test_rerunning_revoke_records_the_ledger_entry_a_crash_left_out(
    settings: Settings, curator: Curator, tmp_path: Path
) -> None:
    store = InMemoryStore()
    Ingestor(settings, store, FakeEmbedder()).ingest([signed(tmp_path / "c", curator).parent])
    revoke_key(settings.local_trust_path, curator.entry, reason="stolen")  # the trust file was written, then a kill
    assert not [e for e in Ledger(settings.ledger_path).entries() if e["action"] == "revoke"]
    entry, new = Ingestor(settings, store, FakeEmbedder()).revoke(curator.entry.keyid, settings.local_trust_path)
    assert new and entry.revoked
    (recorded,) = [e for e in Ledger(settings.ledger_path).entries() if e["action"] == "revoke"]
    assert recorded["signer_keyid"] == curator.entry.keyid and recorded["reason"] == "stolen"
    assert Ingestor(settings, store, FakeEmbedder()).revoke(curator.entry.keyid, settings.local_trust_path)[1] is False


def test_ingest_trust_option_merges_with_the_configured_files(
    settings: Settings, curator: Curator, tmp_path: Path
) -> None:
    from typer.testing import CliRunner

    from rag.cli import app

    doc = signed(tmp_path / "c", curator)
    alternative = tmp_path / "alt.json"
    alternative.write_text(settings.trust_path.read_text())  # still trusts the key
    keys = entries_of(settings.trust_path)
    write_entries(settings.trust_path, [{**keys[0], "revoked": True}])  # revoked in the committed file
    result = CliRunner().invoke(app, ["ingest", str(doc.parent), "--trust", str(alternative), "--json"])
    assert result.exit_code == 1
    summary = json.loads(result.output)
    assert summary["accepted"] == 0 and summary["rejected_by_reason"] == {"revoked_signer": 1}
