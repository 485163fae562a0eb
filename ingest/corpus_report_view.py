"""`rag corpus report`: read the ledger and the store, then a table, JSON, or an HTML page with plots."""

from __future__ import annotations

import base64
import html
import io
import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from ingest.corpus_report import Baseline, ChunkText, build_report, latest_baseline
from ingest.ledger import Ledger
from rag.errors import InvalidInputError
from rag.settings import Settings

if TYPE_CHECKING:
    from rag.protocols import VectorStore

corpus_app = typer.Typer(help="The knowledge base over its versions.", no_args_is_help=True)
console = Console()
PLOTTED = [
    ("documents", "documents"),
    ("characters", "characters"),
    ("human_share", "human share (chars)"),
    ("distinct_1", "distinct-1 (per 1,000 words)"),
    ("distinct_2", "distinct-2 (per 1,000 words)"),
    ("mattr", "MATTR (window 500)"),
    ("compression_ratio", "compression ratio (raw / zlib)"),
    ("near_duplicate_rate", "near-duplicate rate (chunks)"),
    ("embedding_spread", "embedding spread (mean cosine distance to centroid)"),
    ("tail_coverage", "tail coverage (rare words kept)"),
    ("baseline_tail_kept", "baseline's rare words kept"),
    ("topic_clusters_covered", "baseline's topic clusters covered (k-means)"),
    ("text_coverage", "chunks whose text the store still holds"),
]


def baseline_path(settings: Settings) -> Path:
    """Where `--pin-baseline` keeps the reference version (its figures and rare words)."""
    return settings.data_dir / "corpus_baseline.json"


def collect(
    settings: Settings, *, gap_s: float = 60.0, pin_baseline: bool = False, store: VectorStore | None = None
) -> dict[str, Any]:
    """The report over every version of the ledger up to its signed head (`ledger_corrupt` if it does not
    verify), with the texts and embeddings the store holds now, compared with the pinned baseline if there is
    one; `pin_baseline` first pins the latest version as the baseline. `store`: the serving process's own."""
    from ingest.commitments import signed_entries
    from rag.wiring import build_store

    entries = signed_entries(Ledger(settings.ledger_path), settings.ledger_public_key)
    chunks: dict[str, ChunkText] = {}
    if store is None and (settings.chroma_path.exists() or settings.store.url):
        store = build_store(settings)
    if store is not None:
        for chunk, embedding in store.contents():
            digest = str(chunk.metadata.get("chunk_sha256", ""))
            if digest:
                chunks[digest] = ChunkText(chunk.text, embedding)
    cfg, floor, path = settings.corpus_report, settings.ingest.human_floor, baseline_path(settings)
    if pin_baseline:
        latest = latest_baseline(entries, chunks, cfg, human_floor=floor, gap_s=gap_s)
        if latest is not None:
            tmp = path.with_name(path.name + ".tmp")
            tmp.write_text(json.dumps(latest.as_dict(), indent=1) + "\n")
            tmp.replace(path)
    baseline = Baseline.load(json.loads(path.read_text())) if path.exists() else None
    return build_report(entries, chunks, cfg, human_floor=floor, gap_s=gap_s, baseline=baseline)


def render_table(report: dict[str, Any], out: Console) -> None:
    versions = report["versions"]
    base = report.get("baseline")
    against = f", baseline v{base['version']}{' (pinned)' if base['pinned'] else ''}" if base else ""
    table = Table(title=f"Corpus over {len(versions)} versions (human floor {report['human_floor']}{against})")
    table.add_column("figure")
    for v in versions:
        table.add_column(f"v{v['version']}\n{v['time'][:16]}", justify="right")
    rows = [("chunks", "chunks"), *PLOTTED]
    for key, label in rows:
        table.add_row(label, *(_cell(v.get(key)) for v in versions))
    for key in ("origins", "signers", "licenses"):
        table.add_row(key, *(", ".join(f"{k}: {n}" for k, n in v[key].items()) for v in versions))
    table.add_row("synthetic score", *(_synthetic_cell(v.get("synthetic")) for v in versions))
    out.print(table)
    if report["warnings"]:
        for warning in report["warnings"]:
            out.print(f"[bold yellow]warning[/] {warning}")
    else:
        out.print("no warnings")
    out.print(f"[dim]{report['approximate']}[/]")


