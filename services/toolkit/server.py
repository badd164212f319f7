"""Serving: one way to start a gRPC server, for processes and for in-process tests alike.

A service hands over a `register(server)` callback that adds its servicers and returns the full
names of the services it added. The toolkit adds what every service keeps: the exception and
tracing interceptors, the caller-token check (`callers.py`), the standard health service (NOT_SERVING until the service says it is
warm, NOT_SERVING again on SIGTERM), server reflection, and a graceful drain on shutdown.

The drain, in order: health turns NOT_SERVING; for `drain_delay_s` new calls are still accepted
and served, so that load balancers and health-checking clients that have not yet noticed keep
getting answers while they move away; then the server refuses new calls and gives every call it
holds — running, or waiting in a service's queue — up to `grace_s` to finish; only then does
the service's own shutdown run (closing queues, models, databases).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from services.toolkit import metrics, tracing
from services.toolkit.callers import CallerCheck, caller_check
from services.toolkit.heap import freeze_startup_heap
from services.toolkit.interceptor import ExceptionInterceptor
from services.toolkit.settings import ServiceSettings

log = logging.getLogger(__name__)

Register = Callable[[grpc.aio.Server], Iterable[str]]

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


@dataclass
class RunningServer:
    """A started server, the port it got, and the handle that flips its health."""

    server: grpc.aio.Server
    port: int
    health: health.aio.HealthServicer
    service_names: list[str] = field(default_factory=list)

    async def set_serving(self, serving: bool) -> None:
        status = SERVING if serving else NOT_SERVING
        # "" is the whole server's status, which Kubernetes' gRPC probes ask for by default.
        for name in ["", *self.service_names]:
            await self.health.set(name, status)

    async def stop(self, grace_s: float | None = None, *, drain_delay_s: float = 0.0) -> None:
        """NOT_SERVING; still accept new calls for `drain_delay_s`; then refuse new calls and
        let those already accepted finish for up to `grace_s` (None: without limit)."""
        await self.set_serving(False)
        if drain_delay_s > 0:
            await asyncio.sleep(drain_delay_s)
        await self.server.stop(grace_s)


async def start_server(
    register: Register,
    address: str = "127.0.0.1:0",
    *,
    max_message_bytes: int = 32 * 1024 * 1024,
    max_concurrent_rpcs: int | None = None,
    serving: bool = True,
    callers: CallerCheck | None = None,
) -> RunningServer:
    """Start a server on `address` ("host:0" picks a free port) and return it with its port.

    Tests call this with the default address; `serve` calls it with the configured one and
    `serving=False`, flipping health to SERVING only after the models are warm. `callers` checks
    every call's caller token; `serve` always installs one, while an in-process test server
    without it takes every call as an anonymous caller's.
    """
    server = grpc.aio.server(
        # The exception interceptor wraps the caller check, so a refused token is UNAUTHENTICATED
        # with its ErrorDetail like any other domain error.
        interceptors=[*tracing.server_interceptors(), ExceptionInterceptor(), *([callers] if callers else [])],
        options=[
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
        ],
        maximum_concurrent_rpcs=max_concurrent_rpcs,
    )
    names = list(register(server))
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        [*names, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME],
        server,
    )
    port = server.add_insecure_port(address)
    if port == 0:
        raise OSError(f"could not bind gRPC server to {address}")
    await server.start()
    running = RunningServer(server=server, port=port, health=health_servicer, service_names=names)
    await running.set_serving(serving)
    return running


async def serve(
    settings: ServiceSettings,
    register: Register,
    *,
    audience: str,
    callers_required: bool = True,
    warm_up: Callable[[], Awaitable[None]] | None = None,
    on_shutdown: Callable[[], Awaitable[None]] | None = None,
    watch: Callable[[RunningServer], Awaitable[None]] | None = None,
) -> None:
    """Run a service until SIGTERM/SIGINT, then drain: `settings.drain_delay_s` still accepting
    new calls, then `settings.grace_s` for the calls accepted to finish.

    `watch`, when given, runs from SERVING until shutdown begins and may flip health meanwhile
    (the editor follows its database); it is stopped first, so nothing turns SERVING during a drain.
    Calls must carry a caller token for `audience` signed with a key of `settings.caller_keys`
    (with `callers_required=False`, a call without one passes with no caller).
    """
    callers = _callers(settings, audience, callers_required)
    metrics.serve_metrics(settings.host.strip("[]") if settings.host != "[::]" else "::",
                          settings.metrics_port)
    running = await start_server(
        register,
        settings.address,
        max_message_bytes=settings.max_message_bytes,
        max_concurrent_rpcs=settings.max_concurrent_rpcs,
        serving=False,
        callers=callers,
    )
    log.info("gRPC listening on %s:%d", settings.host, running.port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    watching: asyncio.Task | None = None
    try:
        if warm_up is not None:
            await warm_up()
        freeze_startup_heap()
        await running.set_serving(True)
        log.info("serving (health SERVING)")
        if watch is not None:
            watching = asyncio.create_task(watch(running))
        await stop.wait()
        log.info("shutting down: NOT_SERVING, accepting calls for %.1fs more, then %.1fs for them to finish",
                 settings.drain_delay_s, settings.grace_s)
    finally:
        if watching is not None:
            watching.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watching
        await running.stop(settings.grace_s, drain_delay_s=settings.drain_delay_s)
        if on_shutdown is not None:
            await on_shutdown()
        log.info("stopped")


def _callers(settings: ServiceSettings, audience: str, required: bool) -> CallerCheck:
    if not settings.caller_keys.strip():
        variable = f"{settings.model_config.get('env_prefix', 'FABULA_')}CALLER_KEYS"
        log.error("%s is not set: the service accepts only calls signed by the gateway and needs its public "
                  "key(s). `make run` generates a key pair per run; `python -m services.toolkit.callers` "
                  "prints one (docs/architecture.md, \"Service-to-service trust\").", variable)
        raise SystemExit(2)
    return caller_check(settings.caller_keys, audience, required=required)
