"""The `rag` command. Each command is a thin shell over a library function."""

from __future__ import annotations

import os
import sys

import typer
from rich.console import Console
from rich.markup import escape

from rag.errors import RagError
from rag.settings import Settings

app = typer.Typer(
    help="Provenance-first RAG: sign, verify and ingest human-written documents; answer with citations.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


@app.callback()
def _root(ctx: typer.Context) -> None:
    # Models come from installed packages only; never reach for a model hub.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")
    ctx.obj = Settings()


def _register() -> None:
    from ingest.cli import register

    register(app)


_register()


def main() -> None:
    """Console-script entry: domain errors become a readable line and a non-zero exit."""
    try:
        code = app(standalone_mode=False)
    except RagError as exc:
        Console(stderr=True).print(f"[red]error[/red] \\[{exc.code}] {escape(exc.message)}")
        sys.exit(2)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        sys.exit(130)
    except Exception as exc:
        # Usage errors from typer's bundled click: print its message, exit with its code.
        show, exit_code = getattr(exc, "show", None), getattr(exc, "exit_code", None)
        if callable(show) and isinstance(exit_code, int):
            show()
            sys.exit(exit_code)
        raise
    sys.exit(code if isinstance(code, int) else 0)
