"""The `fabula` command line against the live gateway, command by command, as a user runs it
(in-process with typer's CliRunner; the password comes from FABULA_PASSWORD)."""

from __future__ import annotations

import stat

import pytest
from typer.testing import CliRunner

from fabula_sdk.cli import app
from tests.e2e.conftest import PASSWORD, in_thread


@pytest.fixture
def fabula(gateway, tmp_path):
    """Runs `fabula ARGS...` as one user (their own FABULA_HOME); returns stdout, fails on error."""

    def make(home_name: str, password: str = PASSWORD):
        env = {"FABULA_URL": gateway.url, "FABULA_HOME": str(tmp_path / home_name), "FABULA_PASSWORD": password,
               "FABULA_KDF_OPSLIMIT": "1", "FABULA_KDF_MEMLIMIT": "8192", "FABULA_KDF_FLOOR_FOR_TESTS": "1"}

        def run(*args: str, ok: bool = True, **extra_env: str):
            result = CliRunner().invoke(app, list(args), env={**env, **extra_env}, catch_exceptions=False)
            if ok:
                assert result.exit_code == 0, f"fabula {' '.join(args)}: {result.stdout}{result.stderr}"
            return result

        return run

    return make


async def test_cli_end_to_end(fabula, tmp_path):
    alice = fabula("alice-home")
    story_file = tmp_path / "the-lighthouse.txt"
    story_file.write_text("The keeper lit the lamp.\nÜnïcödé survives.\n", "utf-8")

    def scenario():
        assert "registered and logged in as alice" in alice("register", "-u", "alice").stdout
        session = tmp_path / "alice-home" / "session.json"
        assert stat.S_IMODE(session.stat().st_mode) == 0o600
        assert stat.S_IMODE(session.parent.stat().st_mode) == 0o700
        assert PASSWORD not in session.read_text()
        assert alice("whoami").stdout.startswith("alice (")

        story_id = alice("stories", "push", str(story_file)).stdout.strip()
        listing = alice("stories", "list").stdout
        assert story_id in listing and "the-lighthouse" in listing

        pulled = tmp_path / "pulled.txt"
        alice("stories", "pull", story_id, "-o", str(pulled))
        assert pulled.read_text("utf-8") == story_file.read_text("utf-8")

        story_file.write_text("A second draft.", "utf-8")
        assert alice("stories", "push", str(story_file), "--id", story_id, "--title", "Renamed").stdout.strip() == story_id
        assert alice("stories", "pull", story_id).stdout == "A second draft."
        assert "Renamed" in alice("stories", "list").stdout
        custom = alice("stories", "push", str(story_file), "--id", "my-own-id", "--title", "Chosen id").stdout.strip()
        assert custom == "my-own-id"

        archive = tmp_path / "alice.tar"
        assert "exported 4 objects" in alice("export", "-o", str(archive)).stdout

        assert alice("logout").stdout.strip() == "logged out"
        assert not session.exists()
        refused = alice("stories", "list", ok=False)
        assert refused.exit_code == 1 and "not logged in" in refused.stderr

        wrong = alice("login", "-u", "alice", ok=False, FABULA_PASSWORD="wrong password")
        assert wrong.exit_code == 1 and "error:" in wrong.stderr
        alice("login", "-u", "alice")
        assert alice("stories", "pull", story_id).stdout == "A second draft."

        # Another user on the same server imports Alice's archive with Alice's password.
        bob = fabula("bob-home", password="bob's password")
        bob("register", "-u", "bob")
        assert "no stories yet" in bob("stories", "list").stdout
        imported = bob("import", str(archive), FABULA_ARCHIVE_PASSWORD=PASSWORD)
        assert "imported 4 objects" in imported.stdout
        assert bob("stories", "pull", story_id).stdout == "A second draft."
        assert bob("stories", "pull", "my-own-id").stdout == "A second draft."

        bob("change-password", FABULA_NEW_PASSWORD="bob's new password")
        assert bob("stories", "pull", story_id).stdout == "A second draft."  # the saved session was renewed
        old = bob("login", "-u", "bob", ok=False)
        assert old.exit_code == 1
        missing = bob("stories", "pull", "no-such-story", ok=False)
        assert missing.exit_code == 1 and "does not exist" in missing.stderr

    await in_thread(scenario)
