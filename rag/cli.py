"""The `rag` command. Each command is a thin shell over a library function."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.markup import escape
from typer._click import exceptions as click_errors
from typer.core import TyperGroup

from rag.errors import InvalidInputError, RagError
from rag.settings import Settings

if TYPE_CHECKING:
    from rag.answering import Answer

# How a usage error is named in its one line: `error [code] ...`.
USAGE_CODES = {
    click_errors.NoSuchOption: "unknown_option",
    click_errors.MissingParameter: "missing_argument",
    click_errors.BadParameter: "invalid_argument",
}


class RagCommands(TyperGroup):
    """The `rag` group: whatever a user gets wrong ends as one line `error [code] sentence`, never a traceback.

    Exit 2: the input was refused before anything was done (typer's usage errors and our domain errors alike);
    exit 1: the command ran and found a problem (a rejected document, a ledger that does not verify), or failed
    unexpectedly (`io_error`, `internal_error`; RAG_DEBUG=1 shows the traceback). Also in-process (CliRunner)."""

    def main(  # type: ignore[override]
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        try:
            result = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
            code = result if isinstance(result, int) else 0
        except RagError as exc:
            code = _fail(exc.code, exc.message, 2)
        except click_errors.NoArgsIsHelpError as exc:
            exc.show()
            code = exc.exit_code
        except click_errors.UsageError as exc:
            hint = f" See '{exc.ctx.command_path} --help'." if exc.ctx is not None else ""
            code = _fail(_usage_code(exc), _sentence(exc.format_message()) + hint, exc.exit_code)
        except click_errors.ClickException as exc:
            code = _fail("usage_error", exc.format_message(), exc.exit_code)
        except typer.Abort:
            code = _fail("aborted", "Aborted.", 1)
        except Exception as exc:
            if os.environ.get("RAG_DEBUG"):
                raise
            if isinstance(exc, OSError):
                where = f" ({exc.filename})" if exc.filename else ""
                code = _fail("io_error", f"{exc.strerror or type(exc).__name__}{where}", 1)
            else:
                # A bug, not bad input: still one line, and the traceback on request.
                detail = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
                code = _fail("internal_error", f"{type(exc).__name__}: {detail} (RAG_DEBUG=1 shows where)", 1)
        if standalone_mode:
            sys.exit(code)
        return code


def _usage_code(exc: Exception) -> str:
    return next((code for kind, code in USAGE_CODES.items() if isinstance(exc, kind)), "usage_error")


def _sentence(message: str) -> str:
    line = " ".join(message.split())
    return line if line.endswith((".", "!", "?")) else line + "."


def _fail(code: str, message: str, exit_code: int) -> int:
    """Print the one line of an error on standard error; returns the exit code."""
    line = f"[red]error[/red] \\[{code}] {escape(_sentence(message))}"
    Console(stderr=True, highlight=False).print(line, soft_wrap=True)
    return exit_code


app = typer.Typer(
    help="Provenance-first RAG: sign, verify and ingest human-written documents; answer with citations.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    cls=RagCommands,
)


@app.callback()
def _root(ctx: typer.Context) -> None:
    # Models come from installed packages only; never reach for a model hub.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")
    try:
        ctx.obj = Settings()
    except ValidationError as exc:
        error = exc.errors()[0]
        where = "RAG_" + "__".join(str(part).upper() for part in error["loc"])
        raise InvalidInputError(f"The setting {where} is invalid: {error['msg']}.", code="invalid_settings") from None


@app.command()
def serve(
    ctx: typer.Context,
    host: str = typer.Option("127.0.0.1", help="Interface to bind."),
    port: int = typer.Option(8000, min=1, max=65535, help="TCP port."),
) -> None:
    """Serve the answering API (OpenAPI docs at /docs)."""
    from api.server import serve as run_server
    from rag.runtime import limit_malloc_arenas, mmap_large_allocations

    limit_malloc_arenas()  # before any worker thread exists
    mmap_large_allocations()
    settings: Settings = ctx.obj
    Console(stderr=True).print(f"serving on http://{host}:{port}  (docs: http://{host}:{port}/docs)")
    run_server(settings, host=host, port=port)  # with the client limits of RAG_SERVER__* (README)


@app.command()
def ask(
    ctx: typer.Context,
    question: str = typer.Argument(..., help="The question."),
    no_grounding: bool = typer.Option(
        False, "--no-grounding", help="Answer without retrieval or checks; the text starts [unchecked, not grounded]."
    ),
    mode: str = typer.Option(None, "--mode", help="extract (default), free or quote."),
    top_k: int = typer.Option(None, "--top-k", help="Passages to retrieve (1-20)."),
    generator: str = typer.Option(None, "--generator", help="gemma3-270m or smollm2-135m."),
    as_json: bool = typer.Option(False, "--json", help="Print the answer as JSON (what the HTTP API returns)."),
    explain: bool = typer.Option(
        False, "--explain", help="Also show the sentences the check rejected, and why (local only; never served)."
    ),
) -> None:
    """Answer one question from the verified knowledge base.

    Examples: `rag ask "What does the pass statement do?"`; `rag ask "..." --mode quote --explain`.
    """
    import json

    from rich.table import Table

    from rag.wiring import build_answer_service, build_generator

    settings: Settings = ctx.obj
    service = build_answer_service(settings, generator=build_generator(settings, generator) if generator else None)
    service.validate(question, top_k, None, mode)
    with Console(stderr=True).status("loading models and answering…"):
        result = service.answer(question, top_k=top_k, grounded=not no_grounding, mode=mode)  # type: ignore[arg-type]
    if as_json:
        print(json.dumps(result.as_diagnostic_dict() if explain else result.as_dict(), indent=2, ensure_ascii=False))
        return
    console = Console()
    style = "yellow" if result.abstained else "green"
    console.print(f"[{style}]{escape(result.answer)}[/{style}]")
    if result.abstained:
        console.print(f"[dim]abstained: {result.reason}[/dim]")
    if explain:
        _explain(console, result)
    if result.citations:
        table = Table("n", "document", "title", "signer", "licence", "score")
        for c in result.citations:
            table.add_row(str(c.n), c.doc_id, c.title, c.signer_name, c.license, f"{c.score:.3f}")
        console.print(table)
    label = result.label
    if label.get("extractive"):
        origin = label.get("source_origin") or "the cited source"
        made = f"Quotation of {origin} text, chosen by {label.get('selected_by')}; no watermark (nothing generated)"
    else:
        made = f"AI-generated by {label['generator']}; watermark {(label['watermark'] or {}).get('scheme', 'none')}"
    console.print(
        f"[dim]{escape(made)}; corpus head {str(label['corpus_ledger_head'])[:16]}; "
        f"{result.timings.get('total_ms', 0):.0f} ms[/dim]"
    )


def _explain(console: Console, result: Answer) -> None:
    """Every checked sentence with its score and, if it was not released, the reason code."""
    from rag.answering import rejection_code

    released = result.released
    for support in result.support:
        verdict = "released" if support in released else f"rejected ({rejection_code(support)})"
        where = f"{verdict}, score {support.score:.3f}, passage {support.passage}"
        console.print(f"[dim]{where}:[/dim] {escape(support.sentence)}")
    if not result.support:
        console.print("[dim]no sentence was checked[/dim]")


DEFAULT_COUNTERFACTUAL = 20
eval_app = typer.Typer(help="Evaluate grounded vs ungrounded answers on SQuAD-format data.")
app.add_typer(eval_app, name="eval")


@eval_app.callback(invoke_without_command=True)
def evaluate(
    ctx: typer.Context,
    dataset: Annotated[
        list[Path] | None, typer.Option("--dataset", help="SQuAD-format JSON file; repeat for several.")
    ] = None,
    limit: Annotated[
        int | None, typer.Option("--limit", help="Questions to sample per dataset (all if unset).")
    ] = None,
    seed: Annotated[int, typer.Option("--seed", help="Sampling seed.")] = 0,
    top_k: Annotated[
        int | None, typer.Option("--top-k", help="Passages retrieved per question (default: RAG_ANSWER__TOP_K).")
    ] = None,
    out: Annotated[Path, typer.Option("--out", help="Output folder.")] = Path("eval-out"),
    resume: Annotated[bool, typer.Option("--resume", help="Continue an interrupted run in --out.")] = False,
    counterfactual: Annotated[
        int | None,
        typer.Option("--counterfactual", help="Questions whose gold passage is edited, then removed (default 20)."),
    ] = None,
    guardrail_only: Annotated[
        bool, typer.Option("--guardrail", help="Only the guardrail benchmark (no reader; part of every run).")
    ] = False,
    generator: Annotated[str | None, typer.Option("--generator", help="gemma3-270m or smollm2-135m.")] = None,
    peer_script: Annotated[
        Path | None, typer.Option("--peer-script", help="Also run the LangChain peer on the first dataset's sample.")
    ] = None,
) -> None:
    """Measure the claim, grounded against ungrounded: what it releases is right, it follows the corpus, the
    guardrail blocks what is false.

    Examples: `rag eval --dataset squad.json --limit 200 --seed 0 --counterfactual 40`;
    `rag eval --dataset a.json --dataset b.json --limit 50` (a stability table across both);
    `rag eval --dataset squad.json --guardrail` (the checker alone, in seconds).
    """
    if ctx.invoked_subcommand:
        return
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    from rag.errors import InvalidInputError
    from rag.evaluation.report import append_history, write_reports
    from rag.evaluation.run import prepare, run
    from rag.models import model_spec
    from rag.wiring import build_answer_service, build_generator

    settings: Settings = ctx.obj
    k = settings.answer.top_k if top_k is None else top_k
    if not 1 <= k <= 20:
        raise InvalidInputError("--top-k must be between 1 and 20.", code="invalid_top_k")
    if counterfactual is not None and (counterfactual < 0 or guardrail_only):
        raise InvalidInputError(
            "--counterfactual takes 0 or more questions, and needs answers (not --guardrail).",
            code="invalid_counterfactual",
        )
    if generator:
        model_spec(generator)
    if peer_script is not None and not peer_script.exists():
        raise InvalidInputError(f"Peer script not found: {peer_script}.", code="peer_missing")
    # Every input check happens before any work or output.
    prepared = prepare(
        dataset or [], out, settings, limit=limit, seed=seed, top_k=k, resume=resume, answers=not guardrail_only,
        counterfactual=0 if guardrail_only else (DEFAULT_COUNTERFACTUAL if counterfactual is None else counterfactual),
        generator=generator,
    )  # fmt: skip
    console = Console(stderr=True)

    def factory(eval_settings: Settings) -> Any:
        chosen = build_generator(eval_settings, generator) if generator else None
        return build_answer_service(eval_settings, generator=chosen)

    with Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        TextColumn("ETA"), TimeRemainingColumn(), console=console,
    ) as progress:  # fmt: skip

        def track(items: Any, total: int, description: str) -> Any:
            return progress.track(items, total=total, description=description)

        if not guardrail_only:
            console.print("signing and ingesting each dataset's passages (isolated store)…")
        summary = run(factory, settings, prepared, progress=track)
    if peer_script is not None and not guardrail_only:
        import json
        import subprocess

        console.print("running the peer on the same sample…")
        done = subprocess.run(
            [sys.executable, str(peer_script), "--dataset", prepared.config["datasets"][0], "--limit",
             str(prepared.counts[0]), "--seed", str(seed), "--top-k", str(k)],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        summary["peer"] = json.loads(done.stdout.strip().splitlines()[-1])
    write_reports(summary, out)
    append_history(settings.data_dir / "eval_history.jsonl", summary)
    _print_eval(summary, out)


def _print_eval(summary: dict[str, Any], out: Path) -> None:
    from rich.table import Table

    from rag.evaluation.report import CLAIM_METRICS
    from rag.evaluation.summary import MODE_LABELS, MODES

    def fmt(value: Any) -> str:
        return "–" if value is None else f"{value:.3f}"

    console = Console()
    for name, data in summary["datasets"].items():
        if "modes" in data:
            table = Table("figure", *(MODE_LABELS[m] for m in MODES),
                          title=f"{name}: {data['questions']} questions ({data['withheld']} withheld)")  # fmt: skip
            for key, label in [*CLAIM_METRICS, ("f1", "Token F1"), ("latency_p50_s", "Latency p50 (s)")]:
                table.add_row(label, *(fmt(data["modes"][m].get(key)) for m in MODES))
            for key in ("followed", "stale", "abstained_after_removal"):
                if "knowledge_update" in data:
                    table.add_row(f"knowledge update: {key}",
                                  *(fmt(data["knowledge_update"].get(m, {}).get(key)) for m in MODES))  # fmt: skip
            console.print(table)
        guard = data.get("guardrail")
        if guard:
            table = Table("kind", "items", "blocked", "blocked by word coverage", title=f"{name}: guardrail")
            for kind, rate in guard["detected"].items():
                table.add_row(kind, str(guard["items"].get(kind, "")), fmt(rate),
                              fmt(guard["baseline"]["detected"].get(kind)))  # fmt: skip
            table.add_row("false alarms (supported)", "", fmt(guard["false_alarm"]),
                          fmt(guard["baseline"]["false_alarm"]))  # fmt: skip
            console.print(table)
    console.print(f"reports in {escape(str(out))}/ (report.md, report.html, summary.json)")


@eval_app.command("history")
def eval_history(ctx: typer.Context) -> None:
    """Print (and plot) the evaluation trend across corpus versions."""
    from rich.table import Table

    from rag.evaluation.report import plot_history, read_history

    settings: Settings = ctx.obj
    entries = read_history(settings.data_dir / "eval_history.jsonl")
    if not entries:
        Console().print("no evaluation runs recorded yet")
        return

    def fmt(value: Any) -> str:
        return "–" if value is None else f"{value:.3f}"

    table = Table("time", "corpus head", "questions", "recall@k", "grounded precision", "answered withheld",
                  "grounded F1", "quote F1", "ungrounded F1", "ungrounded precision")  # fmt: skip
    for e in entries:
        table.add_row(e["time"], e["corpus_ledger_head"][:12], str(e["questions"]), fmt(e["retrieval_recall_at_k"]),
                      fmt(e.get("grounded_precision")), fmt(e.get("grounded_hallucination")), fmt(e["grounded_f1"]),
                      fmt(e["quote_f1"]), fmt(e["ungrounded_f1"]), fmt(e.get("ungrounded_precision")))  # fmt: skip
    Console().print(table)
    chart = plot_history(entries, settings.data_dir / "eval_history.png")
    Console().print(f"chart: {escape(str(chart))}")


def _register() -> None:
    from ingest.cli import register
    from rag.apikeys_cli import apikeys_app
    from rag.doctor_cli import doctor

    register(app)
    app.add_typer(apikeys_app, name="apikeys")
    app.command("doctor")(doctor)


_register()


def main() -> None:
    """Console-script entry: every error is one line `error [code] ...` and a non-zero exit (see RagCommands)."""
    app()
