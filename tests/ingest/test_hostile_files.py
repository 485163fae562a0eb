"""Hostile files at the curator side: each is a rejection with a reason code, the run goes on, the ledger says so.

Links, special files, folders named like documents, unreadable, non-UTF-8 and empty files, files that change
while they are read, and manifests that are not files. Nothing here may hang, raise, or write through a link.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ingest.chunking import Chunker
from ingest.commitments import cross_check
from ingest.decisions import Decider
from ingest.files import FileRefusedError, read_regular
from ingest.ledger import Ledger
from ingest.pipeline import Ingestor, discover
from ingest.provenance import manifest_path, sign_document, text_digest, verify_document
from ingest.trust import TrustStore
from rag.errors import InvalidInputError
from rag.settings import Settings
from tests.conftest import Curator, pydoc_text
from tests.fakes import FakeEmbedder, InMemoryStore


def write(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def rejections(report_rejected: list[dict[str, object]]) -> dict[str, object]:
    return {str(item["doc_id"]): item["reason"] for item in report_rejected}


def ledger_rejections(settings: Settings) -> dict[str, object]:
    return {e["doc_id"]: e["reason"] for e in Ledger(settings.ledger_path).entries() if e["action"] == "reject"}


@pytest.fixture
def hostile(tmp_path: Path, curator: Curator) -> Path:
    """A corpus folder holding one good document beside every kind of hostile entry."""
    root = tmp_path / "corpus"
    curator.sign(write(root / "ok.md", pydoc_text("pass")), root=root)
    outside = curator.sign(write(tmp_path / "elsewhere" / "out.md", pydoc_text("del")))
    (root / "link_out.md").symlink_to(outside.with_name("out.md"))
    (root / "link_in.md").symlink_to(root / "ok.md")
    (root / "loop.md").symlink_to(root / "loop.md")
    (root / "dangling.md").symlink_to(root / "nowhere.md")
    (root / "linked_folder").symlink_to(outside.parent, target_is_directory=True)
    os.mkfifo(root / "fifo.md")
    curator.sign(write(root / "folder.md" / "inner.md", pydoc_text("assert")), root=root)
    write(root / "latin1.md", "caf\u00e9 au lait".encode("latin-1"))
    write(root / "empty.md", "")
    write(root / "blank.txt", " \n\t\u3000\u200b\ufeff\r\n")
    curator.sign(write(root / "scripts.html", "<html><script>var x = 1;</script><style>p {}</style></html>"))
    curator.sign(write(root / "[red]markup[/red].md", pydoc_text("raise")), root=root)
    with open(os.path.join(os.fsencode(root), b"caf\xe9.md"), "wb") as handle:  # a file name that is not UTF-8
        handle.write(pydoc_text("break").encode())
    return root


EXPECTED = {
    "link_out.md": "outside_root",
    "link_in.md": "not_a_regular_file",
    "loop.md": "not_a_regular_file",
    "dangling.md": "not_a_regular_file",
    "linked_folder": "outside_root",
    "fifo.md": "not_a_regular_file",
    "folder.md": "not_a_regular_file",
    "latin1.md": "not_utf8",
    "empty.md": "empty_document",
    "blank.txt": "empty_document",
    "scripts.html": "empty_document",
    "caf\\xe9.md": "invalid_name",
}


def test_every_hostile_entry_is_refused_with_its_code_and_the_run_goes_on(settings: Settings, hostile: Path) -> None:
    store = InMemoryStore()
    report = Ingestor(settings, store, FakeEmbedder()).ingest([hostile])
    assert rejections(report.rejected) == EXPECTED
    assert sorted(a["doc_id"] for a in report.accepted) == ["[red]markup[/red].md", "folder.md/inner.md", "ok.md"]
    # The ledger records every refusal, and the store holds exactly what the ledger commits.
    assert ledger_rejections(settings) == EXPECTED
    ledger = Ledger(settings.ledger_path)
    assert ledger.verify().ok and not cross_check(ledger.live(), store)
    quarantined = json.loads(settings.quarantine_path.read_text())
    assert {item["reason"] for item in quarantined.values()} == set(EXPECTED.values())
    # Nothing outside the root was read: the linked folder's document is not in the store.
    assert not any("out.md" in chunk_id for chunk_id in store.ids())


def test_verify_on_the_cli_names_each_refusal_in_one_line(settings: Settings, hostile: Path) -> None:
    from rag.cli import app

    result = CliRunner().invoke(app, ["verify", str(hostile)], terminal_width=100)
    assert result.exit_code == 1 and "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.startswith("rejected")]
    assert len(lines) == len(EXPECTED)
    assert "[red]markup[/red].md" in result.output  # a name is shown as written, never read as markup
    as_json = CliRunner().invoke(app, ["verify", str(hostile), "--json"])
    verdicts = {v["doc_id"]: v["reason"] for v in json.loads(as_json.output) if v["verdict"] == "rejected"}
    assert verdicts == EXPECTED


def test_a_path_through_dotdot_is_outside_the_root(settings: Settings, curator: Curator, tmp_path: Path) -> None:
    root = tmp_path / "corpus"
    root.mkdir()
    escape = curator.sign(write(tmp_path / "secret.md", pydoc_text("pass"))).with_name("secret.md")
    trust = TrustStore.load(settings.trust_path)
    verdict = verify_document(root / ".." / "secret.md", root, trust, max_bytes=10**6)
    assert (verdict.ok, verdict.reason, verdict.doc_id) == (False, "outside_root", "../secret.md")
    report = Ingestor(settings, InMemoryStore(), FakeEmbedder()).ingest([], documents=[(escape, root)])
    assert rejections(report.rejected) == {"../secret.md": "outside_root"}
    assert ledger_rejections(settings) == {"../secret.md": "outside_root"}


def test_a_special_file_given_by_name_is_refused_not_missing(settings: Settings, tmp_path: Path) -> None:
    fifo = tmp_path / "pipe.md"
    os.mkfifo(fifo)
    assert discover([fifo]) == [(fifo, tmp_path)]
    report = Ingestor(settings, InMemoryStore(), FakeEmbedder()).ingest([fifo])
    assert rejections(report.rejected) == {"pipe.md": "not_a_regular_file"}
    with pytest.raises(InvalidInputError) as missing:
        discover([tmp_path / "nope.md"])
    assert missing.value.code == "path_not_found"


def test_a_file_that_cannot_be_read_is_unreadable(
    settings: Settings, curator: Curator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    doc = curator.sign(write(tmp_path / "c" / "a.md", pydoc_text("pass"))).with_name("a.md")
    real_open = os.open

    def denied(path: object, flags: int, *args: object, **kwargs: object) -> int:
        if Path(os.fsdecode(path)) == doc:  # type: ignore[arg-type]
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, flags, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "open", denied)
    report = Ingestor(settings, InMemoryStore(), FakeEmbedder()).ingest([doc.parent])
    assert rejections(report.rejected) == {"a.md": "unreadable"}
    assert "permission denied" in report.rejected[0]["detail"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_a_file_without_read_permission_is_unreadable(settings: Settings, curator: Curator, tmp_path: Path) -> None:
    doc = curator.sign(write(tmp_path / "c" / "a.md", pydoc_text("pass"))).with_name("a.md")
    doc.chmod(0)
    report = Ingestor(settings, InMemoryStore(), FakeEmbedder()).ingest([doc.parent])
    assert rejections(report.rejected) == {"a.md": "unreadable"}


def test_the_bytes_verified_are_the_bytes_chunked_and_embedded(
    settings: Settings, curator: Curator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The file is swapped for other text right after it was verified: what is stored is what was verified."""
    original = pydoc_text("pass")
    doc = curator.sign(write(tmp_path / "c" / "a.md", original)).with_name("a.md")
    verify_one = Decider.verify_one

    def then_swap(self: Decider, document: Path, root: Path):  # type: ignore[no-untyped-def]
        verdict = verify_one(self, document, root)
        document.write_text("SWAPPED after verification: ignore the signed text.")
        return verdict

    monkeypatch.setattr(Decider, "verify_one", then_swap)
    store, embedder = InMemoryStore(), FakeEmbedder()
    report = Ingestor(settings, store, embedder).ingest([doc.parent])
    assert [a["doc_id"] for a in report.accepted] == ["a.md"]
    texts = [chunk.text for chunk in store.get(sorted(store.ids()))]
    embedded = [text for call in embedder.calls for text in call]
    assert texts == embedded and not any("SWAPPED" in text for text in embedded)
    expected = Chunker(settings.ingest.chunk_size, settings.ingest.chunk_overlap).split(original, markdown=True)
    assert texts == [piece.text for piece in expected]
    (live,) = Ledger(settings.ledger_path).live().values()
    assert live.sha256 == text_digest(original) and live.chunk_hashes == [piece.sha256 for piece in expected]


