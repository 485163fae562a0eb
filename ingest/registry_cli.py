"""`rag registry`: the own-output registry's pin (status, pin, accept). Thin shells over `ingest.registry_guard`."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.markup import escape

from ingest.ledger_admin import ingest_lock
from ingest.ledger_head import LedgerKey
from rag.errors import InvalidInputError
from rag.settings import Settings

if TYPE_CHECKING:
    from ingest.registry_guard import PinStatus, RegistryPin

registry_app = typer.Typer(help="The registry of released answers, and the pin that guards it.", no_args_is_help=True)
console = Console()


def _pin(ctx: typer.Context) -> tuple[Settings, RegistryPin]:
    from ingest.registry_guard import RegistryPin
    from rag.wiring import build_output_registry

    settings: Settings = ctx.obj
    registry = build_output_registry(settings)
    if registry is None:
        console.print("the registry is off (RAG_REGISTRY__ENABLED=false): nothing to pin")
        raise typer.Exit(1)
    return settings, RegistryPin(registry, LedgerKey(settings.ledger_key_path))


def _view(status: PinStatus) -> dict[str, object]:
    return {
        "records": status.state.records,
        "pinned_records": status.pinned_records,
        "pinned_at": status.pinned.get("pinned_at") if status.pinned else None,
        "ok": not status.problems,
        "problems": status.problems,
    }


@registry_app.command("status")
def status_cmd(ctx: typer.Context, as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Compare the registry with its pin; exit 1 naming every problem (ingest would refuse: registry_tampered).

    Example: rag registry status"""
    _, pin = _pin(ctx)
    view = _view(pin.status())
    if as_json:
        print(json.dumps(view))
    elif view["ok"]:
        console.print(f"[green]registry ok[/green]: {view['records']} records, {view['pinned_records']} pinned")
    else:
        for problem in view["problems"]:  # type: ignore[attr-defined]
            console.print(f"[red]{escape(problem)}[/red]", soft_wrap=True)
    if not view["ok"]:
        raise typer.Exit(1)


@registry_app.command("pin")
def pin_cmd(ctx: typer.Context) -> None:
    """Check the registry against its pin and pin what was appended since (each ingest does this first).

    Pinning often (from cron) narrows the window in which recent records could be cut unseen.

    Example: rag registry pin"""
    settings, pin = _pin(ctx)
    with ingest_lock(settings.data_dir):
        status = pin.check_and_extend()
    console.print(f"pinned {status.state.records} records (before: {status.pinned_records})")


@registry_app.command("accept")
def accept_cmd(ctx: typer.Context, yes: Annotated[bool, typer.Option("--yes", help="Really pin it.")] = False) -> None:
    """Pin the registry as it is now, after it was cut, deleted or damaged (ingest refuses until then).

    Restore it from a backup first if you can: answers lost from it can be laundered back in.

    Example: rag registry status; rag registry accept --yes"""
    settings, pin = _pin(ctx)
    before = pin.status()
    if not yes:
        for problem in before.problems:
            console.print(f"[red]{escape(problem)}[/red]", soft_wrap=True)
        raise InvalidInputError(
            f"This pins {before.state.records} records (pinned now: {before.pinned_records}); run again with --yes.",
            code="confirmation_required",
        )
    with ingest_lock(settings.data_dir):
        before, after = pin.accept()
    lost = max(0, before.pinned_records - after.state.records)
    console.print(f"pinned {after.state.records} records (before: {before.pinned_records}; {lost} lost)")
