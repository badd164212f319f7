"""The CLI's saved session: private file, exact round trip, clear error when damaged."""

from __future__ import annotations

import stat

import pytest

from fabula_sdk.session_store import SavedSession, SessionStore
from fabula_wire import ObjectType


def _session() -> SavedSession:
    return SavedSession(url="http://127.0.0.1:8000", username="ada", user_id="u1", token="t0k3n",
                        master_key=bytes(range(32)), revisions={(ObjectType.STORY, "s-1"): 4})


def test_round_trip_and_permissions(tmp_path):
    store = SessionStore(tmp_path / "home")
    assert store.load() is None
    store.save(_session())
    assert store.load() == _session()
    assert stat.S_IMODE(store.path.stat().st_mode) == 0o600
    assert stat.S_IMODE(store.home.stat().st_mode) == 0o700
    assert [path.name for path in store.home.iterdir()] == ["session.json"]  # no temporary left behind
    assert "master_key" not in repr(_session()) and bytes(range(32)).hex() not in repr(_session())


def test_wider_permissions_are_narrowed_on_save(tmp_path):
    store = SessionStore(tmp_path)
    store.path.write_text("{}")
    store.path.chmod(0o644)
    store.save(_session())
    assert stat.S_IMODE(store.path.stat().st_mode) == 0o600


def test_delete(tmp_path):
    store = SessionStore(tmp_path)
    store.save(_session())
    assert store.delete() is True
    assert store.delete() is False and store.load() is None


def test_damaged_file_is_reported(tmp_path):
    store = SessionStore(tmp_path)
    store.path.write_text('{"url": "x"}')
    with pytest.raises(ValueError, match="damaged"):
        store.load()
