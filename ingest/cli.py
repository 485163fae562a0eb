"""Curator commands: keys, sign, verify, ingest, import, remove, documents, ledger. Thin shells."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from ingest import provenance
from ingest.admit import held_views, synthetic_cell
from ingest.corpus_report_view import corpus_app
from ingest.files import printable_path
from ingest.ledger import Ledger
from ingest.registry_cli import registry_app
from ingest.trust import (
    TrustStore,
    add_trusted_key,
    key_id,
    load_private_key,
    parse_time,
    read_trust_file,
    write_key_pair,
)
from rag.errors import InvalidInputError
from rag.settings import Settings

console = Console()
keys_app = typer.Typer(help="Curator signing keys.", no_args_is_help=True)
import_app = typer.Typer(help="Import document collections as signed documents.", no_args_is_help=True)
ledger_app = typer.Typer(help="The append-only, hash-chained ingest ledger.", no_args_is_help=True)

Origins = ("human", "human-edited-ai", "ai-generated")


def _settings(ctx: typer.Context) -> Settings:
    settings: Settings = ctx.obj
    return settings


@keys_app.command("new")
def keys_new(
    name: Annotated[str, typer.Argument(help="Curator name; the files are NAME.key and NAME.pub.")],
    out: Annotated[Path, typer.Option("--out", help="Folder for the key pair.")],
    trust: Annotated[Path | None, typer.Option("--trust", help="Also add the public key to this trust store.")] = None,
    expires: Annotated[str | None, typer.Option(help="Expiry for the trust entry (RFC 3339).")] = None,
) -> None:
    """Create an Ed25519 key pair (private key mode 0600, never overwritten).

    Example: rag keys new alice --out ~/.rag-keys --trust knowledge_base/trust.json
    """
    if expires is not None:
        try:
            parse_time(expires)
        except ValueError:
            raise typer.BadParameter(f"{expires!r} is not an RFC 3339 time", param_hint="--expires") from None
    if trust is not None and os.path.lexists(trust):
        read_trust_file(trust)  # a trust file that cannot take the key is refused before a key exists
    private_path, public = write_key_pair(name, out)
    console.print(f"private key: {escape(str(private_path))} (keep it secret)\nkey id: {key_id(public)}")
    if trust is not None:
        add_trusted_key(trust, name, public, expires=expires)
        console.print(f"trusted in {escape(str(trust))}")


@keys_app.command("revoke")
def keys_revoke(
    ctx: typer.Context,
    keyid: Annotated[str, typer.Argument(help="Key id to revoke (or an unambiguous prefix of 8+ hex digits).")],
    trust: Annotated[
        Path | None,
        typer.Option(
            "--trust", help="Configured trust file to record it in (default: the local one); any other is refused."
        ),
    ] = None,
    reason: Annotated[str | None, typer.Option("--reason", help="Why, kept in the trust file and the ledger.")] = None,
) -> None:
    """Revoke a signer: recorded in the trust file and the ledger; the next ingest withdraws its documents.

    The ledger entry makes it stick: the key stays revoked for ingest and answers whatever the trust files
    say later. Run it again if it was interrupted: it records whatever is missing.

    Example: rag keys revoke 3f2a9c1e --reason "laptop stolen"
    """
    from ingest.pipeline import Ingestor

    settings = _settings(ctx)
    target = trust or settings.local_trust_path
    entry, new = Ingestor(settings, None, None).revoke(keyid, target, reason)
    state = "revoked" if new else "already revoked"
    console.print(f"{state}: {escape(entry.name)} ({entry.keyid[:16]}…) in {escape(str(target))}")
    if new:
        console.print("the next `rag ingest` withdraws the documents this key signed")


def sign(
    ctx: typer.Context,
    files: Annotated[
        list[Path], typer.Argument(help="Documents to sign (.md, .txt, .html).", exists=True, dir_okay=False)
    ],
    key: Annotated[Path, typer.Option("--key", help="Curator private key (PEM).")],
    author: Annotated[list[str], typer.Option("--author", help="Author of the text; repeat for several.")],
    license: Annotated[str, typer.Option("--license", help="SPDX licence id, e.g. CC-BY-4.0.")],
    origin: Annotated[str, typer.Option("--origin", help="human | human-edited-ai | ai-generated")],
    title: Annotated[str | None, typer.Option(help="Title (default: file name).")] = None,
    source_uri: Annotated[str | None, typer.Option("--source-uri", help="Where the text comes from.")] = None,
    root: Annotated[
        Path | None, typer.Option(help="Corpus root the subject name is relative to (default: the file's folder).")
    ] = None,
    curator: Annotated[str | None, typer.Option(help="Curator name (default: the key file's name).")] = None,
) -> None:
    """Sign documents: writes FILE.prov.json beside each one.

    Example: rag sign notes.md --key alice.key --author "Ada Lovelace" --license CC-BY-4.0 --origin human
    """
    if origin not in Origins:
        raise typer.BadParameter(f"must be one of {', '.join(Origins)}", param_hint="--origin")
    for hint, values in (("--author", author), ("--license", [license])):
        if not all(value.strip() for value in values):
            raise typer.BadParameter("cannot be blank", param_hint=hint)
    settings = _settings(ctx)
    private = load_private_key(key)
    # Every file is read and checked before any manifest is written: a refused file leaves nothing half signed.
    manifests = [
        provenance.sign_manifest(
            file,
            private,
            root=root,
            title=title,
            authors=author,
            license=license,
            origin=origin,  # type: ignore[arg-type]
            source_uri=source_uri,
            curator=curator or key.stem,
            max_bytes=settings.ingest.max_document_bytes,
        )
        for file in files
    ]
    for file, manifest in zip(files, manifests, strict=True):
        out = provenance.write_manifest(file, manifest)
        console.print(f"signed {escape(printable_path(file))} -> {escape(printable_path(out.name))}")


def _trust(settings: Settings, trust: Path | None) -> TrustStore:
    """The configured trust files, merged with `trust` if given (merging never loosens a configured entry)."""
    if trust is not None and not os.path.lexists(trust):
        raise InvalidInputError(f"The trust file {printable_path(trust)} does not exist.", code="path_not_found")
    return TrustStore.load(settings.trust_path, settings.local_trust_path, *([trust] if trust else []))


def verify(
    ctx: typer.Context,
    paths: Annotated[list[Path], typer.Argument(help="Documents or folders.")],
    trust: Annotated[Path | None, typer.Option(help="Extra trust file, merged with the configured ones.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Check documents without writing anything; exit 1 if any does not verify.

    Example: rag verify knowledge_base/examples/rejected
    """
    from ingest.pipeline import Ingestor

    settings = _settings(ctx)
    ingestor = Ingestor(settings, None, None, trust=_trust(settings, trust))
    verdicts = ingestor.verify(paths)
    if as_json:
        print(json.dumps([v.as_dict() for v in verdicts], indent=2))
    else:
        for v in verdicts:
            mark = "[green]ok[/green]      " if v.ok else f"[red]rejected[/red] {v.reason}"
            console.print(f"{mark}  {escape(v.path)}" + ("" if v.ok else f"  ({escape(v.detail)})"), soft_wrap=True)
    raise typer.Exit(0 if all(v.ok for v in verdicts) else 1)


