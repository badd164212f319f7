"""The `fabula` command line. The root app only reads the global options; every command lives in
a module of fabula_sdk.commands, listed in COMMAND_MODULES. To add commands, write a module with
`register(app)` (see commands/stories.py for a sub-app, commands/account.py for plain commands)
and append it here."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from fabula_sdk.commands import account, common, image, lorebooks, presets, stories, text, tokens, transfer
from fabula_sdk.session_store import default_home
from fabula_sdk.types import DEFAULT_KDF, MINIMUM_KDF, KdfParams

COMMAND_MODULES = (account, stories, lorebooks, presets, transfer, text, image, tokens)

app = typer.Typer(name="fabula", no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Fabula from the command line: end-to-end encrypted stories on a Fabula server.")


@app.callback()
def main(
    ctx: typer.Context,
    url: Annotated[str | None, typer.Option(
        "--url", envvar="FABULA_URL", help="the gateway's URL [default: the logged-in session's, else "
                                           "http://127.0.0.1:8000]")] = None,
    home: Annotated[Path | None, typer.Option(
        "--home", envvar="FABULA_HOME", help="where the session is kept [default: ~/.config/fabula]")] = None,
    opslimit: Annotated[int, typer.Option(envvar="FABULA_KDF_OPSLIMIT", min=1,
                                          help="Argon2id passes for a new account or password")] = DEFAULT_KDF.opslimit,
    memlimit: Annotated[int, typer.Option(envvar="FABULA_KDF_MEMLIMIT", min=8192,
                                          help="Argon2id bytes of memory for a new account or password")] = DEFAULT_KDF.memlimit,
    # Hidden, and for test servers only: lowers the client's KDF floor to libsodium's minimum
    # (docs/encryption.md, "The floor").
    kdf_floor_for_tests: Annotated[bool, typer.Option(envvar="FABULA_KDF_FLOOR_FOR_TESTS", hidden=True)] = False,
) -> None:
    ctx.obj = common.CliState(url=url, home=home or default_home(), kdf=KdfParams(opslimit, memlimit),
                              kdf_floor_for_tests=MINIMUM_KDF if kdf_floor_for_tests else None)


for module in COMMAND_MODULES:
    module.register(app)


if __name__ == "__main__":
    app()
