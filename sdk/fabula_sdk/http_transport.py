"""The user API over HTTP/JSON through the gateway (the contract in docs/encryption.md and the
gateway's OpenAPI document at /docs)."""

from __future__ import annotations

import base64
from collections.abc import Iterable
from datetime import datetime
from typing import Any, BinaryIO

import httpx

from fabula_sdk.errors import ApiError, TransportError, api_error
from fabula_sdk.transport import Transport
from fabula_sdk.types import ImportResult, KdfParams, ObjectMeta, Salt, Session, StoredKeystore
from fabula_wire import ObjectType

DEFAULT_URL = "http://127.0.0.1:8000"
ARCHIVE_MEDIA_TYPE = "application/x-tar"
OCTET_STREAM = "application/octet-stream"


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text, validate=True)


def _time(text: str) -> datetime:
    return datetime.fromisoformat(text)


def _session(body: dict[str, Any]) -> Session:
    return Session(token=body["token"], expires_at=_time(body["expires_at"]), user_id=body["user_id"])


def _meta(body: dict[str, Any]) -> ObjectMeta:
    return ObjectMeta(id=body["id"], type=ObjectType(body["type"]), size=body["size"],
                      change_index=body["change_index"], created_at=_time(body["created_at"]),
                      updated_at=_time(body["updated_at"]))


def error_from_response(response: httpx.Response) -> ApiError:
    """The SDK error for a non-2xx answer, from the gateway's {"error": {code, message, field}}."""
    retry_after = response.headers.get("retry-after")
    retry_after_s = float(retry_after) if retry_after and retry_after.isdigit() else None
    try:
        error = response.json()["error"]
        return api_error(response.status_code, str(error["code"]), str(error["message"]), error.get("field"),
                         retry_after_s)
    except (ValueError, KeyError, TypeError):
        # Not the gateway's error body (a proxy in between, or not a Fabula server at all).
        return api_error(response.status_code, f"HTTP_{response.status_code}",
                         response.text[:200] or response.reason_phrase, None, retry_after_s)