def ingest(
    ctx: typer.Context,
    paths: Annotated[list[Path], typer.Argument(help="Documents or folders to ingest.")],
    trust: Annotated[
        Path | None,
        typer.Option(help="Extra trust file, merged with the configured ones (revocation and expiry still hold)."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as one JSON object.")] = False,
    allow_signer_change: Annotated[
        bool,
        typer.Option("--allow-signer-change", help="Let another signer replace a document (recorded in the ledger)."),
    ] = False,
) -> None:
    """Verify, chunk, embed and store documents; exit 1 if any was rejected.

    Documents of revoked signers are withdrawn first. A document admitted under one signer is replaced
    only under the same signer (otherwise `signer_changed`), unless --allow-signer-change.

    Example: rag ingest knowledge_base/examples/rejected ./my-docs
    """
    from ingest.pipeline import discover
    from rag.runtime import mmap_large_allocations
    from rag.wiring import build_ingestor

    # As in `rag serve`: blocks of 1 MiB or more (weights being converted, the detector's logits) go back to
    # the system when freed instead of staying in the heap (measured: ~400 MB less peak RSS, README "Speed").
    mmap_large_allocations()
    settings = _settings(ctx)
    total = len(discover(paths))  # a path that does not exist is refused before any store is opened
    ingestor = build_ingestor(settings, trust=_trust(settings, trust))
    with Progress(
        TextColumn("ingest"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        disable=as_json or total == 0,
        transient=False,
    ) as bar:
        task = bar.add_task("ingest", total=total)
        report = ingestor.ingest(
            paths, progress=lambda n: bar.advance(task, n), allow_signer_change=allow_signer_change
        )
    if as_json:
        print(json.dumps(report.as_dict()))
    else:
        _print_report(report.as_dict())
    raise typer.Exit(report.exit_code)


def _print_report(summary: dict[str, object]) -> None:
    table = Table(title="ingest summary", show_header=True)
    table.add_column("outcome")
    table.add_column("count", justify="right")
    for label, key in (
        ("accepted (new)", "accepted"),
        ("replaced", "replaced"),
        ("skipped, unchanged", "skipped_unchanged"),
        ("skipped, duplicate", "skipped_duplicate"),
        ("rejected", "rejected"),
        ("withdrawn", "withdrawn"),
    ):
        table.add_row(label, str(summary[key]))
    reasons = summary["rejected_by_reason"]
    assert isinstance(reasons, dict)
    for reason, count in reasons.items():
        table.add_row(f"  rejected: {reason}", str(count))
    table.add_row("chunks written", str(summary["chunks"]))
    table.add_row("seconds", str(summary["seconds"]))
    table.add_row("chunks/s", str(summary["chunks_per_s"]))
    console.print(table)
    rejections = summary["rejections"]
    assert isinstance(rejections, list)
    for item in rejections:
        line = f"[red]rejected[/red] {item['reason']:<18} {escape(item['path'])}  ({escape(item['detail'])})"
        console.print(line, soft_wrap=True)
    withdrawals = summary["withdrawals"]
    assert isinstance(withdrawals, list)
    for item in withdrawals:
        console.print(f"[yellow]withdrawn[/yellow] {item['reason']:<17} {escape(item['doc_id'])}", soft_wrap=True)


@import_app.command("pydoc")
def import_pydoc_cmd(
    out: Annotated[Path, typer.Option("--out", help="Folder to write the signed topics into.")],
    key: Annotated[Path, typer.Option("--key", help="Curator private key that signs them.")],
) -> None:
    """Import the Python Language Reference topics shipped with CPython, signed as human-written.

    Example: rag import pydoc --out .rag/corpus/pydoc --key .rag/keys/local-curator.key
    """
    from ingest.pydoc_import import import_pydoc

    written = import_pydoc(out, key)
    console.print(f"imported {len(written)} topics into {escape(str(out))}")


def remove(
    ctx: typer.Context, doc_id: Annotated[str, typer.Argument(help="Document id (see `rag documents`).")]
) -> None:
    """Remove a document and all its chunks (recorded in the ledger)."""
    from rag.wiring import build_ingestor

    doc = build_ingestor(_settings(ctx)).remove(doc_id)
    console.print(f"removed {escape(doc.doc_id)} ({doc.chunks} chunks)")


def documents(ctx: typer.Context, as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """List the documents in the knowledge base with their provenance, and those withdrawn."""
    from ingest.pipeline import Ingestor

    settings = _settings(ctx)
    docs = Ingestor(settings, None, None).documents(include_withdrawn=True) + held_views(settings)
    if as_json:
        print(json.dumps(docs, indent=2))
        return
    live = sum(d["status"] == "live" for d in docs)
    held = sum(d["status"] == "held" for d in docs)
    gone = len(docs) - live - held
    table = Table(
        title=f"{live} documents" + (f", {gone} withdrawn" if gone else "") + (f", {held} held" if held else "")
    )
    for column in ("doc_id", "status", "title", "origin", "license", "signer", "chunks", "synthetic", "sha256"):
        table.add_column(column)
    for d in docs:
        status = {"live": "live", "held": f"held: {d.get('held_reason')}"}.get(
            d["status"], f"withdrawn: {d.get('withdrawn_reason')}"
        )
        cells = (
            d["doc_id"],
            status,
            str(d["title"])[:40],
            str(d["origin"]),
            str(d["license"]),
            str(d["signer_name"]),
            str(d["chunks"]),
            synthetic_cell(d.get("synthetic")),
            str(d["sha256"])[:12],
        )
        table.add_row(*(escape(str(cell)) for cell in cells))  # names and titles are curators' text, not markup
    console.print(table)


def admit(
    ctx: typer.Context,
    doc_id: Annotated[str, typer.Argument(help="Id of a document held by the synthetic-text detector.")],
    path: Annotated[Path | None, typer.Argument(help="Where the document is now (default: where it was held).")] = None,
    curator: Annotated[str | None, typer.Option(help="Who admits it (default: the login name).")] = None,
) -> None:
    """Admit a document the detector held (policy quarantine): recorded in the ledger, then ingested.

    The admission covers the text that was held; an edited version is scored and held again.

    Example: rag admit notes/meeting.md --curator "Ada Lovelace"
    """
    import getpass

    from ingest.admit import admit as admit_held
    from rag.wiring import build_ingestor

    done = admit_held(build_ingestor(_settings(ctx)), doc_id, curator=curator or getpass.getuser(), path=path)
    recorded = "recorded in the ledger" if done.recorded else "already in the ledger"
    console.print(f"admitted {escape(done.doc_id)} (sha256 {done.sha256[:12]}, {recorded})")
    _print_report(done.report.as_dict())
    raise typer.Exit(done.report.exit_code)


def _ledger(settings: Settings) -> Ledger:
    from ingest.ledger_head import LedgerKey

    return Ledger(settings.ledger_path, LedgerKey(settings.ledger_key_path))


@ledger_app.command("verify")
def ledger_verify(
    ctx: typer.Context,
    expect: Annotated[
        str | None,
        typer.Option("--expect", help="A signed head from `rag ledger head` (the JSON, or a file holding it)."),
    ] = None,
    store: Annotated[bool, typer.Option(help="Also cross-check the vector store with the ledger.")] = True,
) -> None:
    """Check the hash chain, the signed head and the store; exit 1 naming every problem.

    The store must hold exactly the chunks the ledger's live documents commit to, each with the committed
    text hash. With --expect, the ledger must still extend that head (kept elsewhere by the operator).

    Example: rag ledger verify --expect ~/ledger-head-2025-06-01.json
    """
    from ingest.ledger_admin import check
    from ingest.ledger_head import parse_expected_head
    from rag.wiring import build_store

    settings = _settings(ctx)
    expected = parse_expected_head(expect) if expect is not None else None
    report = check(settings, _ledger(settings), build_store(settings) if store else None, expected)
    if report.ok:
        checked = " and store" if store else ""
        console.print(f"[green]ledger{checked} ok[/green]: {report.entries} entries, head {report.head[:16]}")
        return
    for problem in report.problems:
        console.print(f"[red]{escape(problem)}[/red]", soft_wrap=True)
    raise typer.Exit(1)


@ledger_app.command("head")
def ledger_head(ctx: typer.Context) -> None:
    """Print the signed ledger head (one line of JSON) to keep outside this machine.

    Later, `rag ledger verify --expect HEAD` checks that the ledger still extends it: nothing admitted
    or removed up to that point was cut or rewritten.

    Example: rag ledger head > ~/ledger-head-$(date +%F).json
    """
    ledger = _ledger(_settings(ctx))
    print(json.dumps(ledger.signed_head(), sort_keys=True))


@ledger_app.command("sign-head")
def ledger_sign_head(
    ctx: typer.Context,
    expect: Annotated[
        str | None,
        typer.Option("--expect", help="A signed head kept elsewhere that the ledger must still extend."),
    ] = None,
) -> None:
    """Sign the ledger's head once: for a ledger written before heads were signed, or whose head file was lost.

    Checks the hash chain (and that it reaches the head the key last signed, and --expect), then signs the
    last entry, making the ledger key if there is none. Signing vouches for every entry: look first.

    Example: rag ledger verify --no-store; rag ledger sign-head
    """
    from ingest.ledger_admin import ingest_lock, sign_head
    from ingest.ledger_head import parse_expected_head

    settings = _settings(ctx)
    ledger = _ledger(settings)
    with ingest_lock(settings.data_dir):
        signed = sign_head(ledger, parse_expected_head(expect) if expect is not None else None)
    if signed is None:
        console.print("the ledger head is already signed and the ledger verifies: nothing to do")
        return
    console.print(f"signed the ledger head at entry {signed[0] + 1} ({signed[1][:16]}) with {settings.ledger_key_path}")


@ledger_app.command("reset")
def ledger_reset(
    ctx: typer.Context,
    yes: Annotated[bool, typer.Option("--yes", help="Really delete them.")] = False,
) -> None:
    """Start the knowledge base afresh: deletes the ledger, its head, every stored chunk, the BM25 index and the
    quarantine report. Keys and trust files are kept. Documents must be ingested again.

    Example: rag ledger reset --yes
    """
    from ingest.ledger_admin import reset
    from rag.wiring import build_store

    settings = _settings(ctx)
    what = f"the ledger {settings.ledger_path}, its head, every chunk in the store and the BM25 index"
    if not yes:
        raise InvalidInputError(f"This deletes {what}; run again with --yes to do it.", code="confirmation_required")
    report = reset(settings, _ledger(settings), build_store(settings))
    console.print(f"deleted {report.entries} ledger entries and {report.chunks} stored chunks; ingest to start again")


@ledger_app.command("export")
def ledger_export(
    ctx: typer.Context,
    format: Annotated[str, typer.Option("--format", help="Only prov-json for now.")] = "prov-json",
) -> None:
    """Export the ledger as W3C PROV-JSON on standard output."""
    from ingest.prov_export import ledger_to_prov

    if format != "prov-json":
        raise typer.BadParameter("only prov-json is supported", param_hint="--format")
    print(ledger_to_prov(Ledger(_settings(ctx).ledger_path)).serialize(format="json", indent=2))


def register(app: typer.Typer) -> None:
    app.add_typer(keys_app, name="keys")
    app.add_typer(import_app, name="import")
    app.add_typer(ledger_app, name="ledger")
    app.add_typer(corpus_app, name="corpus")
    app.add_typer(registry_app, name="registry")
    for command in (sign, verify, ingest, remove, documents, admit):
        app.command()(command)
