"""The SDK installed on its own, as a user installs it: a fresh virtual environment (no system site
packages) gets only the generated protos (build/proto), fabula_wire (wire/) and the SDK (sdk/),
with their PyPI dependencies from the package index. Its `fabula` command then registers, pushes,
lists and pulls a story on the live stack, and neither `gateway` nor `services` imports there:
the SDK needs no server code."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.conftest import PASSWORD, in_thread

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = (ROOT / "build" / "proto", ROOT / "wire", ROOT / "sdk")
# Generous: a cold pip cache downloads grpcio, PyNaCl and typer; a warm one installs in seconds.
INSTALL_TIMEOUT_S = 600
COMMAND_TIMEOUT_S = 120


def _clean_environment() -> dict[str, str]:
    """This process's environment without anything that would point Python at the repository."""
    return {name: value for name, value in os.environ.items()
            if name not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP")}


def _run(command: list[str], *, cwd: Path, timeout: float, env: dict[str, str] | None = None) -> str:
    try:
        result = subprocess.run(command, cwd=cwd, env=env or _clean_environment(), capture_output=True,
                                text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{' '.join(command)} did not finish within {timeout} s")
    assert result.returncode == 0, (f"{' '.join(command)} exited with {result.returncode}\n"
                                    f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}")
    return result.stdout


@pytest.fixture(scope="module")
def sdk_venv(tmp_path_factory) -> Path:
    """A virtual environment holding the SDK and what it depends on, nothing of the server."""
    if not (ROOT / "build" / "proto" / "pyproject.toml").exists():
        pytest.fail("build/proto has no pyproject.toml: run `make proto`", pytrace=False)
    root = tmp_path_factory.mktemp("sdk-alone")
    sources = []
    for package in PACKAGES:
        # Installed from copies: a build in place would leave build/ and *.egg-info in the tree.
        copy = root / "sources" / package.name
        shutil.copytree(package, copy, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
        sources.append(str(copy))
    environment = root / "venv"
    _run([sys.executable, "-m", "venv", str(environment)], cwd=root, timeout=COMMAND_TIMEOUT_S)
    _run([str(environment / "bin" / "python"), "-m", "pip", "install", "-q", *sources], cwd=root,
         timeout=INSTALL_TIMEOUT_S)
    return environment


def test_installed_sdk_imports_no_server_code(sdk_venv, tmp_path):
    # Every SDK module is imported, so one that reaches for server code fails here even when the
    # commands below never load it.
    probe = ("import importlib, importlib.util, pkgutil, fabula_sdk, fabula_wire, fabula.editor.v1.editor_pb2 as pb\n"
             "for module in pkgutil.walk_packages(fabula_sdk.__path__, 'fabula_sdk.'):\n"
             "    importlib.import_module(module.name)\n"
             "print(fabula_sdk.__file__); print(fabula_wire.__file__); print(pb.__file__)\n"
             "print(*(importlib.util.find_spec(name) is None for name in ('gateway', 'services')))\n")
    # Run from an empty folder: `python -c` puts the working directory first on sys.path.
    lines = _run([str(sdk_venv / "bin" / "python"), "-c", probe], cwd=tmp_path,
                 timeout=COMMAND_TIMEOUT_S).splitlines()
    for module_file in lines[:3]:
        assert Path(module_file).resolve().is_relative_to(sdk_venv.resolve()), module_file
    assert lines[3] == "True True", "gateway or services is importable next to the SDK"
    assert "include-system-site-packages = false" in (sdk_venv / "pyvenv.cfg").read_text()


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_installed_cli_against_live_stack(sdk_venv, gateway, tmp_path):
    fabula = str(sdk_venv / "bin" / "fabula")
    env = {**_clean_environment(), "FABULA_URL": gateway.url, "FABULA_HOME": str(tmp_path / "home"),
           "FABULA_PASSWORD": PASSWORD, "FABULA_KDF_OPSLIMIT": "1", "FABULA_KDF_MEMLIMIT": "8192",
           "FABULA_KDF_FLOOR_FOR_TESTS": "1"}
    story = tmp_path / "the-standalone-story.txt"
    story.write_text("Installed alone, it still keeps the secret.\n", "utf-8")

    def cli(*args: str) -> str:
        return _run([fabula, *args], cwd=tmp_path, timeout=COMMAND_TIMEOUT_S, env=env)

    def scenario() -> None:
        assert "registered and logged in as carol" in cli("register", "-u", "carol")
        story_id = cli("stories", "push", str(story)).strip()
        listing = cli("stories", "list")
        assert story_id in listing and "the-standalone-story" in listing
        assert cli("stories", "pull", story_id) == story.read_text("utf-8")

    await in_thread(scenario)
