"""Wires the editor together: storage from the registry, the domain objects, the servicer.

Used alike by the process (`cli.py`) and by in-process tests (`embedded.py`).
"""

from __future__ import annotations

from dataclasses import dataclass

from services.editor.accounts import Accounts
from services.editor.api_tokens import ApiTokens
from services.editor.credentials import Credentials
from services.editor.health import DatabaseHealth
from services.editor.objects import Objects
from services.editor.server import EditorServicer, registrar
from services.editor.settings import EditorSettings
from services.editor.storage import Storage, create_storage
from services.editor.transfer import Transfers
from services.editor.types import Clock, system_clock
from services.toolkit.server import Register, RunningServer


@dataclass
class EditorApp:
    settings: EditorSettings
    storage: Storage
    credentials: Credentials
    accounts: Accounts
    api_tokens: ApiTokens
    objects: Objects
    transfers: Transfers
    servicer: EditorServicer

    @classmethod
    def create(cls, settings: EditorSettings, clock: Clock = system_clock) -> EditorApp:
        storage = create_storage(
            settings.database_url, pool_size=settings.database_pool_size,
            connect_timeout_s=settings.database_connect_timeout_s, pool_timeout_s=settings.database_pool_timeout_s,
            lock_timeout_s=settings.database_lock_timeout_s, statement_timeout_s=settings.database_statement_timeout_s,
            idle_in_transaction_timeout_s=settings.database_idle_in_transaction_timeout_s)
        credentials = Credentials(server_secret=settings.server_secret.get_secret_value(),
                                  opslimit=settings.auth_hash_opslimit, memlimit=settings.auth_hash_memlimit,
                                  max_concurrent=settings.max_concurrent_hashes,
                                  max_queued=settings.max_queued_hashes)
        accounts = Accounts(storage, settings, credentials, clock)
        objects = Objects(storage, settings, clock)
        transfers = Transfers(storage, settings, clock)
        api_tokens = ApiTokens(storage, settings, clock)
        servicer = EditorServicer(accounts, objects, transfers, api_tokens)
        # A stream's requests in flight are bounded as the server bounds its calls.
        servicer.object_streams.max_in_flight = settings.max_concurrent_rpcs
        servicer.object_streams.max_message_bytes = settings.max_message_bytes
        return cls(settings=settings, storage=storage, credentials=credentials, accounts=accounts,
                   api_tokens=api_tokens, objects=objects, transfers=transfers,
                   servicer=servicer)

    @property
    def register(self) -> Register:
        return registrar(self.servicer)

    async def open(self) -> None:
        """Connect, migrate the schema, and compute the dummy hash before the first login."""
        await self.storage.open()
        await self.credentials.dummy_hash()

    async def watch_database(self, running: RunningServer) -> None:
        """Keep the server's health in step with the database until cancelled, which is when the
        server starts to drain (toolkit/server.py): the ObjectData streams start to drain too."""
        try:
            await DatabaseHealth(self.storage, interval_s=self.settings.health_probe_interval_s,
                                 set_serving=running.set_serving).run()
        finally:
            self.servicer.object_streams.drain()

    async def close(self) -> None:
        await self.storage.close()
