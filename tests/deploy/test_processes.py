"""The manifests cannot drift from the code: the real processes start with exactly the command
and environment the CPU overlay gives their containers, come up healthy and serve a request.

Only what must differ on one machine is rewritten, and the test asserts that nothing else is:
bind addresses and ports (free local ones), the services' DNS names (127.0.0.1), the PostgreSQL
DSN (a fresh schema on the local server) and paths on the pod's volumes (the same path under a
private folder standing in for the volume).
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.toolkit.callers import METADATA_KEY, TokenSigner
from tests.conftest import fresh_postgres_schema
from tests.deploy.kube import autoscaled_series, container_env, mount_for, named

OVERLAY = "cpu"
ORDER = ("editor", "text", "image", "gateway")
# Loading and warming a model on a 2-core machine; the manifests' startup probes allow more.
READY_TIMEOUT_S = 300.0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Rewrites:
    """Every change made to a manifest's environment, so the test can show it changed nothing else."""

    done: list[tuple[str, str, str, str]] = field(default_factory=list)

    def apply(self, process: str, env: dict[str, str], key: str, expected_old: str, new: str) -> None:
        assert key in env, f"{process}: the manifest sets no {key}"
        assert re.fullmatch(expected_old, env[key]), f"{process}: {key}={env[key]!r}, expected {expected_old!r}"
        self.done.append((process, key, env[key], new))
        env[key] = new


@dataclass
class Started:
    process: str
    child: subprocess.Popen
    log: Path
    ports: dict[str, int]
    manifest_env: dict[str, str]
    env: dict[str, str]
    grace_period_s: int

    def log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-6000:]


def _container(process: str) -> dict:
    (container,) = named(OVERLAY, "Deployment", f"fabula-{process}")["spec"]["template"]["spec"]["containers"]
    return container


def _manifest(process: str) -> tuple[list[str], dict[str, str], int]:
    deployment = named(OVERLAY, "Deployment", f"fabula-{process}")
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    return ([*container["command"], *container.get("args", [])], container_env(OVERLAY, container),
            pod["terminationGracePeriodSeconds"])


def _on_volumes(process: str, env: dict[str, str]) -> list[str]:
    """The variables whose value is a path on one of the container's volume mounts."""
    container = _container(process)
    return [key for key, value in env.items() if value.startswith("/") and mount_for(container, value)]


def _rewrite(process: str, env: dict[str, str], rewrites: Rewrites, ports: dict[str, dict[str, int]],
             database_url: str, volumes: Path) -> dict[str, int]:
    prefix = f"FABULA_{process.upper()}_"
    own = {"port": _free_port()}
    # The pod's volumes (writable emptyDirs, read-only models) become folders under `volumes`, at
    # the same paths; the root filesystem stays out of reach as in the container.
    for key in _on_volumes(process, env):
        rewrites.apply(process, env, key, re.escape(env[key]), str(volumes / env[key].lstrip("/")))
    rewrites.apply(process, env, prefix + "HOST", r"0\.0\.0\.0", "127.0.0.1")
    rewrites.apply(process, env, prefix + "PORT", r"\d+", str(own["port"]))
    if process != "gateway":
        own["metrics"] = _free_port()
        rewrites.apply(process, env, prefix + "METRICS_PORT", r"[1-9]\d*", str(own["metrics"]))
    if process == "editor":
        rewrites.apply(process, env, prefix + "DATABASE_URL", r"postgresql://fabula:[^@]+@fabula-postgres:5432/fabula",
                       database_url)
    if process == "gateway":
        # The overlay's Redis is the local one; a prefix of this run's own keeps parallel runs
        # (and other tests) from sharing counters with it.
        rewrites.apply(process, env, prefix + "REDIS_URL", r"redis://fabula-redis\.fabula\.svc\.cluster\.local:6379/0",
                       "redis://127.0.0.1:6379/0")
        rewrites.apply(process, env, prefix + "RATE_LIMIT_KEY_PREFIX", r"fabula-gateway",
                       f"test-processes-{os.getpid()}-{time.monotonic_ns()}")
        for service in ("editor", "text", "image"):
            service_port = _manifest(service)[1][f"FABULA_{service.upper()}_PORT"]
            rewrites.apply(process, env, f"{prefix}{service.upper()}_ADDRESS",
                           rf"dns:///fabula-{service}\.fabula\.svc\.cluster\.local:{service_port}",
                           f"dns:///127.0.0.1:{ports[service]['port']}")
    return own


