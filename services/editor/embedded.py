"""The editor in-process on 127.0.0.1:0, for tests of the gateway, the SDK and benchmarks.

    async with embedded_editor(EditorSettings(database_url=..., auth_hash_opslimit=1,
                                              auth_hash_memlimit=8192)) as editor:
        channel = grpc.aio.insecure_channel(editor.address)
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from services.editor.app import EditorApp
from services.editor.settings import EditorSettings
from services.editor.storage import Storage
from services.editor.types import Clock, system_clock
from services.toolkit.callers import caller_check
from services.toolkit.server import RunningServer, start_server


def fast_settings(database_url: str, **overrides: object) -> EditorSettings:
    """Settings for tests: libsodium's minimum Argon2id cost, the KDF floor lowered to it (the
    production defaults stay as they are), small pools, no metrics port."""
    values: dict[str, object] = dict(
        database_url=database_url, auth_hash_opslimit=1, auth_hash_memlimit=8192, default_kdf_opslimit=1,
        default_kdf_memlimit=8192, min_kdf_opslimit=1, min_kdf_memlimit=8192, database_pool_size=4,
        metrics_port=0, port=0)
    values.update(overrides)
    return EditorSettings(**values)


@dataclass
class EmbeddedEditor:
    address: str
    port: int
    storage: Storage
    settings: EditorSettings
    app: EditorApp
    server: RunningServer


@asynccontextmanager
async def embedded_editor(settings: EditorSettings | None = None, *,
                          clock: Clock = system_clock) -> AsyncIterator[EmbeddedEditor]:
    """Open the database (migrating it), serve on a free port, and stop both on exit."""
    settings = settings or EditorSettings()
    app = EditorApp.create(settings, clock)
    await app.open()
    try:
        # With caller keys configured it checks callers as the process does; without, it takes
        # every call as a direct client's.
        callers = (caller_check(settings.caller_keys, "editor", required=not settings.accept_direct_clients)
                   if settings.caller_keys else None)
        running = await start_server(app.register, "127.0.0.1:0", max_message_bytes=settings.max_message_bytes,
                                     max_concurrent_rpcs=settings.max_concurrent_rpcs, callers=callers)
        watch = asyncio.create_task(app.watch_database(running))
        try:
            yield EmbeddedEditor(address=f"127.0.0.1:{running.port}", port=running.port, storage=app.storage,
                                 settings=settings, app=app, server=running)
        finally:
            watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watch
            await running.stop(0)
    finally:
        await app.close()
