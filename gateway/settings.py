"""The gateway's one settings object (env prefix FABULA_GATEWAY_)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class GatewaySettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FABULA_GATEWAY_", extra="ignore")

    environment: Literal["development", "production"] = "development"
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    log_level: str = "INFO"
    log_json: bool = False
    otlp_endpoint: str = Field("", description="OTLP gRPC endpoint for traces; empty disables export")
    trace_http_spans: bool = Field(False, description="record HTTP server spans even without an OTLP endpoint "
                                                      "(they are always recorded with one)")

    # Where the services are. In Kubernetes use "dns:///name.namespace.svc:port" against a
    # headless Service so that round-robin spreads calls over every replica.
    editor_address: str = "127.0.0.1:50051"
    text_address: str = "127.0.0.1:50052"
    image_address: str = "127.0.0.1:50053"

    max_body_bytes: int = Field(64 * 1024 * 1024, ge=1024,
                                description="largest request body accepted (413 beyond)")
    max_import_bytes: int = Field(1088 * 1024 * 1024, ge=1024,
                                  description="largest archive POST /user/import accepts (413 beyond); "
                                              "keep it at the editor's max_archive_bytes")
    request_timeout_s: float = Field(30.0, gt=0, description="deadline forwarded to unary calls")
    stream_timeout_s: float = Field(600.0, gt=0, description="deadline forwarded to streaming calls")
    rate_limit: str = Field("600/minute", description="per-user limit, in the `limits` notation")
    anonymous_rate_limit: str = Field("60/minute", description="per-client-address limit before login")
    auth_cache_s: float = Field(5.0, ge=0, description="how long a token's user is remembered")
    cors_origins: list[str] = Field(default_factory=list)