def _start(process: str, workdir: Path, rewrites: Rewrites, ports: dict[str, dict[str, int]],
           database_url: str) -> Started:
    command, manifest_env, grace_period_s = _manifest(process)
    env = dict(manifest_env)
    home = workdir / process
    home.mkdir()
    ports[process] = _rewrite(process, env, rewrites, ports, database_url, home / "volumes")
    assert command[0] == "python", f"{process}: the image's venv python runs the command, got {command[0]!r}"
    log = home / "log.txt"
    # A clean environment, as in the container: the manifest's variables, plus the image's own
    # (PATH, HOME=/tmp there; a private folder here).
    child_env = {**env, "PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home),
                 "PYTHONUNBUFFERED": "1"}
    with log.open("wb") as out:
        child = subprocess.Popen([sys.executable, *command[1:]], env=child_env, cwd=home, stdout=out,
                                 stderr=subprocess.STDOUT, start_new_session=True)
    return Started(process, child, log, ports[process], manifest_env, env, grace_period_s)


def _wait_grpc_serving(started: Started) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    with grpc.insecure_channel(f"127.0.0.1:{started.ports['port']}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            if started.child.poll() is not None:
                pytest.fail(f"{started.process} exited with {started.child.returncode}:\n{started.log_tail()}",
                            pytrace=False)
            try:
                if stub.Check(health_pb2.HealthCheckRequest(), timeout=2).status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.5)
    pytest.fail(f"{started.process} not SERVING after {READY_TIMEOUT_S:.0f}s:\n{started.log_tail()}", pytrace=False)


def _wait_http_live(started: Started) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if started.child.poll() is not None:
            pytest.fail(f"gateway exited with {started.child.returncode}:\n{started.log_tail()}", pytrace=False)
        try:
            if httpx.get(f"http://127.0.0.1:{started.ports['port']}/health/live", timeout=2).is_success:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    pytest.fail(f"gateway not live after {READY_TIMEOUT_S:.0f}s:\n{started.log_tail()}", pytrace=False)


def _stop(started: Started) -> int | None:
    if started.child.poll() is None:
        started.child.send_signal(signal.SIGTERM)
    try:
        return started.child.wait(timeout=started.grace_period_s)
    except subprocess.TimeoutExpired:
        started.child.kill()
        started.child.wait()
        return None


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Started | BaseException]]:
    """Every process of the CPU overlay, started at once (model loading overlaps), then made healthy.

    A process that cannot start is recorded, not raised, so the others are still checked."""
    workdir = tmp_path_factory.mktemp("stack")
    rewrites = Rewrites()
    ports: dict[str, dict[str, int]] = {}
    stack: dict[str, Started | BaseException] = {}
    with fresh_postgres_schema() as database_url:
        try:
            for process in ORDER:
                try:
                    stack[process] = _start(process, workdir, rewrites, ports, database_url)
                except (AssertionError, KeyError) as error:
                    # The gateway needs every service's port; a service that failed leaves it a dead one.
                    stack[process] = error
                    ports.setdefault(process, {"port": _free_port()})
            stack["rewrites"] = rewrites  # type: ignore[assignment]
            yield stack
        finally:
            stopped = {name: _stop(started) for name, started in stack.items() if isinstance(started, Started)}
            stack["exit_codes"] = stopped  # type: ignore[assignment]


def _started(stack: dict, process: str) -> Started:
    started = stack[process]
    if not isinstance(started, Started):
        pytest.fail(f"{process} could not be started from the manifest: {started}", pytrace=False)
    if process == "gateway":
        _wait_http_live(started)
    else:
        _wait_grpc_serving(started)
    return started


