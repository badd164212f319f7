"""The editor's volume fills up under the real gateway and the real editor process: writes are
503 with Retry-After (never 500), reads go on, and after the operator grows the volume and
restarts the editor every acknowledged write is there."""

from __future__ import annotations

import asyncio
import base64
import os
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from services.toolkit.callers import new_key_pair
from tests.integration.editor.test_crash_durability import wait_serving
from tests.integration.gateway.harness import gateway_settings, register_user, serve_gateway

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def small_volume(tmp_path):
    volume = tmp_path / "volume"
    volume.mkdir()
    try:
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(volume)], check=True,
                       capture_output=True, timeout=10)
    except (OSError, subprocess.SubprocessError) as error:
        pytest.skip(f"cannot mount a tmpfs here (needs root and mount permission): {error}")
    try:
        yield volume
    finally:
        subprocess.run(["umount", "-l", str(volume)], check=False, capture_output=True, timeout=10)


def start_editor(database_url: str, port: int, log: Path) -> subprocess.Popen:
    env = dict(os.environ, FABULA_EDITOR_DATABASE_URL=database_url, FABULA_EDITOR_PORT=str(port),
               FABULA_EDITOR_METRICS_PORT="0", FABULA_EDITOR_AUTH_HASH_OPSLIMIT="1",
               FABULA_EDITOR_AUTH_HASH_MEMLIMIT="8192", FABULA_EDITOR_MIN_KDF_OPSLIMIT="1",
               FABULA_EDITOR_MIN_KDF_MEMLIMIT="8192", FABULA_EDITOR_GRACE_S="0",
               # The gateway here signs nothing (it has no key): the editor takes it as a direct client.
               FABULA_EDITOR_CALLER_KEYS=new_key_pair()[1])
    return subprocess.Popen([sys.executable, "-m", "services.editor"], cwd=REPO, env=env,
                            stdout=log.open("ab"), stderr=subprocess.STDOUT)


def stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


async def test_a_full_volume_is_503_with_retry_after_and_loses_no_acknowledged_write(small_volume, tmp_path):
    url, port, log = f"sqlite:///{small_volume / 'editor.db'}", free_port(), tmp_path / "editor.log"
    address = f"127.0.0.1:{port}"
    acknowledged: dict[str, bytes] = {}
    editor = start_editor(url, port, log)
    try:
        await wait_serving(address, editor, log)
        async with serve_gateway(gateway_settings(address)) as live, \
                httpx.AsyncClient(base_url=live.url, timeout=30.0) as client:
            user = await register_user(client, "filler")
            refused = None
            for number in range(200):
                data = os.urandom(64 * 1024)
                reply = await client.put(f"/user/objects/stories/s{number}", headers=user.headers,
                                         json={"data": base64.b64encode(data).decode(), "expected_change_index": 0})
                if reply.status_code not in (200, 201):
                    refused = reply
                    break
                acknowledged[f"s{number}"] = data
            assert refused is not None, "the 2 MiB volume never filled up"
            assert refused.status_code == 503, refused.text
            assert int(refused.headers["Retry-After"]) >= 1
            assert refused.json()["error"]["code"] == "UNAVAILABLE"
            assert acknowledged
            assert (await client.get("/user/me", headers=user.headers)).status_code == 200

            stop(editor)
            subprocess.run(["mount", "-o", "remount,size=16m", str(small_volume)], check=True, capture_output=True)
            editor = start_editor(url, port, log)
            await wait_serving(address, editor, log)
            # The gateway's channel reconnects by itself; until it has, calls are 503 as well.
            async with asyncio.timeout(30):
                while (await client.get("/user/me", headers=user.headers)).status_code == 503:
                    await asyncio.sleep(0.2)
            for id_, data in acknowledged.items():
                reply = await client.get(f"/user/objects/stories/{id_}", headers=user.headers)
                assert reply.status_code == 200, reply.text
                assert base64.b64decode(reply.json()["data"]) == data
    finally:
        stop(editor)
