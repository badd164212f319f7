"""What the text and image clients share: an authenticated HTTP session with the gateway, errors
turned into the SDK's exceptions, and Server-Sent Event streams read as (event, JSON) pairs."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any, Self

import httpx

from fabula_sdk.errors import TransportError, api_error
from fabula_sdk.http_transport import DEFAULT_URL, error_from_response

# An SSE error event carries the gateway's code only; this maps it back to the HTTP status it
# stands for, so a mid-stream failure raises the same exception class as an immediate one.
_STATUS_BY_CODE = {"INVALID_ARGUMENT": 400, "UNAUTHENTICATED": 401, "PERMISSION_DENIED": 403, "NOT_FOUND": 404,
                   "RESOURCE_EXHAUSTED": 429, "CANCELLED": 499, "UNAVAILABLE": 503, "DEADLINE_EXCEEDED": 504}


def sse_events(lines: Iterator[str]) -> Iterator[tuple[str, str]]:
    """(event, data) pairs from Server-Sent Event lines."""
    kind, data = "message", []
    for line in lines:
        if not line:
            if data:
                yield kind, "\n".join(data)
            kind, data = "message", []
        elif line.startswith(":"):
            continue  # a keep-alive comment
        elif line.startswith("event:"):
            kind = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].removeprefix(" "))
    if data:
        yield kind, "\n".join(data)


class AiHttpClient:
    def __init__(self, url: str = DEFAULT_URL, token: str | None = None, *, timeout_s: float = 600.0,
                 transport: httpx.BaseTransport | None = None) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(base_url=url.rstrip("/"), timeout=timeout_s, headers=headers, transport=transport)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _request(self, method: str, path: str, body: Any = None, params: dict[str, Any] | None = None
                 ) -> httpx.Response:
        try:
            response = self._http.request(method, path, json=body, params=params)
        except httpx.HTTPError as error:
            raise TransportError(f"cannot reach {self._http.base_url}: {error}") from error
        if response.status_code >= 400:
            raise error_from_response(response)
        return response

    def _events(self, path: str, body: Any) -> Iterator[tuple[str, Any]]:
        """(event, decoded JSON) from a streaming route; an `error` event raises. Leaving the
        iteration closes the connection, which makes the gateway cancel the work."""
        try:
            with self._http.stream("POST", path, json=body) as response:
                if response.status_code >= 400:
                    response.read()
                    raise error_from_response(response)
                for kind, data in sse_events(response.iter_lines()):
                    decoded = json.loads(data)
                    if kind == "error":
                        error = decoded["error"]
                        raise api_error(_STATUS_BY_CODE.get(error["code"], 500), error["code"], error["message"],
                                        error.get("field"))
                    yield kind, decoded
        except httpx.HTTPError as error:
            raise TransportError(f"stream from {self._http.base_url} failed: {error}") from error
