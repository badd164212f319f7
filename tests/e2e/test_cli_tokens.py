"""`fabula tokens create | list | revoke` against the live gateway and editor."""

from __future__ import annotations

from typer.testing import CliRunner

from fabula_sdk.cli import app
from tests.e2e.conftest import PASSWORD, in_thread


async def test_tokens_create_list_revoke(gateway, tmp_path):
    env = {"FABULA_URL": gateway.url, "FABULA_HOME": str(tmp_path / "home"), "FABULA_PASSWORD": PASSWORD,
           "FABULA_KDF_OPSLIMIT": "1", "FABULA_KDF_MEMLIMIT": "8192",
           "FABULA_KDF_FLOOR_FOR_TESTS": "1"}

    def fabula(*args: str, ok: bool = True):
        result = CliRunner().invoke(app, list(args), env=env, catch_exceptions=False)
        assert (result.exit_code == 0) == ok, f"fabula {' '.join(args)}: {result.stdout}{result.stderr}"
        return result

    def scenario():
        fabula("register", "-u", "tinkerer")
        created = fabula("tokens", "create", "SillyTavern", "--expires-in-days", "30")
        token = created.stdout.strip()
        assert token.startswith("fabula_pat_") and "shown only once" in created.stderr
        listing = fabula("tokens", "list").stdout
        token_id, name = listing.split("\t")[:2]
        assert name == "SillyTavern" and "expires 20" in listing
        assert f"revoked API token {token_id}" in fabula("tokens", "revoke", token_id).stdout
        assert fabula("tokens", "list").stdout == ""
        assert "no API token" in fabula("tokens", "revoke", token_id, ok=False).stderr

    await in_thread(scenario)
