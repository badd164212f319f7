"""The gateway's one settings object (env prefix FABULA_GATEWAY_)."""

from __future__ import annotations

from typing import Literal

import ipaddress

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


KiB = 1024
MiB = 1024 * KiB


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

    web_dir: str = Field("", description="the built web editor (`make web` writes web/dist); empty = web/dist "
                                         "beside the gateway package (a source checkout)")

    caller_signing_key: SecretStr = Field(
        SecretStr(""), description="Ed25519 signing key (base64 seed) for the caller tokens the services require; "
                                   "`make run` generates one per run, production refuses to start without")
    caller_token_ttl_s: float = Field(60.0, gt=0, le=600, description="lifetime of one caller token")

    # Request bodies, by route (gateway/body_limits.py): each limit is enforced while the body
    # streams in, before anything parses it, so a hostile body costs at most its limit.
    max_sign_in_body_bytes: int = Field(4 * KiB, ge=1024,
                                        description="salt, login, account deletion and every route that takes no body")
    max_account_body_bytes: int = Field(1536 * KiB, ge=1024,
                                        description="register, change-password and PUT /user/keystore: the keystore "
                                                    "(editor: 1 MiB) base64-encoded, with the JSON around it")
    max_object_body_bytes: int = Field(22 * MiB, ge=1024,
                                       description="PUT /user/objects/{type}/{id}: the editor's 16 MiB object "
                                                   "base64-encoded, with the JSON around it")
    max_text_body_bytes: int = Field(4 * MiB, ge=1024, description="text generation and both tokenize routes")
    max_image_body_bytes: int = Field(44 * MiB, ge=1024,
                                      description="image generation: the input image and mask base64-encoded, as "
                                                  "much as the image service's 32 MiB message accepts")
    max_import_bytes: int = Field(1088 * MiB, ge=1024,
                                  description="largest archive POST /user/import accepts (413 beyond); "
                                              "keep it at the editor's max_archive_bytes")
    request_timeout_s: float = Field(30.0, gt=0, description="deadline forwarded to unary calls")
    editor_data_streams: int = Field(
        2, ge=0, le=64, description="long-lived ObjectData streams to the editor that carry GET/PUT "
                                    "/user/objects/{type}/{id}/data (gateway/object_stream.py); 0: unary calls")
    editor_data_stream_in_flight: int = Field(64, ge=1, le=256, description="requests in flight per ObjectData "
                                                                            "stream; more wait for a slot")
    stream_timeout_s: float = Field(600.0, gt=0, description="deadline forwarded to streaming calls")
    rate_limit: str = Field("600/minute", description="per-user limit, in the `limits` notation")
    anonymous_rate_limit: str = Field("60/minute", description="per-client-address limit before login")
    failed_login_limit_per_username: str = Field(
        "20/hour", description="failed logins to one username (from any address) before 429")
    failed_login_limit_per_address: str = Field(
        "50/hour", description="failed logins from one client address (to any username) before 429")
    invalid_token_limit: str = Field(
        "30/minute", description="requests with an unknown or revoked token from one client address before 429")
    redis_url: str = Field("", description="keep rate limits in this Redis (redis://host:port/db) so every "
                                           "replica shares them; empty keeps them in this process")
    rate_limit_key_prefix: str = Field("fabula-gateway", min_length=1, max_length=100,
                                       description="prefix of every rate-limit key in Redis")
    redis_timeout_s: float = Field(0.5, gt=0, description="a Redis call slower than this answers 503")
    trusted_proxies: list[str] = Field(
        default_factory=list, description="CIDR networks of reverse proxies whose X-Forwarded-For is believed; "
                                          "empty: the client address is the connection's peer")
    auth_cache_s: float = Field(5.0, ge=0, description="how long a token's user is remembered")
    cors_origins: list[str] = Field(default_factory=list)
    openai_chat_max_tokens: int = Field(512, ge=1, description="max_tokens of an OpenAI chat request that "
                                                               "sends none (OpenAI's own is the context window)")

    @field_validator("rate_limit", "anonymous_rate_limit", "failed_login_limit_per_username",
                     "failed_login_limit_per_address", "invalid_token_limit")
    @classmethod
    def _parses_as_a_limit(cls, value: str) -> str:
        from limits import parse

        try:
            parse(value)
        except ValueError as error:
            raise ValueError(f"not a rate limit in the `limits` notation (e.g. 10/minute): {error}") from None
        return value

    @field_validator("trusted_proxies")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        for network in value:
            try:
                ipaddress.ip_network(network, strict=False)
            except ValueError:
                raise ValueError(f"{network!r} is not a CIDR network (e.g. 10.0.0.0/8)") from None
        return value

    @field_validator("redis_url")
    @classmethod
    def _redis_scheme(cls, value: str) -> str:
        if value and not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must start with redis://, rediss:// or unix://")
        return value

    @field_validator("caller_signing_key")
    @classmethod
    def _check_signing_key(cls, value: SecretStr) -> SecretStr:
        from services.toolkit.callers import public_key_of

        if value.get_secret_value():
            public_key_of(value.get_secret_value())  # a key that does not parse is a start-up error
        return value

    @model_validator(mode="after")
    def _signing_key_in_production(self) -> GatewaySettings:
        if self.environment == "production" and not self.caller_signing_key.get_secret_value():
            raise ValueError("FABULA_GATEWAY_CALLER_SIGNING_KEY must be set in production: the services accept "
                             "only calls the gateway signed")
        return self
