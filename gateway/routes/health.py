"""Liveness, readiness and Prometheus metrics of the gateway."""

from __future__ import annotations

import asyncio

import grpc
from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel

from gateway.deps import Channels
# Registers the toolkit's metric families (fabula_rpc_*) in this process too: every Fabula
# process's page lists the same families, so one scrape configuration reads them all.
from services.toolkit import metrics as _toolkit_metrics  # noqa: F401

router = APIRouter(tags=["health"])

_CHECK_TIMEOUT_S = 2.0


class HealthReport(BaseModel):
    status: str
    services: dict[str, str]


async def _service_status(channel: grpc.aio.Channel) -> str:
    try:
        reply = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=""), timeout=_CHECK_TIMEOUT_S)
    except grpc.aio.AioRpcError as error:
        return "UNREACHABLE" if error.code() == grpc.StatusCode.UNAVAILABLE else error.code().name
    return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)


@router.get("/health/live", summary="The gateway process is up")
async def live() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/health", response_model=HealthReport, summary="The gateway and every service it needs",
            responses={503: {"model": HealthReport}})
async def ready(channels: Channels) -> JSONResponse:
    names = ("editor", "text", "image")
    statuses = await asyncio.gather(*(_service_status(getattr(channels, name)) for name in names))
    services = dict(zip(names, statuses))
    # The gateway is useful as soon as the editor answers; text and image may come up later.
    ok = services["editor"] == "SERVING"
    all_ok = all(status == "SERVING" for status in statuses)
    report = HealthReport(status="ok" if all_ok else ("degraded" if ok else "unavailable"),
                          services=services)
    return JSONResponse(report.model_dump(), status_code=200 if ok else 503)


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def metrics() -> Response:
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
