"""fabula tokens create NAME | list | revoke ID  — personal API tokens for the compatible APIs."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated

import typer

from fabula_sdk.api_tokens import ApiTokenClient
from fabula_sdk.commands.common import fail, handle_errors, state

tokens_app = typer.Typer(no_args_is_help=True, help="Personal API tokens for OpenAI- and KoboldAI-compatible "
                                                    "clients (generation only; they never read stories).")


def _client(ctx: typer.Context) -> ApiTokenClient:
    saved = state(ctx).sessions.load()
    if saved is None:
        raise fail("not logged in: run `fabula login` (or `fabula register`) first")
    return ApiTokenClient(state(ctx).url or saved.url, saved.token)


@tokens_app.command("create")
@handle_errors
def create(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="a name to recognise it by (e.g. the client using it)")],
    expires_in_days: Annotated[float | None, typer.Option("--expires-in-days", min=0.001,
                                                          help="stop accepting it after this many days "
                                                               "[default: never]")] = None,
) -> None:
    """Create a token and print it (only this once; the server keeps a hash)."""
    expires_at = datetime.now(UTC) + timedelta(days=expires_in_days) if expires_in_days else None
    with _client(ctx) as tokens:
        created = tokens.create(name, expires_at)
    typer.echo(created.token)
    typer.echo(f"created API token {created.id} ({created.name}); it is shown only once", err=True)


@tokens_app.command("list")
@handle_errors
def list_tokens(ctx: typer.Context) -> None:
    """List the account's tokens: id, name, creation and expiry."""
    with _client(ctx) as tokens:
        for token in tokens.list():
            expiry = token.expires_at.isoformat() if token.expires_at else "never"
            typer.echo(f"{token.id}\t{token.name}\tcreated {token.created_at.isoformat()}\texpires {expiry}")


@tokens_app.command("revoke")
@handle_errors
def revoke(ctx: typer.Context,
           token_id: Annotated[str, typer.Argument(help="the id shown by `fabula tokens list`")]) -> None:
    """Revoke a token at once."""
    with _client(ctx) as tokens:
        tokens.revoke(token_id)
    typer.echo(f"revoked API token {token_id}")


def register(app: typer.Typer) -> None:
    app.add_typer(tokens_app, name="tokens")
