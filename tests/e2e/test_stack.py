"""`make run`'s launcher: every process comes up healthy, answers, and stops cleanly on Ctrl-C."""

from __future__ import annotations

import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time

import httpx
import pytest

from services.stack import PROCESSES

READY_TIMEOUT_S = 300


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class _Output:
    """The launcher's output, read on a thread so that waiting for a line can time out."""

    def __init__(self, process: subprocess.Popen) -> None:
        self.lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._pump, args=(process,), daemon=True).start()

    def _pump(self, process: subprocess.Popen) -> None:
        for line in process.stdout:
            self.lines.put(line.rstrip())
        self.lines.put(None)

    def until(self, marker: str, timeout_s: float) -> list[str]:
        seen: list[str] = []
        deadline = time.monotonic() + timeout_s
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self.lines.get(timeout=left)
            except queue.Empty:
                break
            if line is None:
                break
            seen.append(line)
            if marker in line:
                return seen
        pytest.fail(f"no {marker!r} from the launcher; it printed: {seen}")


def test_stack_starts_every_process_and_stops_on_ctrl_c(tmp_path):
    env = dict(os.environ)
    ports = {process.name: _free_port() for process in PROCESSES}
    for process in PROCESSES:
        env[f"{process.env_prefix}PORT"] = str(ports[process.name])
        env[f"{process.env_prefix}METRICS_PORT"] = "0"
    launcher = subprocess.Popen(
        [sys.executable, "-u", "-m", "services.stack"], cwd=tmp_path, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    output = _Output(launcher)
    try:
        lines = output.until("Fabula is running", READY_TIMEOUT_S)
        started = [p.name for p in PROCESSES if any(line.strip().startswith(p.name) for line in lines)]
        assert "editor" in started and "gateway" in started, lines

        gateway = f"http://127.0.0.1:{ports['gateway']}"
        health = httpx.get(f"{gateway}/health", timeout=10).json()
        for name in started:
            if name != "gateway":
                assert health["services"][name] == "SERVING", health
        salt = httpx.post(f"{gateway}/user/salt", json={"username": "someone"}, timeout=10)
        assert salt.status_code == 200 and "salt" in salt.json(), salt.text
        # The editor kept its database in the working directory's data folder.
        assert (tmp_path / "data" / "editor.db").exists()

        launcher.send_signal(signal.SIGINT)
        rest = output.until("Stopped.", 60)
        assert launcher.wait(timeout=30) == 0, rest
        assert not any("killing it" in line for line in rest), rest
    finally:
        if launcher.poll() is None:
            launcher.kill()
            launcher.wait()