@pytest.mark.parametrize("change", ["replaced", "grew"])
def test_a_file_changed_between_look_and_open_is_refused(
    settings: Settings, curator: Curator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, change: str
) -> None:
    doc = curator.sign(write(tmp_path / "c" / "a.md", pydoc_text("pass"))).with_name("a.md")
    settings.ingest.max_document_bytes = doc.stat().st_size + 10
    real_open = os.open

    def meddle(path: object, flags: int, *args: object, **kwargs: object) -> int:
        if Path(os.fsdecode(path)) == doc:  # type: ignore[arg-type]
            if change == "replaced":
                write(tmp_path / "other.md", "other text").replace(doc)
            else:
                with open(doc, "a") as handle:
                    handle.write("x" * 100)
        return real_open(path, flags, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "open", meddle)
    report = Ingestor(settings, InMemoryStore(), FakeEmbedder()).ingest([doc.parent])
    expected = "not_a_regular_file" if change == "replaced" else "too_large"
    assert rejections(report.rejected) == {"a.md": expected}


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda p: os.mkfifo(p), "malformed_manifest"),
        (lambda p: p.mkdir(), "malformed_manifest"),
        (lambda p: p.write_bytes(b"{" + b" " * (1 << 20) + b"}"), "malformed_manifest"),
        (lambda p: p.write_bytes(b"\xff\xfe{}"), "malformed_manifest"),
        (lambda p: p.write_bytes(b"[" * 100_000), "malformed_manifest"),
    ],
    ids=["fifo", "folder", "huge", "not-utf8", "deep"],
)
def test_a_manifest_that_is_not_a_small_regular_file_is_refused(
    settings: Settings,
    tmp_path: Path,
    make,
    reason: str,  # type: ignore[no-untyped-def]
) -> None:
    doc = write(tmp_path / "c" / "a.md", pydoc_text("pass"))
    make(manifest_path(doc))
    report = Ingestor(settings, InMemoryStore(), FakeEmbedder()).ingest([doc.parent])
    assert rejections(report.rejected) == {"a.md": reason}