def test_only_local_differences_were_rewritten(stack: dict) -> None:
    rewrites: Rewrites = stack["rewrites"]
    changed = {(process, key) for process, key, _, _ in rewrites.done}
    expected = set()
    for process in ORDER:
        prefix = f"FABULA_{process.upper()}_"
        expected |= {(process, prefix + "HOST"), (process, prefix + "PORT")}
        if process != "gateway":
            expected.add((process, prefix + "METRICS_PORT"))
        expected |= {(process, key) for key in _on_volumes(process, _manifest(process)[1])}
    expected.add(("editor", "FABULA_EDITOR_DATABASE_URL"))
    expected |= {("gateway", f"FABULA_GATEWAY_{s}_ADDRESS") for s in ("EDITOR", "TEXT", "IMAGE")}
    expected |= {("gateway", "FABULA_GATEWAY_REDIS_URL"), ("gateway", "FABULA_GATEWAY_RATE_LIMIT_KEY_PREFIX")}
    assert changed == expected
    for process in ORDER:
        started = stack[process]
        if isinstance(started, Started):
            untouched = {k: v for k, v in started.env.items() if (process, k) not in changed}
            assert untouched == {k: v for k, v in started.manifest_env.items() if (process, k) not in changed}
            assert set(started.env) == set(started.manifest_env), f"{process}: variables added or dropped"


def _assert_scaling_series_exported(started: Started) -> None:
    """The series the GPU overlay's autoscaler scales this process on have samples on /metrics
    once the models are loaded (prometheus-adapter sees no series that has none)."""
    metrics = httpx.get(f"http://127.0.0.1:{started.ports['metrics']}/metrics").text
    series = autoscaled_series("gpu").get(started.process)
    assert series, f"no autoscaler scales fabula-{started.process} on a custom metric"
    for name in series:
        assert re.search(rf"^{re.escape(name)}(\{{[^}}]*\}})? ", metrics, re.MULTILINE), \
            f"{started.process}: no {name} sample on /metrics"


def _assert_written_on_volume(started: Started, key: str) -> None:
    manifest_path = started.manifest_env[key]
    assert mount_for(_container(started.process), manifest_path), f"{key}={manifest_path} is on no volume"
    local = Path(started.env[key])
    assert local != Path(manifest_path) and local.is_dir() and any(local.iterdir()), \
        f"{started.process}: nothing written to {key} ({manifest_path})"


def _as_gateway(service: str) -> tuple[tuple[str, str], ...]:
    """The caller token the gateway would send `service`, signed with the manifest's key: the
    services take only calls signed with the key pair the overlay gives them."""
    signing_key = _manifest("gateway")[1]["FABULA_GATEWAY_CALLER_SIGNING_KEY"]
    return ((METADATA_KEY, TokenSigner(signing_key).mint("", service)),)


def test_editor_serves_get_salt_and_metrics(stack: dict) -> None:
    from fabula.editor.v1 import editor_pb2, editor_pb2_grpc

    started = _started(stack, "editor")
    with grpc.insecure_channel(f"127.0.0.1:{started.ports['port']}") as channel:
        stub = editor_pb2_grpc.EditorServiceStub(channel)
        reply = stub.GetSalt(editor_pb2.GetSaltRequest(username="manifest-check"), timeout=10,
                             metadata=_as_gateway("editor"))
        # The manifest lets only the gateway in.
        with pytest.raises(grpc.RpcError) as refused:
            stub.GetSalt(editor_pb2.GetSaltRequest(username="manifest-check"), timeout=10)
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert len(reply.salt) == 16
    assert "fabula_rpc_requests_total" in httpx.get(f"http://127.0.0.1:{started.ports['metrics']}/metrics").text


def test_text_serves_count_tokens_and_metrics(stack: dict) -> None:
    from fabula.text.v1 import text_pb2, text_pb2_grpc

    started = _started(stack, "text")
    with grpc.insecure_channel(f"127.0.0.1:{started.ports['port']}") as channel:
        reply = text_pb2_grpc.TextServiceStub(channel).CountTokens(
            text_pb2.CountTokensRequest(texts=["Once upon a time, a dragon", ""]), timeout=30,
            metadata=_as_gateway("text"))
    assert reply.counts[0] > 3 and reply.counts[1] == 0
    _assert_scaling_series_exported(started)
    # The default model is a GGUF file, converted at start-up into FABULA_TEXT_CACHE_DIR: the
    # manifest must point it at a writable volume (the root filesystem is read-only).
    _assert_written_on_volume(started, "FABULA_TEXT_CACHE_DIR")