class HttpTransport(Transport):
    def __init__(self, url: str = DEFAULT_URL, *, timeout_s: float = 60.0,
                 transport: httpx.BaseTransport | None = None) -> None:
        self.url = url.rstrip("/")
        self._http = httpx.Client(base_url=self.url, timeout=timeout_s, transport=transport)
        self.token = None

    def close(self) -> None:
        self._http.close()

    # --- plumbing ---------------------------------------------------------------------------

    def _headers(self, signed_in: bool) -> dict[str, str]:
        if not signed_in:
            return {}
        if not self.token:
            raise TransportError("not signed in: log in or register first")
        return {"Authorization": f"Bearer {self.token}"}

    def _send(self, method: str, path: str, *, json: Any = None, content: bytes | None = None,
              params: dict[str, Any] | None = None, signed_in: bool = True) -> httpx.Response:
        headers = self._headers(signed_in)
        if content is not None:
            headers["Content-Type"] = OCTET_STREAM
        try:
            response = self._http.request(method, path, json=json, content=content, params=params, headers=headers)
        except httpx.HTTPError as error:
            raise TransportError(f"{method} {self.url}{path} failed: {error}") from error
        if response.is_error:
            raise error_from_response(response)
        return response

    def _call(self, method: str, path: str, *, json: Any = None, content: bytes | None = None,
              params: dict[str, Any] | None = None, signed_in: bool = True) -> Any:
        response = self._send(method, path, json=json, content=content, params=params, signed_in=signed_in)
        if response.status_code == 204 or not response.content:
            return None
        try:
            return response.json()
        except ValueError:
            raise TransportError(f"{method} {path} answered {response.status_code} with a body that is not JSON") from None

    # --- account ----------------------------------------------------------------------------

    def get_salt(self, username: str) -> Salt:
        body = self._call("POST", "/user/salt", json={"username": username}, signed_in=False)
        return Salt(salt=_unb64(body["salt"]), kdf=KdfParams(**body["kdf"]))

    def register(self, username: str, salt: bytes, kdf: KdfParams, auth_key: bytes, keystore: bytes) -> Session:
        return _session(self._call("POST", "/user/register", signed_in=False, json={
            "username": username, "salt": _b64(salt), "kdf": kdf.to_json(), "auth_key": _b64(auth_key),
            "keystore": _b64(keystore)}))

    def login(self, username: str, auth_key: bytes) -> Session:
        return _session(self._call("POST", "/user/login", signed_in=False,
                                   json={"username": username, "auth_key": _b64(auth_key)}))

    def logout(self) -> None:
        self._call("POST", "/user/logout")

    def me(self) -> tuple[str, str]:
        body = self._call("GET", "/user/me")
        return body["user_id"], body["username"]

    def change_password(self, old_auth_key: bytes, new_salt: bytes, new_kdf: KdfParams, new_auth_key: bytes,
                        keystore: bytes, expected_keystore_change_index: int) -> tuple[Session, int]:
        body = self._call("POST", "/user/change-password", json={
            "old_auth_key": _b64(old_auth_key), "new_salt": _b64(new_salt), "new_kdf": new_kdf.to_json(),
            "new_auth_key": _b64(new_auth_key), "keystore": _b64(keystore),
            "expected_keystore_change_index": expected_keystore_change_index})
        return _session(body), body["keystore_change_index"]

    def delete_account(self, auth_key: bytes) -> int:
        return self._call("POST", "/user/delete", json={"auth_key": _b64(auth_key)})["deleted_objects"]

    def get_keystore(self) -> StoredKeystore:
        body = self._call("GET", "/user/keystore")
        return StoredKeystore(blob=_unb64(body["keystore"]), change_index=body["change_index"],
                              updated_at=_time(body["updated_at"]))

    def put_keystore(self, blob: bytes, expected_change_index: int) -> int:
        return self._call("PUT", "/user/keystore", json={"keystore": _b64(blob),
                                                         "expected_change_index": expected_change_index})["change_index"]

    # --- objects ----------------------------------------------------------------------------

    def list_objects(self, type: ObjectType, page_size: int | None = None,
                     page_token: str = "") -> tuple[list[ObjectMeta], str]:
        params: dict[str, Any] = {"page_token": page_token} if page_token else {}
        if page_size is not None:
            params["page_size"] = page_size
        body = self._call("GET", f"/user/objects/{type.value}", params=params)
        return [_meta(item) for item in body["objects"]], body["next_page_token"]

    # Objects travel as raw bytes (the `/data` routes), not base64 in JSON: cheaper at both ends.

    def put_object(self, type: ObjectType, id: str, data: bytes, expected_change_index: int) -> ObjectMeta:
        return _meta(self._call("PUT", f"/user/objects/{type.value}/{id}/data", content=data,
                                params={"expected_change_index": expected_change_index}))

    def get_object(self, type: ObjectType, id: str) -> tuple[ObjectMeta, bytes]:
        response = self._send("GET", f"/user/objects/{type.value}/{id}/data")
        headers = response.headers
        try:
            meta = ObjectMeta(id=id, type=type, size=len(response.content),
                              change_index=int(headers["x-fabula-change-index"]),
                              created_at=_time(headers["x-fabula-created-at"]),
                              updated_at=_time(headers["x-fabula-updated-at"]))
        except (KeyError, ValueError):
            raise TransportError(f"GET {self.url}/user/objects/{type.value}/{id}/data answered without "
                                 "valid X-Fabula-* metadata headers") from None
        return meta, response.content

    def delete_object(self, type: ObjectType, id: str, expected_change_index: int | None = None) -> None:
        params = {"expected_change_index": expected_change_index} if expected_change_index is not None else None
        self._call("DELETE", f"/user/objects/{type.value}/{id}", params=params)

    # --- archives ---------------------------------------------------------------------------

    def export_account(self, sink: BinaryIO) -> int:
        written = 0
        try:
            with self._http.stream("GET", "/user/export", headers=self._headers(True)) as response:
                if response.is_error:
                    response.read()
                    raise error_from_response(response)
                for piece in response.iter_bytes():
                    sink.write(piece)
                    written += len(piece)
        except httpx.HTTPError as error:
            raise TransportError(f"export failed after {written} bytes: {error}") from error
        return written

    def import_account(self, pieces: Iterable[bytes], expected_keystore_change_index: int) -> ImportResult:
        headers = {**self._headers(True), "Content-Type": ARCHIVE_MEDIA_TYPE}
        try:
            response = self._http.post("/user/import", content=pieces, headers=headers,
                                       params={"expected_keystore_change_index": expected_keystore_change_index})
        except httpx.HTTPError as error:
            raise TransportError(f"import failed: {error}") from error
        if response.is_error:
            raise error_from_response(response)
        body = response.json()
        return ImportResult(imported_objects=body["imported_objects"], keystore_replaced=body["keystore_replaced"])

