"""Fixtures for the editor's integration tests: a client stub and two registered users."""

from __future__ import annotations

import grpc
import pytest

from fabula.editor.v1 import editor_pb2_grpc
from tests.integration.editor.client import User, register


@pytest.fixture
async def stub(editor):
    async with grpc.aio.insecure_channel(editor.address) as channel:
        yield editor_pb2_grpc.EditorServiceStub(channel)


@pytest.fixture
async def alice(stub) -> User:
    return await register(stub, "alice")


@pytest.fixture
async def bob(stub) -> User:
    return await register(stub, "bob")