def test_image_serves_tokenize_and_metrics(stack: dict) -> None:
    try:
        from fabula.image.v1 import image_pb2, image_pb2_grpc
    except ModuleNotFoundError as error:
        pytest.fail(f"the image service's protos do not exist ({error})", pytrace=False)
    started = _started(stack, "image")
    request = image_pb2.TokenizeRequest()
    text_field = next(f for f in request.DESCRIPTOR.fields if f.type == f.TYPE_STRING and f.name != "model")
    setattr(request, text_field.name, "a castle at dawn, watercolor")
    service = image_pb2.DESCRIPTOR.services_by_name
    (stub_name,) = [name for name in service]
    with grpc.insecure_channel(f"127.0.0.1:{started.ports['port']}") as channel:
        reply = getattr(image_pb2_grpc, f"{stub_name}Stub")(channel).Tokenize(request, timeout=30,
                                                                              metadata=_as_gateway("image"))
    assert reply.ByteSize() > 0
    _assert_scaling_series_exported(started)
    # The built-in model is built, and model hashes remembered, in FABULA_IMAGE_CACHE_DIR.
    _assert_written_on_volume(started, "FABULA_IMAGE_CACHE_DIR")


def test_gateway_is_healthy_and_serves_user_salt(stack: dict) -> None:
    for service in ("editor", "text", "image"):
        if isinstance(stack[service], Started):
            _started(stack, service)
    started = _started(stack, "gateway")
    base = f"http://127.0.0.1:{started.ports['port']}"
    health = httpx.get(f"{base}/health", timeout=10)
    assert health.status_code == 200
    assert health.json()["services"] == {"editor": "SERVING", "text": "SERVING", "image": "SERVING"}
    salt = httpx.post(f"{base}/user/salt", json={"username": "manifest-check"}, timeout=10)
    assert salt.status_code == 200, salt.text
    assert set(salt.json()) >= {"salt", "kdf"}
    assert "fabula" in httpx.get(f"{base}/metrics", timeout=10).text


def test_processes_drain_within_their_termination_grace(stack: dict) -> None:
    """SIGTERM (what the kubelet sends) stops each process cleanly before the grace period ends."""
    problems = []
    for process in ORDER:
        started = stack[process]
        if not isinstance(started, Started):
            problems.append(f"{process}: not startable from the manifest ({started})")
        elif started.child.poll() is not None:
            problems.append(f"{process}: had exited ({started.child.returncode}) before SIGTERM")
        # uvicorn re-raises SIGTERM after its clean shutdown, so the gateway "dies" of it.
        elif (code := _stop(started)) not in (0, -signal.SIGTERM):
            problems.append(f"{process}: exit code {code} after SIGTERM (None: still running after "
                            f"{started.grace_period_s}s)\n{started.log_tail()}")
    assert not problems, "\n".join(problems)


def test_engine_build_job_accepts_its_command_and_environment(tmp_path: Path) -> None:
    """The GPU overlay's fabula-build-engines Job, run as written (command, args, environment) with
    CUDA hidden: build_all must accept its flags and settings and stop only because there is no
    GPU (or no TensorRT) here, not on a usage error or a settings validation error."""
    job = named("gpu", "Job", "fabula-build-engines")
    (container,) = job["spec"]["template"]["spec"]["containers"]
    command = [*container["command"], *container.get("args", [])]
    assert command[0] == "python"
    env = {**container_env("gpu", container), "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
           "HOME": str(tmp_path), "CUDA_VISIBLE_DEVICES": ""}
    result = subprocess.run([sys.executable, *command[1:]], env=env, cwd=tmp_path, capture_output=True,
                            text=True, timeout=120)
    output = result.stdout + result.stderr
    assert result.returncode == 2 and "make engines: " in result.stderr, output
    assert "usage:" not in output and "Traceback" not in output, output
    assert "no CUDA GPU" in result.stderr or "TensorRT" in result.stderr or "tensorrt" in result.stderr, output