def write_html(report: dict[str, Any], path: Path) -> None:
    """One self-contained page: every figure over the versions (matplotlib, inline PNG), then the warnings."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    versions = report["versions"]
    xs = [v["version"] for v in versions]
    images = []
    for key, label in PLOTTED:
        ys = [v.get(key) for v in versions]
        fig, ax = plt.subplots(figsize=(5, 2.6))
        ax.plot(xs, [float("nan") if y is None else y for y in ys], marker="o")
        if key == "human_share":
            ax.axhline(report["human_floor"], color="red", linestyle="--", label="floor")
            ax.legend()
        ax.set_title(label)
        ax.set_xlabel("version")
        fig.tight_layout()
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=90)
        plt.close(fig)
        encoded = base64.b64encode(buffer.getvalue()).decode()
        images.append(f'<img alt="{html.escape(label)}" src="data:image/png;base64,{encoded}">')
    scores = [v["synthetic"] for v in versions if v.get("synthetic")]
    synthetic = f"<h2>Synthetic scores</h2><pre>{html.escape(json.dumps(scores, indent=1))}</pre>" if scores else ""
    warnings = "".join(f"<li>{html.escape(w)}</li>" for w in report["warnings"]) or "<li>none</li>"
    page = (
        "<!doctype html><meta charset='utf-8'><title>Corpus report</title>"
        "<style>body{font-family:sans-serif;margin:2em}img{margin:4px}</style>"
        f"<h1>Corpus report: {len(versions)} versions</h1><h2>Warnings</h2><ul>{warnings}</ul>"
        f"<h2>Figures over versions</h2>{''.join(images)}"
        f"{synthetic}<p><small>{html.escape(report['approximate'])}</small></p>"
        f"<h2>Data</h2><pre>{html.escape(json.dumps(versions, indent=1))}</pre>"
    )
    path.write_text(page, encoding="utf-8")


@corpus_app.command("report")
def report_cmd(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
    html_path: Annotated[Path | None, typer.Option("--html", help="Also write an HTML page with plots.")] = None,
    gap_s: Annotated[float, typer.Option(help="Ledger entries closer than this (s) are one ingest run.")] = 60.0,
    pin_baseline: Annotated[
        bool,
        typer.Option(
            "--pin-baseline",
            help="Save the latest version (figures and rare words) as the baseline later reports compare with.",
        ),
    ] = False,
) -> None:
    """Documents, human share, diversity, near duplicates, spread and tail coverage over every version.

    Each version is compared with the one before, the one `window` versions back and the baseline (the pinned
    one, else the first version), so that slow floods and tail loss warn too.

    Example: rag corpus report --pin-baseline; rag corpus report --html corpus.html"""
    if not math.isfinite(gap_s) or gap_s < 0:
        raise typer.BadParameter("must be a number of seconds, 0 or more", param_hint="--gap-s")
    if html_path is not None and (html_path.is_dir() or not html_path.parent.is_dir()):
        raise InvalidInputError(f"--html {html_path} must name a file in an existing folder.", code="invalid_output")
    settings: Settings = ctx.obj
    report = collect(settings, gap_s=gap_s, pin_baseline=pin_baseline)
    if html_path is not None:
        write_html(report, html_path)
    if as_json:
        print(json.dumps(report, indent=2))
    else:
        render_table(report, console)
        if html_path is not None:
            console.print(f"wrote {html_path}")
    if report["warnings"]:
        raise typer.Exit(1)


def _cell(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def _synthetic_cell(value: dict[str, Any] | None) -> str:
    if not value:
        return "–"
    return f"p50 {value['p50']:.2f}, p90 {value['p90']:.2f}, {value['flagged']} flagged"