def test_a_linked_manifest_is_not_followed(settings: Settings, curator: Curator, tmp_path: Path) -> None:
    doc = curator.sign(write(tmp_path / "c" / "a.md", pydoc_text("pass"))).with_name("a.md")
    kept = manifest_path(doc).rename(tmp_path / "kept.prov.json")
    manifest_path(doc).symlink_to(kept)
    report = Ingestor(settings, InMemoryStore(), FakeEmbedder()).ingest([doc.parent])
    assert rejections(report.rejected) == {"a.md": "malformed_manifest"}


# --- signing ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("make", "code"),
    [
        (lambda p: write(p, b"\xff\xfe\x00binary"), "not_utf8"),
        (lambda p: write(p, ""), "empty_document"),
        (lambda p: write(p, "\n \t\u200b\n"), "empty_document"),
        (lambda p: os.mkfifo(p), "not_a_regular_file"),
        (lambda p: p.mkdir(parents=True), "not_a_regular_file"),
        (lambda p: p.symlink_to(write(p.with_name("target.md"), "text")), "not_a_regular_file"),
    ],
    ids=["not-utf8", "empty", "blank", "fifo", "folder", "link"],
)
def test_signing_refuses_what_verification_would_and_writes_nothing(
    curator: Curator,
    tmp_path: Path,
    make,
    code: str,  # type: ignore[no-untyped-def]
) -> None:
    doc = tmp_path / "c" / "a.md"
    doc.parent.mkdir(parents=True, exist_ok=True)
    make(doc)
    with pytest.raises(InvalidInputError) as refused:
        curator.sign(doc)
    assert refused.value.code == code
    assert not os.path.lexists(manifest_path(doc))


def test_signing_outside_the_root_is_refused(curator: Curator, tmp_path: Path) -> None:
    doc = write(tmp_path / "a" / "doc.md", pydoc_text("pass"))
    with pytest.raises(InvalidInputError) as refused:
        curator.sign(doc, root=tmp_path / "b")
    assert refused.value.code == "outside_root" and not manifest_path(doc).exists()


def test_signing_replaces_a_link_at_the_manifest_name_and_never_writes_through_it(
    curator: Curator, tmp_path: Path
) -> None:
    victim = write(tmp_path / "victim.txt", "keep me")
    doc = write(tmp_path / "c" / "a.md", pydoc_text("pass"))
    manifest_path(doc).symlink_to(victim)
    sign_document(doc, curator.key, origin="human", curator="t", authors=["a"], license="PSF-2.0")
    assert victim.read_text() == "keep me"
    assert not manifest_path(doc).is_symlink() and json.loads(manifest_path(doc).read_text())["signatures"]


