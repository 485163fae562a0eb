"""The store answers to the ledger, and the ledger cannot be cut silently (real Chroma, fake embedder)."""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from chromadb.api.shared_system_client import SharedSystemClient
from typer.testing import CliRunner

from ingest.ledger import Ledger, chunk_id
from ingest.ledger_head import LedgerKey, parse_expected_head
from ingest.pipeline import Ingestor
from rag.cli import app
from rag.errors import LedgerError
from rag.settings import Settings
from rag.stores import ChromaStore
from rag.types import AnswerMode
from rag.wiring import build_answer_service, build_store
from tests.conftest import Curator, pydoc_text
from tests.fakes import FakeEmbedder, FakeGenerator

FORGED = "Barn owls are paid forty dollars a week by the lighthouse board."


class FirstSentenceGenerator(FakeGenerator):
    """Answers with the first sentence of the first passage it is given (a supported answer)."""

    model_id = "fake-first-sentence"

    def __init__(self) -> None:
        super().__init__("")

    def stream(
        self,
        question: str,
        passages: Sequence[str] | None,
        *,
        mode: AnswerMode = "free",
        max_new_tokens: int | None = None,
    ) -> Iterator[str]:
        yield (passages or [""])[0].split(". ")[0].strip()


@pytest.fixture
def lenient(settings: Settings) -> Settings:
    settings.answer.relevance_threshold = 0.05  # the hashing fake embedder gives low cosines
    return settings


def ingestor(settings: Settings) -> Ingestor:
    return Ingestor(settings, build_store(settings), FakeEmbedder())


def ledger(settings: Settings) -> Ledger:
    return Ledger(settings.ledger_path, LedgerKey(settings.ledger_key_path))


def verify_cli(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["ledger", "verify", *args], terminal_width=400)
    return result.exit_code, result.output


def forge(store: ChromaStore, doc_id: str) -> str:
    """Replace a chunk's text in Chroma together with its stored hash, as an attacker with the store would."""
    chunk = next(c for c in store.get(store.ids()) if c.metadata["doc_id"] == doc_id)
    metadata = {**chunk.metadata, "chunk_sha256": hashlib.sha256(FORGED.encode()).hexdigest()}
    store._collection.update(
        ids=[chunk.id], documents=[FORGED], metadatas=[metadata], embeddings=FakeEmbedder().embed([FORGED])
    )
    return chunk.id


def test_admitting_entries_commit_chunk_ids_and_hashes(settings: Settings, corpus: Path) -> None:
    ingestor(settings).ingest([corpus])
    store = build_store(settings)
    live = ledger(settings).live()
    stored = {c.id: c.text for c in store.get(store.ids())}
    committed = {
        f"{doc.doc_id}@{doc.sha256[:16]}#{n:05d}": sha
        for doc in live.values()
        for n, sha in enumerate(doc.chunk_hashes or [])
    }
    assert committed and set(committed) == set(stored)
    assert all(hashlib.sha256(stored[i].encode()).hexdigest() == sha for i, sha in committed.items())
    code, output = verify_cli()
    assert code == 0 and "ledger and store ok" in output


def test_chunk_edited_behind_the_ledger_is_never_served(lenient: Settings, corpus: Path) -> None:
    ingestor(lenient).ingest([corpus])
    service = build_answer_service(lenient, embedder=FakeEmbedder(), generator=FirstSentenceGenerator())
    assert not service.answer("What does the pass statement do?").abstained  # it answers before the forgery

    forged = forge(build_store(lenient), "pass.md")
    result = service.answer("Who pays the barn owls a week, the lighthouse board?")
    assert forged not in {r["chunk_id"] for r in result.retrieved}
    assert all(c.chunk_id != forged for c in result.citations) and "lighthouse" not in result.answer

    code, output = verify_cli()
    assert code == 1 and forged in output and "differs from the committed hash" in output

    # The next ingest repairs it from the signed source: the forged chunk is replaced by the committed one.
    report = ingestor(lenient).ingest([corpus])
    assert report.repaired_chunks == 1 and [r["doc_id"] for r in report.replaced] == ["pass.md"]
    assert verify_cli()[0] == 0


