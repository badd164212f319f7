"""Builds the gateway app; nothing else lives here."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib.metadata import version

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from gateway import contract, tracing
from gateway.clients import ServiceChannels
from gateway.settings import GatewaySettings
from gateway.client_address import ClientAddresses
from gateway.deps import AuthCache
from gateway.errors import install_handlers
from gateway.front_door import FrontDoor, route_rules
from gateway.rate_limits import RateLimits
from gateway.raw_objects import RawObjectData
from gateway.image_jobs import ImageJobs
from gateway.routes import a1111, health, image, kobold, novelai, object_data, objects, openai, text, transfer, user, web
from gateway.schemas.kobold import kobold_error_body
from gateway.schemas.openai import openai_error_body

ROUTERS = (health.router, user.router, objects.router, object_data.router, transfer.router, text.router,
           image.router, openai.router, kobold.router, a1111.router, novelai.router,
           # Last: the web editor's page and files (only `/` and `/assets/...`).
           web.router)
# The compatible APIs answer errors in their clients' shapes.
ERROR_SHAPES = {"/v1/": openai_error_body, "/api/": kobold_error_body}


def create_app(settings: GatewaySettings | None = None) -> FastAPI:
    settings = settings or GatewaySettings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.channels = ServiceChannels.open(settings)
        # The document's run-time limits are learnt in the background: start-up never waits for
        # the text and image services (a gateway in front of the editor alone must start at once),
        # and /openapi.json is the static document until both have answered.
        learning = asyncio.create_task(app.state.contract.learn(app.state.channels.text_stub,
                                                                app.state.channels.image_stub))
        try:
            yield
        finally:
            learning.cancel()
            await app.state.channels.close()
            await app.state.rate_limits.close()

    app = FastAPI(
        title="Fabula",
        version=version("fabula"),
        description="AI-assisted, illustrated, end-to-end encrypted storytelling.",
        lifespan=lifespan,
        telemetry=tracing.fastapi_telemetry(settings),
    )
    app.state.settings = settings
    app.state.contract = contract.install(app)
    app.state.auth_cache = AuthCache(settings.auth_cache_s)
    app.state.rate_limits = RateLimits(settings)
    app.state.client_addresses = ClientAddresses(settings.trusted_proxies)
    app.state.image_jobs = ImageJobs()
    app.state.kobold_generations = kobold.Generations()
    install_handlers(app, ERROR_SHAPES)
    for router in ROUTERS:
        app.include_router(router)
    # Inside the front door: the lean path of the raw object routes (raw_objects.py).
    app.add_middleware(RawObjectData)
    app.add_middleware(FrontDoor, rules=route_rules(ROUTERS, settings),
                       default_max_body_bytes=settings.max_sign_in_body_bytes,
                       rate_limits=app.state.rate_limits, auth_cache=app.state.auth_cache,
                       client_addresses=app.state.client_addresses, error_shapes=ERROR_SHAPES)
    if settings.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins,
                           allow_methods=["*"], allow_headers=["*"])
    tracing.instrument(app, settings)
    return app
