"""The editor process's settings (env prefix FABULA_EDITOR_), each with a single-machine default."""

from __future__ import annotations

import nacl.pwhash.argon2id as argon2id
from pydantic import Field, SecretStr, model_validator
from pydantic_settings import SettingsConfigDict

from services.toolkit.settings import ServiceSettings

DEVELOPMENT_SECRET = "fabula-development-secret-not-for-production"
MiB = 1024 * 1024


class EditorSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="FABULA_EDITOR_", extra="ignore")

    port: int = Field(50051, ge=0, le=65535, description="gRPC port; 0 picks a free one")
    metrics_port: int = Field(9101, ge=0, le=65535, description="Prometheus /metrics port; 0 disables it")

    database_url: str = Field(
        "sqlite:///data/editor.db",
        description="sqlite:///relative/path.db, sqlite:////absolute/path.db or postgresql://user@host/db",
    )
    database_pool_size: int = Field(8, ge=1, le=256,
                                    description="PostgreSQL connections / SQLite reader connections")
    database_connect_timeout_s: float = Field(30.0, gt=0, description="how long start-up waits for the database")
    # Faults of the database answer UNAVAILABLE (503 with Retry-After at the gateway) instead of
    # leaving a call waiting: these bound every wait on the database.
    database_pool_timeout_s: float = Field(5.0, gt=0, description="wait for a free connection before UNAVAILABLE")
    database_lock_timeout_s: float = Field(5.0, gt=0,
                                           description="wait for a row/database lock (PostgreSQL lock_timeout, "
                                                       "SQLite busy timeout) before UNAVAILABLE")
    database_statement_timeout_s: float = Field(30.0, gt=0, description="PostgreSQL statement_timeout")
    database_idle_in_transaction_timeout_s: float = Field(
        60.0, gt=0, description="PostgreSQL idle_in_transaction_session_timeout: a stuck transaction's locks go")
    health_probe_interval_s: float = Field(5.0, gt=0,
                                           description="how often the database is probed for the health service")

    server_secret: SecretStr = Field(
        SecretStr(DEVELOPMENT_SECRET),
        description="keys the decoy salts of unknown usernames; must be set (32+ characters) in production",
    )
    accept_direct_clients: bool = Field(
        True, description="also serve clients that reach the editor without the gateway (the SDK's gRPC "
                          "transport): they sign in and authenticate with their session token; false = only "
                          "calls the gateway signed (FABULA_EDITOR_CALLER_KEYS)")
    session_ttl_s: float = Field(30 * 24 * 3600, gt=0, description="how long a session token is accepted")

    # The server's own Argon2id cost for hashing authentication keys.
    auth_hash_opslimit: int = Field(argon2id.OPSLIMIT_INTERACTIVE, ge=argon2id.OPSLIMIT_MIN,
                                    le=argon2id.OPSLIMIT_MAX)
    auth_hash_memlimit: int = Field(argon2id.MEMLIMIT_INTERACTIVE, ge=argon2id.MEMLIMIT_MIN,
                                    le=argon2id.MEMLIMIT_MAX)
    max_concurrent_hashes: int = Field(4, ge=1, description="Argon2id runs at once (each takes memlimit bytes)")
    max_queued_hashes: int = Field(64, ge=0, description="Argon2id runs waiting for a slot; beyond it a login "
                                                         "is refused at once (RESOURCE_EXHAUSTED)")

    # What GetSalt answers for unknown usernames: it must equal what clients register with by
    # default, or the decoy would stand out.
    default_kdf_opslimit: int = Field(argon2id.OPSLIMIT_MODERATE, ge=argon2id.OPSLIMIT_MIN)
    default_kdf_memlimit: int = Field(argon2id.MEMLIMIT_MODERATE, ge=argon2id.MEMLIMIT_MIN)
    # The floor below which a client-chosen cost is refused at registration and password change
    # (docs/encryption.md, "The floor"): libsodium's INTERACTIVE cost, which SDK clients also
    # require of what GetSalt answers. Only tests lower it, to libsodium's minimum, for speed.
    min_kdf_opslimit: int = Field(argon2id.OPSLIMIT_INTERACTIVE, ge=argon2id.OPSLIMIT_MIN, le=argon2id.OPSLIMIT_MAX)
    min_kdf_memlimit: int = Field(argon2id.MEMLIMIT_INTERACTIVE, ge=argon2id.MEMLIMIT_MIN, le=argon2id.MEMLIMIT_MAX)
    # Sane maxima for client-chosen KDF parameters (libsodium's own maxima are absurd).
    max_kdf_opslimit: int = Field(64, ge=argon2id.OPSLIMIT_MIN, le=argon2id.OPSLIMIT_MAX)
    max_kdf_memlimit: int = Field(4096 * MiB, ge=argon2id.MEMLIMIT_MIN, le=argon2id.MEMLIMIT_MAX)

    max_object_bytes: int = Field(16 * MiB, ge=1, description="largest single object (INVALID_ARGUMENT beyond)")
    max_objects_per_user: int = Field(10_000, ge=1, description="object count quota (RESOURCE_EXHAUSTED)")
    max_bytes_per_user: int = Field(1024 * MiB, ge=1, description="stored bytes quota (RESOURCE_EXHAUSTED)")
    max_keystore_bytes: int = Field(1 * MiB, ge=1, description="largest keystore blob")
    max_archive_bytes: int = Field(1088 * MiB, ge=1024, description="largest import/export archive")
    export_chunk_bytes: int = Field(1 * MiB, ge=1024, description="bytes per ExportAccount message")
    # Exports and imports pass through a spool (memory, then the temporary directory's volume):
    # together they may hold at most `transfer_spool_bytes`, which must fit that volume (the
    # Kubernetes base gives /tmp an emptyDir of 2560Mi for the 2304 MiB set there).
    transfer_spool_bytes: int = Field(2304 * MiB, ge=1024, description="bytes all export/import spools may hold")
    max_concurrent_transfers: int = Field(4, ge=1, description="exports and imports running at once")
    max_transfers_per_user: int = Field(1, ge=1, description="exports and imports one account may run at once")
    import_batch_bytes: int = Field(8 * MiB, ge=1024,
                                    description="objects staged per write transaction of an import")
    max_api_tokens_per_user: int = Field(100, ge=1, description="personal API tokens an account may hold")
    max_page_size: int = Field(1000, ge=1)
    default_page_size: int = Field(100, ge=1)

    @model_validator(mode="after")
    def _check(self) -> EditorSettings:
        secret = self.server_secret.get_secret_value()
        if self.environment == "production" and (secret == DEVELOPMENT_SECRET or len(secret) < 32):
            raise ValueError("FABULA_EDITOR_SERVER_SECRET must be set to a random value of 32+ characters "
                             "in production (the development default is public)")
        if not secret:
            raise ValueError("server_secret must not be empty")
        if self.default_kdf_opslimit > self.max_kdf_opslimit or self.default_kdf_memlimit > self.max_kdf_memlimit:
            raise ValueError("default_kdf_* must lie within max_kdf_*")
        if self.default_kdf_opslimit < self.min_kdf_opslimit or self.default_kdf_memlimit < self.min_kdf_memlimit:
            raise ValueError("default_kdf_* must not lie below min_kdf_* (the decoy would answer a cost "
                             "no account can have)")
        if self.min_kdf_opslimit > self.max_kdf_opslimit or self.min_kdf_memlimit > self.max_kdf_memlimit:
            raise ValueError("min_kdf_* must not exceed max_kdf_*")
        if self.default_page_size > self.max_page_size:
            raise ValueError("default_page_size must not exceed max_page_size")
        # An object must fit in one gRPC message with its envelope.
        if self.max_object_bytes + 64 * 1024 > self.max_message_bytes:
            raise ValueError("max_object_bytes must be at least 64 KiB below max_message_bytes")
        if self.max_archive_bytes > self.transfer_spool_bytes:
            raise ValueError("max_archive_bytes must not exceed transfer_spool_bytes (an archive is spooled)")
        if self.max_transfers_per_user > self.max_concurrent_transfers:
            raise ValueError("max_transfers_per_user must not exceed max_concurrent_transfers")
        if self.max_keystore_bytes + 64 * 1024 > self.max_message_bytes:
            raise ValueError("max_keystore_bytes must be at least 64 KiB below max_message_bytes")
        return self