def test_vector_edited_behind_the_ledger_steers_nothing(lenient: Settings, corpus: Path) -> None:
    """Text and metadata untouched, only the vector moved onto an unrelated question: the chunk is dropped."""
    ingestor(lenient).ingest([corpus])
    store = build_store(lenient)
    service = build_answer_service(lenient, embedder=FakeEmbedder(), generator=FirstSentenceGenerator())
    question = "Who pays the barn owls a week, the lighthouse board?"
    moved = next(c for c in store.get(store.ids()) if c.metadata["doc_id"] == "pass.md")
    assert store.query(FakeEmbedder().embed([question])[0], 1)[0].id != moved.id
    store._collection.update(ids=[moved.id], embeddings=FakeEmbedder().embed([question]))
    assert store.query(FakeEmbedder().embed([question])[0], 1)[0].id == moved.id  # the store now ranks it first
    result = service.answer(question)
    assert moved.id not in {r["chunk_id"] for r in result.retrieved}
    assert all(c.chunk_id != moved.id for c in result.citations)

    code, output = verify_cli()
    assert code == 1 and moved.id in output and "stored vector differs from the committed hash" in output
    report = ingestor(lenient).ingest([corpus])  # repaired from the signed source, embedded afresh
    assert report.repaired_chunks == 1 and [r["doc_id"] for r in report.replaced] == ["pass.md"]
    assert verify_cli()[0] == 0
    assert moved.id in {r["chunk_id"] for r in service.answer("What does the pass statement do?").retrieved}


def test_entry_without_vector_hashes_is_not_served_until_re_ingested(lenient: Settings, corpus: Path) -> None:
    """A ledger from before vectors were committed: verify names it, the gate serves none of it, and the next
    ingest embeds it afresh under an entry that commits its vectors."""
    ingestor(lenient).ingest([corpus])
    path = lenient.ledger_path
    entries = [json.loads(line) for line in path.read_text().splitlines()]
    for entry in entries:
        entry.pop("vector_sha256", None)
    rewritten = Ledger(path, LedgerKey(lenient.ledger_key_path))
    path.unlink()
    rewritten.head_path.unlink()
    LedgerKey(lenient.ledger_key_path).remember(path, None, None)
    rewritten.append_many([{k: v for k, v in e.items() if k not in ("index", "prev", "hash")} for e in entries])
    service = build_answer_service(lenient, embedder=FakeEmbedder(), generator=FirstSentenceGenerator())
    result = service.answer("What does the pass statement do?")
    assert result.abstained and not result.retrieved
    code, output = verify_cli()
    assert code == 1 and "commits no chunk or vector hashes" in output
    report = ingestor(lenient).ingest([corpus])
    assert len(report.replaced) == 3 and verify_cli()[0] == 0
    assert not service.answer("What does the pass statement do?").abstained


def test_chunk_the_ledger_does_not_commit_is_not_served_and_is_named(lenient: Settings, corpus: Path) -> None:
    ingestor(lenient).ingest([corpus])
    store = build_store(lenient)
    intruder = "planted.md@0123456789abcdef#00000"
    metadata = {"doc_id": "planted.md", "chunk_sha256": hashlib.sha256(FORGED.encode()).hexdigest()}
    store._collection.add(
        ids=[intruder], documents=[FORGED], metadatas=[metadata], embeddings=FakeEmbedder().embed([FORGED])
    )
    service = build_answer_service(lenient, embedder=FakeEmbedder(), generator=FirstSentenceGenerator())
    result = service.answer("Who pays the barn owls a week, the lighthouse board?")
    assert intruder not in {r["chunk_id"] for r in result.retrieved}
    code, output = verify_cli()
    assert code == 1 and intruder in output and "does not commit" in output


