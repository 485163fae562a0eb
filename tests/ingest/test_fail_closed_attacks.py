"""Attacks on the fail-closed promise by someone who can write the data dir but not the operator's folder (the
ledger key, the heads it signed, the local trust file, the API keys). Found by an adversarial review; each test
reproduces one attack and pins what stops it (real Chroma, fake embedder and generator)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

import bm25s
import pytest

from ingest.commitments import LedgerGate
from ingest.ledger import Ledger
from ingest.ledger_head import LedgerKey
from ingest.pipeline import Ingestor
from rag.answering import AnswerService
from rag.errors import LedgerError
from rag.settings import Settings
from rag.wiring import build_answer_service, build_store
from tests.conftest import Curator
from tests.fakes import FakeEmbedder
from tests.ingest.test_commitments import FirstSentenceGenerator, ingestor, verify_cli

QUESTION = "The pass statement: pass is a null operation, when it is executed nothing happens?"


@pytest.fixture
def lenient(settings: Settings) -> Settings:
    settings.answer.relevance_threshold = 0.05  # the hashing fake embedder gives low cosines
    return settings


def service(settings: Settings) -> AnswerService:
    return build_answer_service(settings, embedder=FakeEmbedder(), generator=FirstSentenceGenerator())


def cited(answer_service: AnswerService) -> list[str]:
    return [c.doc_id for c in answer_service.answer(QUESTION).citations]


def snapshot(settings: Settings, doc_id: str) -> dict[str, Any]:
    """What an attacker copies before a removal: the document's Chroma rows, vectors included."""
    store = build_store(settings)
    ids = [i for i in store.ids() if i.startswith(f"{doc_id}@")]
    got: dict[str, Any] = store._collection.get(ids=ids, include=["documents", "metadatas", "embeddings"])
    return got


def put_back(settings: Settings, rows: dict[str, Any]) -> None:
    build_store(settings)._collection.add(
        ids=rows["ids"], documents=rows["documents"], metadatas=rows["metadatas"], embeddings=rows["embeddings"]
    )


def test_a_linked_older_ledger_is_refused_everywhere(lenient: Settings, corpus: Path) -> None:
    """An older copy behind a symbolic link at ledger.jsonl, its signed head and the removed rows put back."""
    ingestor(lenient).ingest([corpus])
    old_ledger, old_head = lenient.ledger_path.read_bytes(), Ledger(lenient.ledger_path).head_path.read_bytes()
    rows = snapshot(lenient, "pass.md")
    ingestor(lenient).remove("pass.md")
    serving = service(lenient)
    assert "pass.md" not in cited(serving)

    older = lenient.data_dir / "ledger.bak.jsonl"
    older.write_bytes(old_ledger)
    lenient.ledger_path.unlink()
    os.symlink(older.name, lenient.ledger_path)
    Ledger(lenient.ledger_path).head_path.write_bytes(old_head)
    put_back(lenient, rows)

    assert cited(serving) == []  # the running service serves nothing from a linked ledger
    code, output = verify_cli()
    assert code == 1 and "symbolic link" in output
    with pytest.raises(LedgerError):
        ingestor(lenient).ingest([corpus])


def test_a_rollback_is_caught_by_a_service_with_the_public_key_only(
    lenient: Settings, corpus: Path, tmp_path: Path
) -> None:
    """A serving host without the key's folder (no remembered heads) still never goes back behind a head it
    has served."""
    ingestor(lenient).ingest([corpus])
    old_ledger, old_head = lenient.ledger_path.read_bytes(), Ledger(lenient.ledger_path).head_path.read_bytes()
    rows = snapshot(lenient, "pass.md")
    ingestor(lenient).remove("pass.md")

    host = tmp_path / "serving"
    host.mkdir()
    shutil.copy(lenient.ledger_public_key, host / "ledger.pub")
    serving_settings = lenient.model_copy(
        update={"ledger_public_key_path": host / "ledger.pub", "ledger_key_path": tmp_path / "elsewhere" / "ledger.key"}
    )
    serving = service(serving_settings)
    assert "pass.md" not in cited(serving)
    lenient.ledger_path.write_bytes(old_ledger)
    Ledger(lenient.ledger_path).head_path.write_bytes(old_head)
    put_back(lenient, rows)
    assert cited(serving) == []


def test_a_bm25_index_naming_one_chunk_everywhere_steers_nothing(lenient: Settings, corpus: Path) -> None:
    """A saved index for the current head whose every row names one committed chunk: repeats do not add up in
    the fusion, and an index naming a chunk twice is rebuilt from the committed chunks."""
    ingestor(lenient).ingest([corpus])
    assert cited(service(lenient)) == ["pass.md"]
    head = Ledger(lenient.ledger_path).read_head_file()["hash"]
    target = next(i for i in build_store(lenient).ids() if i.startswith("del.md@"))
    forged = bm25s.BM25()
    forged.index(bm25s.tokenize([QUESTION] * 20, stopwords="en", show_progress=False), show_progress=False)
    shutil.rmtree(lenient.lexical_path)
    forged.save(str(lenient.lexical_path / "bm25"))
    (lenient.lexical_path / "meta.json").write_text(json.dumps({"head": head, "ids": [target] * 20}))
    assert cited(service(lenient)) == ["pass.md"]


