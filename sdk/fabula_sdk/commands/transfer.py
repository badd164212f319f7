"""fabula export -o FILE | import FILE"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from fabula_sdk.commands.common import PASSWORD_ENV, handle_errors, password, state


@handle_errors
def export(
    ctx: typer.Context,
    output: Annotated[Path, typer.Option("--output", "-o", help="where to write the archive (.tar)")],
) -> None:
    """Download every object and the keystore as one archive (still encrypted)."""
    with state(ctx).signed_in() as client:
        contents = client.export_archive(output)
    typer.echo(f"exported {len(contents.objects)} objects to {output}")


@handle_errors
def import_(
    ctx: typer.Context,
    archive: Annotated[Path, typer.Argument(help="an archive made by `fabula export`", exists=True, dir_okay=False)],
) -> None:
    """Store an archive from any account or server in this account. Asks for the password the
    exported account had (FABULA_ARCHIVE_PASSWORD, else FABULA_PASSWORD)."""
    env = "FABULA_ARCHIVE_PASSWORD" if os.environ.get("FABULA_ARCHIVE_PASSWORD") else PASSWORD_ENV
    archive_password = password("Password of the exported account", env=env)
    with state(ctx).signed_in() as client:
        result = client.import_archive(archive, archive_password)
    typer.echo(f"imported {result.imported_objects} objects")


def register(app: typer.Typer) -> None:
    app.command("export")(export)
    app.command("import")(import_)