def test_revoked_signer_is_not_served_without_a_restart(lenient: Settings, corpus: Path, curator: Curator) -> None:
    ingestor(lenient).ingest([corpus])
    service = build_answer_service(lenient, embedder=FakeEmbedder(), generator=FirstSentenceGenerator())
    assert service.answer("What does the pass statement do?").citations
    trust = json.loads(lenient.trust_path.read_text())
    for key in trust["keys"]:
        key["revoked"] = True
    lenient.trust_path.write_text(json.dumps(trust))
    result = service.answer("What does the pass statement do?")
    assert result.abstained and not result.retrieved


def test_cut_ledger_is_caught_and_ingest_refuses(settings: Settings, corpus: Path, curator: Curator) -> None:
    ingestor(settings).ingest([corpus])
    extra = corpus / "while.md"
    extra.write_text(pydoc_text("while"), encoding="utf-8")
    curator.sign(extra, title="while")
    ingestor(settings).ingest([corpus])
    lines = settings.ledger_path.read_text().splitlines(keepends=True)
    head_path = Ledger(settings.ledger_path).head_path

    # Cut the last entry and write a matching (unsigned) head.
    settings.ledger_path.write_text("".join(lines[:-1]))
    last = json.loads(lines[-2])
    head_path.write_text(json.dumps({"index": last["index"], "hash": last["hash"]}) + "\n")
    report = ledger(settings).verify()
    assert not report.ok and any("not signed" in p for p in report.problems)
    with pytest.raises(LedgerError) as refused:
        ingestor(settings).ingest([corpus])
    assert refused.value.code == "ledger_corrupt"
    assert verify_cli()[0] == 1


def test_rollback_to_an_older_signed_head_is_caught(settings: Settings, corpus: Path, curator: Curator) -> None:
    settings.answer.relevance_threshold = 0.05  # the hashing fake embedder gives low cosines
    ingestor(settings).ingest([corpus])
    old_ledger, old_head = settings.ledger_path.read_bytes(), Ledger(settings.ledger_path).head_path.read_bytes()
    code, _ = verify_cli()
    assert code == 0
    pinned = CliRunner().invoke(app, ["ledger", "head"]).output.strip()
    extra = corpus / "while.md"
    extra.write_text(pydoc_text("while"), encoding="utf-8")
    curator.sign(extra, title="while")
    ingestor(settings).ingest([corpus])
    later = CliRunner().invoke(app, ["ledger", "head"]).output.strip()
    assert verify_cli("--expect", pinned)[0] == 0  # the ledger still extends the older head
    service = build_answer_service(settings, embedder=FakeEmbedder(), generator=FirstSentenceGenerator())
    assert service.answer("What does the pass statement do?").citations

    # Put back the older ledger and its (validly signed) head: caught by the head the key remembers,
    # and by the operator's copy of the later head.
    settings.ledger_path.write_bytes(old_ledger)
    Ledger(settings.ledger_path).head_path.write_bytes(old_head)
    assert any("cut" in p for p in ledger(settings).verify().problems)
    assert any("cut" in p for p in ledger(settings).verify(expect=parse_expected_head(later)).problems)
    code, output = verify_cli("--expect", later)
    assert code == 1 and "expected head" in output
    with pytest.raises(LedgerError):
        ingestor(settings).ingest([corpus])
    # The running service, which checks heads with the public key alone, serves nothing from the older copy.
    result = service.answer("What does the pass statement do?")
    assert result.abstained and not result.retrieved


def test_deleted_ledger_beside_a_full_store_is_an_error(settings: Settings, corpus: Path) -> None:
    ingestor(settings).ingest([corpus])
    settings.ledger_path.unlink()
    Ledger(settings.ledger_path).head_path.unlink()
    code, output = verify_cli()
    assert code == 1 and "does not commit" in output
    with pytest.raises(LedgerError) as refused:
        ingestor(settings).ingest([corpus])
    assert refused.value.code == "ledger_corrupt"


