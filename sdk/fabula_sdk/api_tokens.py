"""Personal API tokens through the gateway's /user/tokens routes: long-lived tokens for the
OpenAI- and KoboldAI-compatible APIs, scoped to generation (they never read or write stories).
Managing them needs a session token, not an API token.

    with ApiTokenClient("http://127.0.0.1:8000", session_token) as tokens:
        created = tokens.create("SillyTavern", expires_at=None)
        print(created.token)  # shown only this once
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from fabula_sdk.ai_http import AiHttpClient


@dataclass(frozen=True)
class ApiToken:
    id: str
    name: str
    created_at: datetime
    expires_at: datetime | None
    token: str = ""  # only in the answer to create()

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> ApiToken:
        expires = body.get("expires_at")
        return cls(id=body["id"], name=body["name"], created_at=datetime.fromisoformat(body["created_at"]),
                   expires_at=datetime.fromisoformat(expires) if expires else None, token=body.get("token", ""))


class ApiTokenClient(AiHttpClient):
    def create(self, name: str, expires_at: datetime | None = None) -> ApiToken:
        """A new token; `expires_at` must carry a time zone (None: never expires)."""
        body = {"name": name, "expires_at": expires_at.isoformat() if expires_at else None}
        return ApiToken.from_json(self._request("POST", "/user/tokens", body).json())

    def list(self) -> list[ApiToken]:
        return [ApiToken.from_json(item) for item in self._request("GET", "/user/tokens").json()]

    def revoke(self, token_id: str) -> None:
        self._request("DELETE", f"/user/tokens/{token_id}")