def test_read_regular_refuses_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    for follow in (False, True):
        with pytest.raises(FileRefusedError) as refused:
            read_regular(fifo, max_bytes=10, follow_symlinks=follow)
        assert refused.value.code == "not_a_regular_file" and "FIFO" in refused.value.message
    with pytest.raises(FileRefusedError) as device:
        read_regular(Path("/dev/zero"), max_bytes=10, follow_symlinks=True)
    assert device.value.code == "not_a_regular_file"


# --- bad input loses nothing ------------------------------------------------------------------------------


def test_a_crash_in_a_hostile_run_leaves_store_and_ledger_consistent(settings: Settings, hostile: Path) -> None:
    """The store fails on the second batch of a run full of hostile files: what was written is committed or
    repaired, and a second run records every refusal and admits the rest."""
    settings.ingest.flush_chunks = 1
    store = InMemoryStore()
    upsert, calls = store.upsert, []

    def failing(chunks, embeddings):  # type: ignore[no-untyped-def]
        calls.append(1)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        upsert(chunks, embeddings)

    store.upsert = failing  # type: ignore[method-assign]
    with pytest.raises(OSError):
        Ingestor(settings, store, FakeEmbedder()).ingest([hostile])
    ledger = Ledger(settings.ledger_path)
    assert ledger.verify().ok and not cross_check(ledger.live(), store)
    store.upsert = upsert  # type: ignore[method-assign]
    report = Ingestor(settings, store, FakeEmbedder()).ingest([hostile])
    assert rejections(report.rejected) == EXPECTED and ledger_rejections(settings) == EXPECTED
    assert len(Ledger(settings.ledger_path).live()) == 3 and not cross_check(Ledger(settings.ledger_path).live(), store)


# --- admitting a held document, and a damaged quarantine report ----------------------------------------------


def hold(settings: Settings, doc_id: str, path: Path) -> None:
    """Put `doc_id` in the quarantine report as the synthetic-text detector would."""
    settings.quarantine_path.parent.mkdir(parents=True, exist_ok=True)
    item = {"doc_id": doc_id, "path": str(path), "reason": "synthetic_suspected", "sha256": None, "detail": "held"}
    settings.quarantine_path.write_text(json.dumps({str(path): item}))


@pytest.mark.parametrize(
    ("given", "code"),
    [("elsewhere/a.md", "path_mismatch"), ("a.md", "path_mismatch"), ("sub/fifo", "not_a_regular_file")],
)
def test_admitting_a_held_document_checks_the_path_it_is_given(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, given: str, code: str
) -> None:
    from ingest.admit import admit

    monkeypatch.chdir(tmp_path)
    write(tmp_path / "elsewhere" / "a.md", pydoc_text("pass"))
    write(tmp_path / "a.md", pydoc_text("pass"))
    (tmp_path / "sub").mkdir()
    os.mkfifo(tmp_path / "sub" / "fifo")
    doc_id = "sub/fifo" if given == "sub/fifo" else "deep/sub/a.md"
    hold(settings, doc_id, tmp_path / "gone.md")
    ingestor = Ingestor(settings, InMemoryStore(), FakeEmbedder())
    with pytest.raises(InvalidInputError) as refused:
        admit(ingestor, doc_id, curator="t", path=Path(given))
    assert refused.value.code == code
    assert not any(e["action"] == "admit" for e in Ledger(settings.ledger_path).entries())


def test_a_damaged_quarantine_report_is_rewritten_not_fatal(settings: Settings, corpus: Path) -> None:
    from ingest.admit import held_documents
    from rag.cli import app

    settings.quarantine_path.parent.mkdir(parents=True, exist_ok=True)
    for damage in (b"{not json", b"[1, 2]", b'{"x": 5}', b"\xff\xfe"):
        settings.quarantine_path.write_bytes(damage)
        assert held_documents(settings) == []
        listed = CliRunner().invoke(app, ["documents", "--json"])
        assert listed.exit_code == 0 and json.loads(listed.stdout) == []
    write(corpus / "unsigned.md", pydoc_text("while"))
    Ingestor(settings, InMemoryStore(), FakeEmbedder()).ingest([corpus])
    assert list(json.loads(settings.quarantine_path.read_text())) == [str(corpus / "unsigned.md")]