def test_an_emptied_data_dir_is_refused_until_the_operator_resets(settings: Settings, corpus: Path) -> None:
    """An emptied data dir is not a new knowledge base: a write would forget the head the key signed, and an
    older copy put back afterwards would pass. Only `rag ledger reset` starts afresh."""
    ingestor(settings).ingest([corpus])
    shutil.rmtree(settings.data_dir)
    SharedSystemClient.clear_system_cache()  # as a new process would: Chroma caches the deleted store in memory
    with pytest.raises(LedgerError) as refused:
        ingestor(settings).ingest([corpus])
    assert refused.value.code == "ledger_corrupt" and "ledger reset" in refused.value.message
    assert LedgerKey(settings.ledger_key_path).remembered(settings.ledger_path) is not None  # not forgotten
    result = CliRunner().invoke(app, ["ledger", "reset", "--yes"])
    assert result.exit_code == 0, result.output
    report = ingestor(settings).ingest([corpus])
    assert len(report.accepted) == 3 and verify_cli()[0] == 0


def test_forged_entries_after_the_head_are_cut_before_an_append(settings: Settings, corpus: Path) -> None:
    ingestor(settings).ingest([corpus])
    forged = Ledger(settings.ledger_path)  # no key: appends entries but leaves the head file unsigned...
    head = forged.head_path.read_bytes()
    forged.append({"action": "remove", "doc_id": "pass.md", "sha256": "0" * 64})
    forged.head_path.write_bytes(head)  # ...so put the signed head back, as an attacker without the key would
    assert any("after the recorded head" in p for p in ledger(settings).verify().problems)
    ingestor(settings).ingest([corpus])  # cuts the unacknowledged entry, then appends nothing new
    assert "pass.md" in ledger(settings).live() and ledger(settings).verify().ok


def plant_forged_document(settings: Settings) -> str:
    """What an attacker with write access to the data dir (not the ledger key) can do: plant a chunk and
    append an `add` entry committing to it, the chain intact, the head file rewritten without a signature."""
    keyless = Ledger(settings.ledger_path)
    victim = keyless.live()["pass.md"]
    sha = hashlib.sha256(FORGED.encode()).hexdigest()
    forged_id = chunk_id("owls.md", sha, 0)
    store = build_store(settings)
    original = store.get([chunk_id("pass.md", victim.sha256, 0)])[0].metadata
    facts = {"doc_id": "owls.md", "path": "owls.md", "title": "Lighthouse board minutes", "doc_sha256": sha}
    metadata = {**original, **facts, "chunk_sha256": sha}
    store._collection.add(
        ids=[forged_id], documents=[FORGED], metadatas=[metadata], embeddings=FakeEmbedder().embed([FORGED])
    )
    keyless.append(
        {
            **{k: victim.entry[k] for k in ("authors", "license", "signer_keyid", "signer_name", "manifest_sha256")},
            "action": "add",
            "doc_id": "owls.md",
            "sha256": sha,
            "chunks": 1,
            "chars": len(FORGED),
            "origin": "human",
            "title": "Lighthouse board minutes",
            "chunk_sha256": [sha],
        }
    )
    return forged_id


@pytest.mark.parametrize("head", ["unsigned", "deleted"])
def test_a_forged_entry_is_never_served_whatever_the_head_file_says(lenient: Settings, corpus: Path, head: str) -> None:
    ingestor(lenient).ingest([corpus])
    service = build_answer_service(lenient, embedder=FakeEmbedder(), generator=FirstSentenceGenerator())
    assert not service.answer("What does the pass statement do?").abstained
    forged = plant_forged_document(lenient)
    if head == "deleted":
        Ledger(lenient.ledger_path).head_path.unlink()
    result = service.answer("Who pays the barn owls a week, the lighthouse board?")
    assert result.abstained and "lighthouse" not in result.answer and not result.retrieved
    # Nothing is served until the head verifies again, not even what was signed before.
    assert service.answer("What does the pass statement do?").abstained
    code, output = verify_cli()
    assert code == 1 and ("not signed" in output or "head file is missing" in output)
    assert forged not in {c.chunk_id for c in result.citations}


