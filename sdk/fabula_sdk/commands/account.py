"""fabula register | login | logout | whoami | change-password"""

from __future__ import annotations

from typing import Annotated

import typer

from fabula_sdk.commands.common import handle_errors, password, state

Username = Annotated[str, typer.Option("--username", "-u", envvar="FABULA_USERNAME", prompt=True,
                                       help="the account's username")]


@handle_errors
def register_account(ctx: typer.Context, username: Username) -> None:
    """Create an account and log in (the password never leaves this machine)."""
    cli = state(ctx)
    with cli.client() as client:
        client.register(username, password(confirm=True))
        cli.remember(client)
    typer.echo(f"registered and logged in as {username}")


@handle_errors
def login(ctx: typer.Context, username: Username) -> None:
    """Log in; later commands use the saved session."""
    cli = state(ctx)
    with cli.client() as client:
        client.login(username, password())
        cli.remember(client)
    typer.echo(f"logged in as {username}")


@handle_errors
def logout(ctx: typer.Context) -> None:
    """Revoke the session on the server and delete the saved session (token and master key)."""
    cli = state(ctx)
    saved = cli.sessions.load()
    if saved is None:
        typer.echo("not logged in")
        return
    try:
        with cli.client(saved.url) as client:
            client.transport.token = saved.token
            client.transport.logout()
    finally:
        # Even if the server cannot be reached, the keys must not stay on disk.
        cli.sessions.delete()
    typer.echo("logged out")


@handle_errors
def whoami(ctx: typer.Context) -> None:
    """Print the logged-in username and user id."""
    with state(ctx).signed_in() as client:
        typer.echo(f"{client.username} ({client.user_id})")


@handle_errors
def change_password(ctx: typer.Context) -> None:
    """Change the password: the master key is re-wrapped, no story is re-encrypted; every other
    session is signed out."""
    cli = state(ctx)
    with cli.signed_in() as client:
        old = password("Current password")
        new = password("New password", confirm=True, env="FABULA_NEW_PASSWORD")
        client.change_password(old, new)
    typer.echo("password changed; other sessions are signed out")


def register(app: typer.Typer) -> None:
    app.command("register")(register_account)
    app.command("login")(login)
    app.command("logout")(logout)
    app.command("whoami")(whoami)
    app.command("change-password")(change_password)
