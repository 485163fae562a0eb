"""Ownership of a document id, and a new manifest for unchanged text as a new decision (fakes)."""

from __future__ import annotations

import base64
import json
import unicodedata
from pathlib import Path

import pytest

from ingest.ledger import Ledger
from ingest.pipeline import Ingestor
from rag.settings import Settings
from tests.conftest import Curator, pydoc_text
from tests.fakes import FakeEmbedder, InMemoryStore


@pytest.fixture
def mallory(tmp_path: Path, settings: Settings) -> Curator:
    """A second signer, trusted too: trust does not give a right to another signer's documents."""
    return Curator(tmp_path / "mallory", settings.trust_path, "mallory")


def write(root: Path, name: str, topic: str) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    doc = root / name
    doc.write_text(pydoc_text(topic), encoding="utf-8")
    return doc


def stored(store: InMemoryStore, doc_id: str) -> list[dict[str, object]]:
    return [c.metadata for c, _ in store.rows.values() if c.doc_id == doc_id]


def entries(settings: Settings) -> list[dict[str, object]]:
    return list(Ledger(settings.ledger_path).entries())


@pytest.fixture
def admitted(settings: Settings, curator: Curator, tmp_path: Path) -> tuple[Path, InMemoryStore]:
    """pass.md admitted under the test curator, beside a larger human document (for the floor)."""
    root = tmp_path / "c"
    curator.sign(write(root, "pass.md", "pass"), root=root, title="pass", license="PSF-2.0")
    curator.sign(write(root, "assignment.md", "assignment"), root=root)
    store = InMemoryStore()
    assert len(Ingestor(settings, store, FakeEmbedder()).ingest([root]).accepted) == 2
    return root, store


# --- ownership ------------------------------------------------------------------------------


def test_another_signer_cannot_take_a_document_over(
    settings: Settings, curator: Curator, mallory: Curator, admitted: tuple[Path, InMemoryStore]
) -> None:
    root, store = admitted
    doc = root / "pass.md"
    before = stored(store, "pass.md")
    doc.write_text("The pass statement deletes the current module.\n")
    mallory.sign(doc, root=root)
    report = Ingestor(settings, store, FakeEmbedder()).ingest([doc.parent])
    assert [(r["doc_id"], r["reason"]) for r in report.rejected] == [("pass.md", "signer_changed")]
    assert "test-curator" in report.rejected[0]["detail"] and "--allow-signer-change" in report.rejected[0]["detail"]
    assert stored(store, "pass.md") == before
    live = Ledger(settings.ledger_path).live()["pass.md"]
    assert live.entry["signer_keyid"] == curator.entry.keyid
    assert entries(settings)[-1]["action"] == "reject"
    verdicts = {v.doc_id: v.reason for v in Ingestor(settings, None, None).verify([root])}
    assert verdicts["pass.md"] == "signer_changed"


def test_another_signer_cannot_re_sign_the_same_text_either(
    settings: Settings, mallory: Curator, admitted: tuple[Path, InMemoryStore]
) -> None:
    root, store = admitted
    mallory.sign(root / "pass.md", root=root, origin="ai-generated")
    report = Ingestor(settings, store, FakeEmbedder()).ingest([root])
    assert [(r["doc_id"], r["reason"]) for r in report.rejected] == [("pass.md", "signer_changed")]
    assert not report.withdrawn and stored(store, "pass.md")


