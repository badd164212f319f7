"""The gRPC servicer: protobuf in, domain call, protobuf out (the conversions are wire.py's). No SQL
and no crypto decisions here.

The bearer token is read from the "authorization" metadata in one place, `_caller`. A call the
gateway signed (services/toolkit/callers.py) still carries the user's session, checked here on
every call so a revoked session is refused at once; the signed user must be the session's.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc

from fabula.editor.v1 import editor_pb2 as pb
from fabula.editor.v1 import editor_pb2_grpc
from services.editor import wire
from services.editor.accounts import Accounts
from services.editor.api_tokens import ApiTokens, is_api_token
from services.editor.object_stream import ObjectDataStreams
from services.editor.objects import Objects
from services.editor.transfer import Transfers
from services.editor.types import Account, Caller, TokenScope
from services.toolkit.callers import Caller as SignedCaller, current_caller
from services.toolkit.errors import PermissionDenied, Unauthenticated

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["EditorService"].full_name


def bearer_token(context: grpc.aio.ServicerContext) -> str:
    """The token of "authorization: Bearer <token>", or "" when there is none."""
    for key, value in context.invocation_metadata() or ():
        if key == "authorization" and isinstance(value, str):
            return wire.bearer_of(value)
    return ""


class EditorServicer(editor_pb2_grpc.EditorServiceServicer):
    def __init__(self, accounts: Accounts, objects: Objects, transfers: Transfers, api_tokens: ApiTokens) -> None:
        self._accounts, self._objects, self._transfers = accounts, objects, transfers
        self._api_tokens = api_tokens
        self.object_streams = ObjectDataStreams(self)

    async def _caller(self, context: grpc.aio.ServicerContext) -> Account:
        """The session's account; a personal API token is refused here (PERMISSION_DENIED)."""
        return self._signed_for(await self._accounts.authenticate(bearer_token(context)))

    @staticmethod
    def _signed_for(account: Account, signed: SignedCaller | None = None) -> Account:
        """`account`, unless the gateway signed this call (or `signed`) for another user."""
        signed = signed or current_caller()
        # "" is the gateway before it knows the user (it is checking this very token).
        if signed is not None and signed.user_id and signed.user_id != account.user_id:
            raise PermissionDenied("the session belongs to another user than the gateway signed for",
                                   field="authorization", reason="CALLER_MISMATCH")
        return account

    async def _any_caller(self, context: grpc.aio.ServicerContext) -> Caller:
        """A session's or a personal API token's account, with the token's scope (Authenticate only)."""
        token = bearer_token(context)
        if not is_api_token(token):
            return Caller(self._signed_for(await self._accounts.authenticate(token)), TokenScope.SESSION)
        account = await self._api_tokens.account(token)
        if account is None:
            raise Unauthenticated("the API token is invalid, expired or revoked", field="authorization")
        return Caller(self._signed_for(account), TokenScope.GENERATION)

    # Accounts and sessions.
    async def GetSalt(self, request: pb.GetSaltRequest, context) -> pb.GetSaltResponse:
        salt, kdf = await self._accounts.get_salt(request.username)
        return wire.salt_to_pb(salt, kdf)

    async def Register(self, request: pb.RegisterRequest, context) -> pb.RegisterResponse:
        session = await self._accounts.register(request.username, request.salt, request.kdf.opslimit,
                                                request.kdf.memlimit, request.auth_key, request.keystore)
        return pb.RegisterResponse(session=wire.session_to_pb(session))

    async def Login(self, request: pb.LoginRequest, context) -> pb.LoginResponse:
        session = await self._accounts.login(request.username, request.auth_key)
        return pb.LoginResponse(session=wire.session_to_pb(session))

    async def Logout(self, request: pb.LogoutRequest, context) -> pb.LogoutResponse:
        await self._caller(context)
        await self._accounts.logout(bearer_token(context))
        return pb.LogoutResponse()

    async def Authenticate(self, request: pb.AuthenticateRequest, context) -> pb.AuthenticateResponse:
        return wire.caller_to_pb(await self._any_caller(context))

    # Personal API tokens.
    async def CreateApiToken(self, request: pb.CreateApiTokenRequest, context) -> pb.CreateApiTokenResponse:
        account = await self._caller(context)
        token, stored = await self._api_tokens.create(account, request.name, wire.expires_at_from_pb(request))
        return wire.created_api_token_to_pb(token, stored)

    async def ListApiTokens(self, request: pb.ListApiTokensRequest, context) -> pb.ListApiTokensResponse:
        account = await self._caller(context)
        return wire.api_token_list_to_pb(await self._api_tokens.list(account))

    async def RevokeApiToken(self, request: pb.RevokeApiTokenRequest, context) -> pb.RevokeApiTokenResponse:
        account = await self._caller(context)
        await self._api_tokens.revoke(account, request.id)
        return pb.RevokeApiTokenResponse()

    async def ChangePassword(self, request: pb.ChangePasswordRequest, context) -> pb.ChangePasswordResponse:
        account = await self._caller(context)
        session, index = await self._accounts.change_password(
            account, old_auth_key=request.old_auth_key, new_salt=request.new_salt,
            new_opslimit=request.new_kdf.opslimit, new_memlimit=request.new_kdf.memlimit,
            new_auth_key=request.new_auth_key, keystore=request.keystore,
            expected_keystore_index=request.expected_keystore_change_index)
        return pb.ChangePasswordResponse(session=wire.session_to_pb(session), keystore_change_index=index)

    async def DeleteAccount(self, request: pb.DeleteAccountRequest, context) -> pb.DeleteAccountResponse:
        account = await self._caller(context)
        deleted = await self._accounts.delete_account(account, request.auth_key)
        return pb.DeleteAccountResponse(deleted_objects=deleted)

    # Keystore.
    async def GetKeystore(self, request: pb.GetKeystoreRequest, context) -> pb.GetKeystoreResponse:
        account = await self._caller(context)
        return wire.keystore_to_pb(await self._objects.get_keystore(account.user_id))

    async def PutKeystore(self, request: pb.PutKeystoreRequest, context) -> pb.PutKeystoreResponse:
        account = await self._caller(context)
        index = await self._objects.put_keystore(account.user_id, request.keystore, request.expected_change_index)
        return pb.PutKeystoreResponse(change_index=index)

    # Objects.
    async def PutObject(self, request: pb.PutObjectRequest, context) -> pb.PutObjectResponse:
        return await self.put_object(request, bearer_token(context))

    async def put_object(self, request: pb.PutObjectRequest, token: str) -> pb.PutObjectResponse:
        """PutObject for the session `token` (a unary call's, or one ObjectData message's)."""
        write = self._objects.valid_write(request.type, request.id, request.data, request.expected_change_index)
        if write is None:  # the caller first, as everywhere; then the refusal of the request
            account = self._signed_for(await self._accounts.authenticate(token))
            meta = await self._objects.put(account.user_id, request.type, request.id, request.data,
                                           request.expected_change_index)
            return pb.PutObjectResponse(meta=wire.object_meta_to_pb(meta))
        # The most frequent write: the session check and the write in one trip to the database,
        # the signed caller checked against the session's account before anything is written
        # (on the database's thread, where this call's context is not at hand: hence `signed`).
        signed = current_caller()

        def admit(account: Account) -> Account:
            return self._signed_for(account, signed)

        _, meta = await self._accounts.authenticate_with(token, lambda hashed, _now: (
            self._objects.put_for_session(hashed, admit, write, request.expected_change_index)))
        return pb.PutObjectResponse(meta=wire.object_meta_to_pb(meta))

    async def GetObject(self, request: pb.GetObjectRequest, context) -> pb.GetObjectResponse:
        return await self.get_object(request, bearer_token(context))

    async def get_object(self, request: pb.GetObjectRequest, token: str) -> pb.GetObjectResponse:
        """GetObject for the session `token` (a unary call's, or one ObjectData message's)."""
        key = self._objects.valid_key(request.type, request.id)
        if key is None:  # the caller first, as everywhere; then the refusal of the type or id
            account = self._signed_for(await self._accounts.authenticate(token))
            return wire.stored_object_to_pb(await self._objects.get(account.user_id, request.type, request.id))
        # The most frequent call: the session check and the read in one trip to the database.
        account, stored = await self._accounts.authenticate_and_get(token, *key)
        self._signed_for(account)
        return wire.stored_object_to_pb(self._objects.found(stored, *key))

    async def ObjectData(self, request_iterator, context) -> AsyncIterator[pb.ObjectDataResponse]:
        async for answer in self.object_streams.serve(request_iterator, context):
            yield answer

    async def ListObjects(self, request: pb.ListObjectsRequest, context) -> pb.ListObjectsResponse:
        account = await self._caller(context)
        page, next_token = await self._objects.list(account.user_id, request.type, request.page_size,
                                                    request.page_token)
        return wire.object_page_to_pb(page, next_token)

    async def DeleteObject(self, request: pb.DeleteObjectRequest, context) -> pb.DeleteObjectResponse:
        account = await self._caller(context)
        await self._objects.delete(account.user_id, request.type, request.id,
                                   wire.expected_change_index_from_pb(request))
        return pb.DeleteObjectResponse()

    # Export and import.
    async def ExportAccount(self, request: pb.ExportAccountRequest, context) -> AsyncIterator[pb.ExportAccountResponse]:
        account = await self._caller(context)
        async for chunk in self._transfers.export(account.user_id):
            yield wire.export_chunk_to_pb(chunk)

    async def ImportAccount(self, request_iterator, context) -> pb.ImportAccountResponse:
        account = await self._caller(context)
        expected, chunks = await wire.import_from_pb(request_iterator)
        result = await self._transfers.import_(account.user_id, expected, chunks)
        return wire.import_result_to_pb(result)


def registrar(servicer: EditorServicer):
    """The `register(server)` callback the toolkit's server runner takes."""

    def register(server: grpc.aio.Server) -> list[str]:
        editor_pb2_grpc.add_EditorServiceServicer_to_server(servicer, server)
        return [SERVICE_NAME]

    return register
