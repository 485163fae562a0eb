"""`rag doctor`: a thin shell over `rag.doctor`."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from rag.settings import Settings


def doctor(
    ctx: typer.Context,
    remeasure: Annotated[
        bool, typer.Option("--remeasure", help="Measure the embedder runtimes again (about a minute) and record it.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Show what runs on this machine and why: the CPU, and the embedder runtime for ingest and for queries.

    The runtime is chosen by measuring each candidate once per machine (`RAG_EMBEDDER__BACKEND=auto`, the
    default): the fastest whose vectors agree with float32. Examples: `rag doctor`; `rag doctor --remeasure`.
    """
    from rag.doctor import cpu_report, embedder_report

    settings: Settings = ctx.obj
    report = {"cpu": cpu_report(), "embedder": embedder_report(settings, remeasure=remeasure)}
    if as_json:
        print(json.dumps(report, indent=2))
        return
    _print(report)


def _print(report: dict[str, Any]) -> None:
    console = Console(highlight=False)
    cpu = report["cpu"]
    console.print(f"[bold]CPU[/bold] {escape(cpu['cpu'])}")
    console.print(f"  int8 dot products: {', '.join(cpu['int8_dot_products']) or 'none'}")
    console.print(f"  bfloat16: {', '.join(cpu['bfloat16']) or 'none'}; vector: {', '.join(cpu['vector']) or '-'}")
    embedder = report["embedder"]
    console.print(f"[bold]Embedder[/bold] (RAG_EMBEDDER__BACKEND={embedder['backend']})")
    for shape, label in (("ingest", "ingest"), ("query", "queries")):
        console.print(f"  {label}: [green]{embedder['shapes'][shape]['runtime']}[/green]")
        console.print(f"    [dim]{escape(embedder['shapes'][shape]['why'])}[/dim]")
    if not embedder.get("measurements"):
        console.print("  not measured on this machine (`rag doctor --remeasure` measures)")
        return
    tolerance = embedder["tolerance"]
    table = Table(
        "runtime", "batched cosine min / mean", "single cosine min / mean", "ingest s", "query ms", "eligible",
        title=f"measured {embedder['measured_at']} in {embedder['measure_seconds']:.0f} s; agreement: min cosine "
        f">= {tolerance['min_cosine']}, mean >= {tolerance['mean_cosine']}",
    )  # fmt: skip
    for m in embedder["measurements"]:
        if m["error"]:
            table.add_row(m["runtime"], escape(m["error"]), "", "", "", "no")
            continue
        eligible = ", ".join(s for s in ("ingest", "query") if m[f"{s}_eligible"]) or "no"
        table.add_row(
            m["runtime"],
            "{:.4f} / {:.4f}".format(*m["batched_cosine"]),
            "{:.4f} / {:.4f}".format(*m["single_cosine"]),
            "–" if m["ingest_s"] is None else f"{m['ingest_s']:.3f}",  # not timed where not eligible
            "–" if m["query_ms"] is None else f"{m['query_ms']:.2f}",
            eligible,
        )
    console.print(table)
    console.print(f"[dim]record: {escape(str(embedder['record']))}[/dim]")