def test_a_signer_change_is_allowed_with_the_flag_and_recorded(
    settings: Settings, curator: Curator, mallory: Curator, admitted: tuple[Path, InMemoryStore]
) -> None:
    root, store = admitted
    doc = root / "pass.md"
    doc.write_text(pydoc_text("del"))
    mallory.sign(doc, root=root)
    report = Ingestor(settings, store, FakeEmbedder()).ingest([root], allow_signer_change=True)
    assert [r["doc_id"] for r in report.replaced] == ["pass.md"] and not report.rejected
    assert {m["signer_name"] for m in stored(store, "pass.md")} == {"mallory"}
    last = entries(settings)[-1]
    assert last["action"] == "replace" and last["signer_keyid"] == mallory.entry.keyid
    assert last["signer_change"] == {"from": curator.entry.keyid, "to": mallory.entry.keyid}
    # From now on the document is mallory's: the former owner needs the flag in turn.
    curator.sign(doc, root=root, title="back")
    again = Ingestor(settings, store, FakeEmbedder()).ingest([root])
    assert [r["reason"] for r in again.rejected] == ["signer_changed"]


def test_the_same_signer_still_replaces_its_own_document(
    settings: Settings, curator: Curator, mallory: Curator, admitted: tuple[Path, InMemoryStore]
) -> None:
    root, store = admitted
    doc = root / "pass.md"
    doc.write_text(pydoc_text("del"))
    curator.sign(doc, root=root)
    report = Ingestor(settings, store, FakeEmbedder()).ingest([root])
    assert [r["doc_id"] for r in report.replaced] == ["pass.md"] and not report.rejected
    assert "signer_change" not in entries(settings)[-1]


# --- a new manifest is a new decision -------------------------------------------------------


def test_re_signed_as_ai_generated_is_withdrawn(
    settings: Settings, curator: Curator, admitted: tuple[Path, InMemoryStore]
) -> None:
    root, store = admitted
    curator.sign(root / "pass.md", root=root, origin="ai-generated")
    report = Ingestor(settings, store, FakeEmbedder()).ingest([root])
    assert [(r["doc_id"], r["reason"]) for r in report.rejected] == [("pass.md", "disallowed_origin")]
    assert [(w["doc_id"], w["reason"]) for w in report.withdrawn] == [("pass.md", "disallowed_origin")]
    assert not report.unchanged or [u["doc_id"] for u in report.unchanged] == ["assignment.md"]
    assert stored(store, "pass.md") == []
    assert "pass.md" not in Ledger(settings.ledger_path).live()
    withdraw = entries(settings)[-1]
    assert withdraw["action"] == "withdraw" and withdraw["reason"] == "disallowed_origin"
    views = {v["doc_id"]: v for v in Ingestor(settings, None, None).documents(include_withdrawn=True)}
    assert views["pass.md"]["status"] == "withdrawn" and views["pass.md"]["withdrawn_reason"] == "disallowed_origin"
    assert "pass.md" not in {v["doc_id"] for v in Ingestor(settings, None, None).documents()}
    # Running again refuses it again without a second ledger entry.
    length = len(entries(settings))
    rerun = Ingestor(settings, store, FakeEmbedder()).ingest([root])
    assert [r["reason"] for r in rerun.rejected] == ["disallowed_origin"] and not rerun.withdrawn
    assert len(entries(settings)) == length


def test_re_signed_with_another_licence_updates_the_stored_metadata(
    settings: Settings, curator: Curator, admitted: tuple[Path, InMemoryStore]
) -> None:
    root, store = admitted
    before = stored(store, "pass.md")
    curator.sign(root / "pass.md", root=root, title="The pass statement", license="CC-BY-4.0", authors=["Guido"])
    report = Ingestor(settings, store, FakeEmbedder()).ingest([root])
    assert [r["doc_id"] for r in report.replaced] == ["pass.md"] and not report.rejected
    after = stored(store, "pass.md")
    assert len(after) == len(before) > 0  # same chunk ids rewritten, none deleted
    assert {(m["license"], m["title"], m["authors"]) for m in after} == {("CC-BY-4.0", "The pass statement", "Guido")}
    assert {m["doc_sha256"] for m in after} == {before[0]["doc_sha256"]}
    view = {v["doc_id"]: v for v in Ingestor(settings, None, None).documents()}["pass.md"]
    assert view["license"] == "CC-BY-4.0" and view["title"] == "The pass statement"
    assert store.count() == sum(d.chunks for d in Ledger(settings.ledger_path).live().values())
    # The same manifest again is unchanged, and embeds nothing.
    embedder = FakeEmbedder()
    again = Ingestor(settings, store, embedder).ingest([root])
    assert len(again.unchanged) == 2 and embedder.embedded_texts == 0