def test_the_gate_checks_the_head_with_the_public_key_alone(lenient: Settings, corpus: Path) -> None:
    ingestor(lenient).ingest([corpus])
    public = lenient.ledger_key_path.with_suffix(".pub")
    assert public.exists()
    # The serving process needs only the public half: take the private key away.
    lenient.ledger_key_path.rename(lenient.ledger_key_path.with_name("elsewhere.key"))
    service = build_answer_service(lenient, embedder=FakeEmbedder(), generator=FirstSentenceGenerator())
    assert not service.answer("What does the pass statement do?").abstained

    # A head signed with another key (one the attacker made) is refused: nothing is served.
    plant_forged_document(lenient)
    mallory = Ledger(lenient.ledger_path, LedgerKey(lenient.data_dir / "mallory" / "ledger.key"))
    mallory.sign_tail()
    result = service.answer("Who pays the barn owls a week, the lighthouse board?")
    assert result.abstained and not result.retrieved
    assert service.answer("What does the pass statement do?").abstained


FORGED_FACTS = {
    "title": "Official PSF security advisory",
    "license": "CC0-1.0",
    "signer_name": "Guido van Rossum",
    "authors": "Guido",
    "source_uri": "https://evil.example",
}


def test_forged_citation_metadata_is_never_shown_and_verify_names_it(lenient: Settings, corpus: Path) -> None:
    ingestor(lenient).ingest([corpus])
    service = build_answer_service(lenient, embedder=FakeEmbedder(), generator=FirstSentenceGenerator())
    question = "What does the pass statement do?"
    (before,) = service.answer(question).citations
    assert (before.signer_name, before.license) == ("test-curator", "PSF-2.0")

    store = build_store(lenient)
    forged = sorted(store.ids())
    for chunk in store.get(forged):
        store._collection.update(ids=[chunk.id], metadatas=[{**chunk.metadata, **FORGED_FACTS}])
    result = service.answer(question)
    assert result.abstained and not result.retrieved and not result.citations
    # Filters apply to what the ledger commits: the forged title matches nothing either.
    assert not service.answer(question, filters={"title": FORGED_FACTS["title"]}).retrieved

    code, output = verify_cli()
    assert code == 1 and "metadata differs from the ledger entry" in output and forged[0] in output
    assert all(field in output for field in FORGED_FACTS)

    # The next ingest repairs the rows from the signed sources; citations show the committed fields again.
    report = ingestor(lenient).ingest([corpus])
    assert report.repaired_chunks == len(forged) and len(report.replaced) == 3
    assert verify_cli()[0] == 0
    (after,) = service.answer(question).citations
    assert (after.title, after.signer_name, after.license) == (before.title, "test-curator", "PSF-2.0")


def test_citations_and_filters_use_the_committed_fields(lenient: Settings, corpus: Path) -> None:
    ingestor(lenient).ingest([corpus])
    service = build_answer_service(lenient, embedder=FakeEmbedder(), generator=FirstSentenceGenerator())
    result = service.answer("What does the pass statement do?", filters={"signer_name": "test-curator"})
    (citation,) = result.citations
    entry = Ledger(lenient.ledger_path).live()[citation.doc_id].entry
    assert (citation.title, citation.license, citation.signer_keyid) == (
        entry["title"],
        entry["license"],
        entry["signer_keyid"],
    )
    assert service.answer("What does the pass statement do?", filters={"signer_name": "mallory"}).abstained
