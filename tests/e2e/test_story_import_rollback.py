"""An imported scenario is stored whole or not at all: when the story itself cannot be stored (here:
larger than the editor's object limit), the lorebook and preset stored before it are deleted."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from fabula_sdk.documents.store import DocumentStore
from fabula_sdk.errors import FabulaError
from fabula_sdk.importers import read_story, store_story
from fabula_sdk.types import ObjectType
from tests.e2e.conftest import PASSWORD, in_thread

FIXTURES = Path(__file__).parents[1] / "fixtures" / "importers"
OBJECT_LIMIT = 8 * 1024


@pytest.fixture
def editor_settings(database_url):
    from services.editor.embedded import fast_settings

    return fast_settings(database_url, max_object_bytes=OBJECT_LIMIT)


async def test_a_story_too_large_to_store_leaves_nothing_behind(connect):
    scenario = json.loads((FIXTURES / "the-keep.scenario").read_text("utf-8"))
    scenario["prompt"] = os.urandom(4 * OBJECT_LIMIT).hex()  # does not compress below the limit
    imported = read_story(json.dumps(scenario).encode(), "big.scenario")

    def run():
        client = connect()
        client.register("importer", PASSWORD)
        store = DocumentStore(client)
        with pytest.raises(FabulaError):
            store_story(store, imported)
        return {type.value: [meta.id for meta in client.list(type)] for type in ObjectType}

    left = await in_thread(run)
    assert left == {type.value: [] for type in ObjectType}
