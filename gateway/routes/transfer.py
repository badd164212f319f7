"""Export and import of the whole account as one tar archive, streamed in both directions.

Neither direction holds the archive in memory: export passes the editor's chunks straight to
the HTTP response, import passes the request body straight into the client-streaming call (in
messages of about 1 MiB). The archive format is the editor's (see services/editor/archive.py).
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator
from typing import Annotated

import grpc
from fastapi import APIRouter, Query, Request
from fastapi.responses import StreamingResponse
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

from fabula.editor.v1 import editor_pb2
from gateway.calls import DisconnectWatch, first_message
from gateway.deps import Editor, RateLimitedUser, Settings
from gateway.errors import ApiError
from gateway.schemas.common import error_responses
from gateway.schemas.editor import ImportResponse

log = logging.getLogger(__name__)

router = APIRouter(prefix="/user", tags=["transfer"])

ARCHIVE_MEDIA_TYPE = "application/x-tar"
# What /user/import accepts; anything else is 415, so a JSON body sent by mistake is not fed to
# the tar reader.
IMPORT_MEDIA_TYPES = {ARCHIVE_MEDIA_TYPE, "application/octet-stream"}
IMPORT_MESSAGE_BYTES = 1024 * 1024
MAX_CHANGE_INDEX = 2**63 - 1  # the editor's change indexes are signed 64-bit in its databases
_ARCHIVE_SCHEMA = {"schema": {"type": "string", "format": "binary"}}


def _attachment_name(user_id: str) -> str:
    return f"fabula-export-{re.sub(r'[^A-Za-z0-9_-]', '_', user_id)[:64]}.tar"


@router.get("/export", response_class=StreamingResponse,
            responses={200: {"content": {ARCHIVE_MEDIA_TYPE: _ARCHIVE_SCHEMA},
                             "description": "the account's archive (still encrypted), streamed"},
                       **error_responses(401, 429, 503, 504)},
            summary="Download every object and the keystore as one tar archive")
async def export_account(request: Request, user: RateLimitedUser, editor: Editor,
                         settings: Settings) -> StreamingResponse:
    call = editor.ExportAccount(editor_pb2.ExportAccountRequest(), metadata=user.metadata,
                                timeout=settings.stream_timeout_s)
    # Waiting for the first piece before answering lets a failure up to here get its own status,
    # instead of a 200 followed by a broken body.
    first = await first_message(request, call, "editor")
    disposition = f'attachment; filename="{_attachment_name(user.user_id)}"'
    return StreamingResponse(_archive_pieces(call, first), media_type=ARCHIVE_MEDIA_TYPE,
                             headers={"Content-Disposition": disposition})


async def _archive_pieces(call: grpc.aio.UnaryStreamCall,
                          first: editor_pb2.ExportAccountResponse) -> AsyncIterator[bytes]:
    # Starlette cancels this generator when the client disconnects; `finally` then stops the
    # export in the editor too.
    try:
        piece = first
        while piece is not grpc.aio.EOF:
            yield piece.chunk
            piece = await call.read()
    except grpc.aio.AioRpcError as error:
        # Too late for an error status: ending the response early tells the client the archive
        # is incomplete (and tar's own end marker is missing).
        log.warning("export failed after the response started: %s %s", error.code().name, error.details())
        raise
    finally:
        call.cancel()


class _BodyPump:
    """Feeds the request body into the call as ImportAccount messages of about 1 MiB.

    gRPC consumes the messages in its own task and, if reading the body fails (the client left,
    the body is too large), cancels the call and swallows the error; the pump keeps what happened
    so the route can answer with it.
    """

    def __init__(self, request: Request, expected_keystore_change_index: int) -> None:
        self._request = request
        self._expected: int | None = expected_keystore_change_index
        self._left = False
        self.too_large: HTTPException | None = None  # the body limit's 413
        self.body_read = asyncio.Event()

    def client_left(self) -> bool:
        return self._left

    def _message(self, chunk: bytes) -> editor_pb2.ImportAccountRequest:
        message = editor_pb2.ImportAccountRequest(chunk=chunk)
        if self._expected is not None:  # the editor reads it from the first message only
            message.expected_keystore_change_index = self._expected
            self._expected = None
        return message

    async def messages(self) -> AsyncIterator[editor_pb2.ImportAccountRequest]:
        buffer = bytearray()
        try:
            async for piece in self._request.stream():
                buffer += piece
                if len(buffer) >= IMPORT_MESSAGE_BYTES:
                    yield self._message(bytes(buffer))
                    buffer.clear()
        except ClientDisconnect:
            self._left = True
            raise
        except HTTPException as error:
            self.too_large = error
            raise
        self.body_read.set()
        if buffer or self._expected is not None:
            yield self._message(bytes(buffer))


@router.post("/import", response_model=ImportResponse,
             openapi_extra={"requestBody": {"required": True,
                                            "content": {ARCHIVE_MEDIA_TYPE: _ARCHIVE_SCHEMA}}},
             responses=error_responses(400, 401, 409, 413, 415, 429, 503, 504),
             summary="Store an archive made by /user/export in the caller's account, all or nothing")
async def import_account(request: Request, user: RateLimitedUser, editor: Editor, settings: Settings,
                         expected_keystore_change_index: Annotated[int, Query(
                             ge=0, le=MAX_CHANGE_INDEX,
                             description="the keystore change index the import is based on (409 if stale)")],
                         ) -> ImportResponse:
    """Objects with the same id are replaced (their change index incremented); a keystore in the
    archive replaces the account's. Everything is validated before anything is written, and
    nothing is if the account's keystore change index is no longer the expected one."""
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type not in IMPORT_MEDIA_TYPES:
        raise ApiError(415, f"content-type must be {ARCHIVE_MEDIA_TYPE} (got {media_type or 'none'!r})",
                       field="content-type")
    pump = _BodyPump(request, expected_keystore_change_index)
    call = editor.ImportAccount(pump.messages(), metadata=user.metadata, timeout=settings.stream_timeout_s)
    # The pump notices a disconnect while the body streams in; the watch covers the wait for
    # the editor's answer after it.
    try:
        async with DisconnectWatch(request, call, after=pump.body_read, left_earlier=pump.client_left):
            reply = await call
    except asyncio.CancelledError:
        if pump.too_large is not None:
            raise pump.too_large from None
        raise
    finally:
        call.cancel()  # a no-op once answered; otherwise stops the import in the editor
    return ImportResponse.from_pb(reply)