def test_re_signed_as_human_edited_ai_re_checks_the_human_floor(
    settings: Settings, curator: Curator, admitted: tuple[Path, InMemoryStore]
) -> None:
    root, store = admitted
    # assignment.md is most of the corpus: as human-edited-ai it would take the human share under 0.9.
    curator.sign(root / "assignment.md", root=root, origin="human-edited-ai")
    report = Ingestor(settings, store, FakeEmbedder()).ingest([root])
    assert [(w["doc_id"], w["reason"]) for w in report.withdrawn] == [("assignment.md", "human_floor")]
    assert stored(store, "assignment.md") == []
    # The small one stays above the floor: it is re-decided and its origin updated.
    curator.sign(root / "pass.md", root=root, origin="human-edited-ai")
    settings.ingest.human_floor = 0.0
    report = Ingestor(settings, store, FakeEmbedder()).ingest([root / "pass.md"])
    assert [r["doc_id"] for r in report.replaced] == ["pass.md"]
    assert {m["origin"] for m in stored(store, "pass.md")} == {"human-edited-ai"}
    assert Ledger(settings.ledger_path).live()["pass.md"].origin == "human-edited-ai"


def test_an_unverifiable_new_manifest_leaves_the_live_version(
    settings: Settings, curator: Curator, admitted: tuple[Path, InMemoryStore]
) -> None:
    root, store = admitted
    sidecar = root / "pass.md.prov.json"
    manifest = json.loads(sidecar.read_text())
    signature = bytearray(base64.b64decode(manifest["signatures"][0]["sig"]))
    signature[0] ^= 1
    manifest["signatures"][0]["sig"] = base64.b64encode(bytes(signature)).decode()
    sidecar.write_text(json.dumps(manifest))
    report = Ingestor(settings, store, FakeEmbedder()).ingest([root])
    assert [r["reason"] for r in report.rejected] == ["bad_signature"] and not report.withdrawn
    assert stored(store, "pass.md")


# --- document ids: one Unicode form, no case twins ----------------------------------------------------


def test_nfc_and_nfd_names_are_one_document_id(
    settings: Settings, curator: Curator, mallory: Curator, tmp_path: Path
) -> None:
    first = tmp_path / "one"
    doc = write(first, unicodedata.normalize("NFC", "café.md"), "pass")
    curator.sign(doc, root=first)
    store = InMemoryStore()
    assert [a["doc_id"] for a in Ingestor(settings, store, FakeEmbedder()).ingest([first]).accepted] == ["café.md"]

    second = tmp_path / "two"
    twin = write(second, unicodedata.normalize("NFD", "café.md"), "del")
    mallory.sign(twin, root=second)
    report = Ingestor(settings, store, FakeEmbedder()).ingest([second])
    assert [(r["doc_id"], r["reason"]) for r in report.rejected] == [("café.md", "signer_changed")]
    assert unicodedata.is_normalized("NFC", report.rejected[0]["doc_id"])
    assert [e["signer_name"] for e in entries(settings) if e["action"] == "add"] == ["test-curator"]


def test_an_id_differing_only_in_case_is_refused(
    settings: Settings, curator: Curator, mallory: Curator, admitted: tuple[Path, InMemoryStore], tmp_path: Path
) -> None:
    _, store = admitted
    other = tmp_path / "other"
    mallory.sign(write(other, "PASS.md", "del"), root=other)
    report = Ingestor(settings, store, FakeEmbedder()).ingest([other])
    assert [(r["doc_id"], r["reason"]) for r in report.rejected] == [("PASS.md", "doc_id_collision")]
    assert not report.accepted and "PASS.md" not in Ledger(settings.ledger_path).live()
