"""The typed settings base every service process subclasses (env vars, then CLI flags).

Each service sets its own env prefix (FABULA_EDITOR_, FABULA_TEXT_, FABULA_IMAGE_) and adds its
fields; every field has a default that works on a single machine.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class ServiceSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FABULA_", extra="ignore")

    environment: Literal["development", "production"] = Field(
        "development", description="'production' refuses development-only secrets")
    host: str = Field("127.0.0.1", description="address the gRPC server binds to ('[::]' in a pod)")
    port: int = Field(50051, ge=0, le=65535, description="gRPC port; 0 picks a free one")
    drain_delay_s: float = Field(
        0.0, ge=0, description="seconds after SIGTERM that new calls are still served while health says NOT_SERVING "
                               "(time for load balancers to move away); then new calls are refused")
    grace_s: float = Field(10.0, ge=0, description="seconds accepted calls (running or queued) get to finish on SIGTERM")
    log_level: str = "INFO"
    log_json: bool = False
    otlp_endpoint: str = Field("", description="OTLP gRPC endpoint for traces; empty disables export")
    metrics_port: int = Field(0, ge=0, le=65535, description="Prometheus /metrics port; 0 disables it")
    max_message_bytes: int = Field(32 * 1024 * 1024, ge=1024, description="largest gRPC message accepted")
    max_concurrent_rpcs: int = Field(256, ge=1, description="calls beyond this are refused at once")
    caller_keys: str = Field("", description="the gateway's Ed25519 public key(s), base64, comma-separated (two "
                                             "while the key is rotated); calls must carry a token signed with one")

    @field_validator("caller_keys")
    @classmethod
    def _check_caller_keys(cls, value: str) -> str:
        from services.toolkit.callers import parse_public_keys

        parse_public_keys(value)  # a key that does not parse is a start-up error naming it
        return value

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"
