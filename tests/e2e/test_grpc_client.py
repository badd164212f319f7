"""The SDK's gRPC client, straight to the editor service: the same operations and the same
errors as over HTTP, and the same data (written over one, read over the other)."""

from __future__ import annotations

import pytest

from fabula_sdk import (
    AuthenticationError,
    ConflictError,
    DecryptionError,
    FabulaClient,
    InvalidRequestError,
    MINIMUM_KDF,
    NotFoundError,
    ObjectType,
    Stories,
)
from tests.e2e.conftest import PASSWORD, in_thread


async def test_grpc_client_end_to_end(editor, connect, database, tmp_path):
    def scenario():
        with FabulaClient.connect_grpc(editor.address, kdf=MINIMUM_KDF, kdf_floor_for_tests=MINIMUM_KDF) as client:
            with pytest.raises(InvalidRequestError) as bad:
                client.register("", PASSWORD)
            assert (bad.value.status, bad.value.field) == (400, "username")
            client.register("grace", PASSWORD)
            story = Stories(client).push("Told over gRPC.", title="Wire")
            with pytest.raises(ConflictError) as stale:
                client.put(ObjectType.STORY, story.id, b"x", expected_change_index=0)
            assert (stale.value.status, stale.value.code, stale.value.field) == (409, "ABORTED", "expected_change_index")
            with pytest.raises(NotFoundError):
                client.get(ObjectType.PRESET, "missing")
            assert [summary.title for summary in Stories(client).list()] == ["Wire"]

            # Written over gRPC, read over HTTP through the gateway, and back.
            over_http = connect()
            over_http.login("grace", PASSWORD)
            assert Stories(over_http).load(story.id).text == "Told over gRPC."
            over_http.put(ObjectType.PRESET, "p", b"preset", expected_change_index=0)
            assert client.get(ObjectType.PRESET, "p").plaintext == b"preset"

            archive = client.export_archive(tmp_path / "grace.tar")
            assert len(archive.objects) == 3
            client.delete(ObjectType.PRESET, "p")
            result = client.import_archive(tmp_path / "grace.tar", PASSWORD)
            assert result.imported_objects == 3 and client.get(ObjectType.PRESET, "p").plaintext == b"preset"

            client.change_password(PASSWORD, "new secret")
            with pytest.raises(AuthenticationError):
                connect().login("grace", PASSWORD)
            assert Stories(client).load(story.id).text == "Told over gRPC."
            user_id = client.user_id
            client.logout()
        return story, user_id

    story, user_id = await in_thread(scenario)
    blob = bytearray(database.object_data(user_id, ObjectType.STORY_CONTENT, story.content_id))
    blob[-1] ^= 1
    database.set_object_data(user_id, ObjectType.STORY_CONTENT, story.content_id, bytes(blob))

    def read_tampered():
        with FabulaClient.connect_grpc(editor.address, kdf=MINIMUM_KDF, kdf_floor_for_tests=MINIMUM_KDF) as client:
            client.login("grace", "new secret")
            with pytest.raises(DecryptionError):
                Stories(client).load(story.id)

    await in_thread(read_tampered)


async def test_grpc_client_against_an_editor_that_checks_callers(tmp_path):
    """Where the editor checks caller tokens, a direct gRPC client is served only if direct clients
    are allowed (it signs in and authenticates with its session); a gateway-only editor refuses it
    before it can even sign in."""
    from services.editor.embedded import embedded_editor, fast_settings
    from services.toolkit.callers import new_key_pair

    public_key = new_key_pair()[1]
    for allowed in (True, False):
        settings = fast_settings(f"sqlite:///{tmp_path / f'editor-{allowed}.db'}", caller_keys=public_key,
                                 accept_direct_clients=allowed)
        async with embedded_editor(settings) as editor:
            def scenario():
                with FabulaClient.connect_grpc(editor.address, kdf=MINIMUM_KDF,
                                               kdf_floor_for_tests=MINIMUM_KDF) as client:
                    client.register("heidi", PASSWORD)
                    story = Stories(client).push("Direct.", title="Direct")
                    assert Stories(client).load(story.id).text == "Direct."

            if allowed:
                await in_thread(scenario)
            else:
                with pytest.raises(AuthenticationError) as refused:
                    await in_thread(scenario)
                assert (refused.value.status, refused.value.field) == (401, "fabula-caller")
