"""Schemathesis hooks for the OpenAPI contract run (tests/integration/compat/test_openapi_contract.py),
loaded by `st` through SCHEMATHESIS_HOOKS.

Authentication: every request carries a live session token. The run may sign its own session out
(`POST /user/logout` with a valid body is a valid request), so before each request the provider
checks the token and signs a new user up when it no longer works: no later request is refused
for a reason its data has nothing to do with.
"""

from __future__ import annotations

import os
import uuid

import httpx
import schemathesis

from tests.integration.gateway.harness import registration

BASE_URL = os.environ["FABULA_CONTRACT_BASE_URL"]

# /user/import takes an export archive (a tar file) as it is: sent as the bytes generated.
schemathesis.serializer.alias("application/x-tar", "application/octet-stream")


@schemathesis.auth(refresh_interval=None)
class LiveSession:
    def __init__(self) -> None:
        self._client = httpx.Client(base_url=BASE_URL, timeout=30)
        self._token = os.environ["FABULA_CONTRACT_TOKEN"]

    def get(self, case, ctx) -> str:
        if self._client.get("/user/me", headers={"Authorization": f"Bearer {self._token}"}).status_code == 401:
            reply = self._client.post("/user/register", json=registration(f"contract-{uuid.uuid4().hex[:12]}"))
            reply.raise_for_status()
            self._token = reply.json()["token"]
        return self._token

    def set(self, case, data: str, ctx) -> None:
        case.headers = {**(case.headers or {}), "Authorization": f"Bearer {data}"}
