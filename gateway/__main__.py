"""`python -m gateway`: serve the HTTP gateway with uvicorn."""

from __future__ import annotations

import logging

from gateway.settings import GatewaySettings
from services.toolkit.logs import setup_logging
from services.toolkit.tracing import setup_tracing


def _logs_info(level: str) -> bool:
    number = logging.getLevelName(level.upper())
    return isinstance(number, int) and number <= logging.INFO


def main() -> None:
    settings = GatewaySettings()
    setup_logging(settings.log_level, settings.log_json)
    setup_tracing("fabula-gateway", settings.otlp_endpoint)

    import uvicorn

    from gateway.main import create_app
    from services.toolkit.heap import freeze_startup_heap

    app = create_app(settings)
    freeze_startup_heap()
    uvicorn.run(app, host=settings.host, port=settings.port,
                log_level=settings.log_level.lower(), timeout_graceful_shutdown=10,
                # libuv's loop and httptools' parser cost less CPU per request than asyncio's
                # own loop and h11 (bench/storage.py).
                loop="uvloop", http="httptools",
                # The app reads X-Forwarded-For itself, from trusted proxies only
                # (gateway/client_address.py); uvicorn's own handling would believe 127.0.0.1.
                proxy_headers=False,
                # uvicorn formats each request's access-log line (its path and query string
                # included) before its logger drops it; below INFO nothing would be written.
                access_log=_logs_info(settings.log_level))


if __name__ == "__main__":
    main()