def test_an_unforeseen_failure_while_following_serves_nothing_then_recovers(lenient: Settings, corpus: Path) -> None:
    """A symbolic-link loop at ledger.jsonl for one request, right after a removal, must not leave the previous
    head's commitments in force."""
    ingestor(lenient).ingest([corpus])
    serving = service(lenient)
    assert cited(serving) == ["pass.md"]
    rows = snapshot(lenient, "pass.md")
    ingestor(lenient).remove("pass.md")
    real = lenient.ledger_path.with_name("ledger.real")
    os.rename(lenient.ledger_path, real)
    os.symlink(lenient.ledger_path.name, lenient.ledger_path)
    assert cited(serving) == []
    os.unlink(lenient.ledger_path)
    os.rename(real, lenient.ledger_path)
    put_back(lenient, rows)  # the removed rows back in Chroma: the restored ledger says they are gone
    assert all("pass.md" not in cited(serving) for _ in range(3))
    gate = serving.gate
    assert isinstance(gate, LedgerGate) and gate.head == Ledger(lenient.ledger_path).read_head()  # recovered


def test_a_removal_does_not_free_the_name_for_another_signer(lenient: Settings, corpus: Path, tmp_path: Path) -> None:
    lenient.watermark.detect = False
    ingestor(lenient).ingest([corpus])
    bob = Curator(tmp_path / "bob", lenient.trust_path, name="bob")
    folder = tmp_path / "bobs"
    folder.mkdir()
    doc = folder / "pass.md"
    doc.write_text("The pass statement: pass is a null operation; when it is executed it deletes your files.\n")
    bob.sign(doc, root=folder, title="pass")
    ingest = Ingestor(lenient, build_store(lenient), FakeEmbedder())
    assert [r["reason"] for r in ingest.ingest([folder]).rejected] == ["signer_changed"]
    ingest.remove("pass.md")
    refused = ingest.ingest([folder]).rejected
    assert [r["reason"] for r in refused] == ["signer_changed"] and "removed since" in refused[0]["detail"]
    assert [v.reason for v in ingest.verify([folder])] == ["signer_changed"]
    taken = ingest.ingest([folder], allow_signer_change=True)  # the curator's explicit choice, recorded
    assert [r["doc_id"] for r in taken.accepted] == ["pass.md"]
    entry = Ledger(lenient.ledger_path).live()["pass.md"].entry
    assert entry["signer_change"]["to"] == entry["signer_keyid"] != entry["signer_change"]["from"]


def test_the_document_listing_shows_only_what_the_signed_head_commits(settings: Settings, corpus: Path) -> None:
    """Entries appended without the key (the chain is plain sha256) and the signed head put back untouched."""
    ingest = ingestor(settings)
    ingest.ingest([corpus])
    head = Ledger(settings.ledger_path).head_path.read_bytes()
    keyless = Ledger(settings.ledger_path)
    victim = keyless.live()["pass.md"].entry
    kept = ("signer_keyid", "manifest_sha256", "chunks", "chars", "origin")
    keyless.append(
        {
            **{k: victim[k] for k in kept},
            "action": "add",
            "doc_id": "advisory.md",
            "sha256": hashlib.sha256(b"x").hexdigest(),
            "title": "Official security advisory",
        }
    )
    keyless.append({"action": "remove", "doc_id": "assert.md", "sha256": keyless.live()["assert.md"].sha256})
    Ledger(settings.ledger_path).head_path.write_bytes(head)
    listed = {d["doc_id"] for d in ingestor(settings).documents()}
    assert listed == {"assert.md", "del.md", "pass.md"}
    Ledger(settings.ledger_path).head_path.write_text("{}\n")  # no signed head at all: nothing to list
    with pytest.raises(LedgerError):
        ingestor(settings).documents()


def test_rewriting_the_same_signed_head_reloads_nothing(lenient: Settings, corpus: Path) -> None:
    ingestor(lenient).ingest([corpus])
    serving = service(lenient)
    assert cited(serving) == ["pass.md"]
    head_path = Ledger(lenient.ledger_path).head_path
    record = json.loads(head_path.read_text())
    for indent in (2, None, 1):
        head_path.write_text(json.dumps(record, indent=indent) + "\n")  # other bytes, the same signed head
        assert isinstance(serving.gate, LedgerGate) and serving.gate.follow() is False
    assert cited(serving) == ["pass.md"]


def test_credentials_live_outside_the_data_dir(settings: Settings) -> None:
    """Who can write the data dir must not be able to trust a signer or make an API key."""
    for path in (settings.local_trust_path, settings.api_keys_path):
        assert settings.data_dir.resolve() not in path.resolve().parents
        assert path.parent == settings.ledger_key_path.parent
    assert LedgerKey(settings.ledger_key_path).path.parent == settings.operator_dir
