"""`rag apikeys new|list|revoke`: thin shells over `rag.apikeys`."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from rag.apikeys import ROLES, ApiKeyStore
from rag.settings import Settings

apikeys_app = typer.Typer(help="API keys of the HTTP service (Bearer tokens with a role).", no_args_is_help=True)


def _store(ctx: typer.Context) -> ApiKeyStore:
    settings: Settings = ctx.obj
    return ApiKeyStore(settings.api_keys_path)


@apikeys_app.command("new")
def new(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Who or what the key is for (letters, digits, '.', '_', '-').")],
    role: Annotated[str, typer.Option("--role", help=f"{' | '.join(ROLES)}: each may do what the ones before may.")],
) -> None:
    """Make a key and print its token once; only the token's hash is stored (in the data dir, mode 0600).

    Readers ask and list documents; curators also upload and remove documents; admins also read the ledger
    and the metrics. Once any key exists, every request to `rag serve` needs one.

    Example: rag apikeys new alice --role curator
    """
    key, token = _store(ctx).new(name, role)
    Console(stderr=True).print(
        f"API key {escape(key.name)} ({key.role}) made; its token, shown only now:", highlight=False
    )
    print(token)  # alone on standard output, for `TOKEN=$(rag apikeys new ...)`
    Console(stderr=True).print("send it as `Authorization: Bearer <token>`", highlight=False)


@apikeys_app.command("list")
def list_keys(ctx: typer.Context, as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """The keys made here: name, role, when made and when revoked (never the token or its hash)."""
    keys = [key.view() for key in _store(ctx).all_keys()]
    if as_json:
        print(json.dumps(keys, indent=2))
        return
    table = Table("name", "role", "created", "revoked", title=f"{sum(not k['revoked_at'] for k in keys)} active keys")
    for key in keys:
        table.add_row(escape(key["name"]), key["role"], key["created"], key["revoked_at"] or "")
    Console().print(table)


@apikeys_app.command("revoke")
def revoke(ctx: typer.Context, name: Annotated[str, typer.Argument(help="The key's name (see `list`).")]) -> None:
    """Revoke a key: a running server refuses it from its next request (401 `revoked_api_key`).

    Example: rag apikeys revoke alice
    """
    key, now = _store(ctx).revoke(name)
    Console().print(f"{'revoked' if now else 'already revoked'}: {escape(key.name)} ({key.role})", highlight=False)
