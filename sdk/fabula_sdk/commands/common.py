"""What every CLI command shares: the server URL, the saved session, passwords, error output.

A new command module gets its state with `state(ctx)`, a signed-in client with
`with state(ctx).signed_in() as client:`, and reports failures by raising FabulaError (or
`fail(...)`): `handle_errors` prints them as one line on stderr and exits with status 1.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import ParamSpec, TypeVar

import typer

from fabula_sdk.client import FabulaClient
from fabula_sdk.errors import AuthenticationError, FabulaError
from fabula_sdk.http_transport import DEFAULT_URL
from fabula_sdk.session_store import SavedSession, SessionStore
from fabula_sdk.types import DEFAULT_KDF, KdfParams

P = ParamSpec("P")
R = TypeVar("R")
PASSWORD_ENV = "FABULA_PASSWORD"


class CliFailure(Exception):
    """A failure the CLI explains in one line (not a bug)."""


def fail(message: str) -> CliFailure:
    return CliFailure(message)


def handle_errors(command: Callable[P, R]) -> Callable[P, R]:
    @functools.wraps(command)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return command(*args, **kwargs)
        except AuthenticationError as error:
            typer.echo(f"error: {error.message} (log in again with `fabula login`)", err=True)
        except (FabulaError, CliFailure, ValueError, OSError) as error:
            typer.echo(f"error: {error}", err=True)
        raise typer.Exit(1)

    return wrapper


@dataclass
class CliState:
    url: str | None  # from --url / FABULA_URL; None: the saved session's, else DEFAULT_URL
    home: Path
    kdf: KdfParams = DEFAULT_KDF
    kdf_floor_for_tests: KdfParams | None = None

    @property
    def sessions(self) -> SessionStore:
        return SessionStore(self.home)

    def client(self, url: str | None = None) -> FabulaClient:
        return FabulaClient.connect(self.url or url or DEFAULT_URL, kdf=self.kdf,
                                    kdf_floor_for_tests=self.kdf_floor_for_tests)

    def remember(self, client: FabulaClient) -> None:
        """Save the client's session so later commands need no password."""
        transport = client.transport
        assert client.username and client.user_id and transport.token
        self.sessions.save(SavedSession(url=transport.url, username=client.username,  # type: ignore[attr-defined]
                                        user_id=client.user_id, token=transport.token,
                                        master_key=client.master_key, revisions=dict(client.revisions)))

    @contextmanager
    def signed_in(self) -> Iterator[FabulaClient]:
        """A client resumed from the saved session; the session is saved again afterwards (it
        learns newer object revisions)."""
        saved = self.sessions.load()
        if saved is None:
            raise fail("not logged in: run `fabula login` (or `fabula register`) first")
        with self.client(saved.url) as client:
            client.resume(saved.token, saved.master_key, revisions=saved.revisions)
            try:
                yield client
            finally:
                self.remember(client)


def state(ctx: typer.Context) -> CliState:
    found = ctx.find_object(CliState)
    if found is None:  # only when a command is invoked without the root app's callback
        raise RuntimeError("the fabula root callback did not run")
    return found


def password(prompt: str = "Password", *, confirm: bool = False, env: str = PASSWORD_ENV) -> str:
    """From `env` when set (scripts, tests), else a hidden prompt."""
    value = os.environ.get(env)
    if value:
        return value
    return typer.prompt(prompt, hide_input=True, confirmation_prompt=confirm)
