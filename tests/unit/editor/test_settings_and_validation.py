"""The editor's settings guard production, and input checks name the field at fault."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from services.editor import validation
from services.editor.settings import DEVELOPMENT_SECRET, EditorSettings
from services.editor.storage import create_storage
from services.editor.storage.sqlite import path_from_url
from services.toolkit.errors import InvalidArgument


def test_defaults_are_for_a_single_machine():
    settings = EditorSettings()
    assert (settings.port, settings.metrics_port, settings.database_url) == (50051, 9101, "sqlite:///data/editor.db")
    assert settings.auth_hash_opslimit >= 2 and settings.auth_hash_memlimit >= 64 * 1024 * 1024
    assert settings.session_ttl_s == 30 * 24 * 3600


def test_production_refuses_the_development_secret(monkeypatch):
    with pytest.raises(ValidationError, match="SERVER_SECRET"):
        EditorSettings(environment="production")
    with pytest.raises(ValidationError, match="SERVER_SECRET"):
        EditorSettings(environment="production", server_secret="short")
    monkeypatch.setenv("FABULA_EDITOR_SERVER_SECRET", "a-real-secret-of-enough-length-0123456789")
    assert EditorSettings(environment="production").server_secret.get_secret_value() != DEVELOPMENT_SECRET


def test_settings_come_from_the_environment(monkeypatch):
    monkeypatch.setenv("FABULA_EDITOR_DATABASE_URL", "postgresql://db/editor")
    monkeypatch.setenv("FABULA_EDITOR_MAX_OBJECTS_PER_USER", "7")
    settings = EditorSettings()
    assert (settings.database_url, settings.max_objects_per_user) == ("postgresql://db/editor", 7)


def test_argon2_cost_below_libsodium_minimum_is_refused():
    with pytest.raises(ValidationError):
        EditorSettings(auth_hash_memlimit=4096)


def test_kdf_floor_defaults_to_interactive_and_bounds_the_decoy():
    settings = EditorSettings()
    assert (settings.min_kdf_opslimit, settings.min_kdf_memlimit) == (2, 64 * 1024 * 1024)
    with pytest.raises(ValidationError, match="min_kdf"):
        EditorSettings(default_kdf_opslimit=1)
    with pytest.raises(ValidationError, match="min_kdf"):
        EditorSettings(min_kdf_opslimit=100)
    with pytest.raises(InvalidArgument, match="between 2 and 64") as raised:
        validation.kdf(1, 64 * 1024 * 1024, min_opslimit=2, min_memlimit=8192, max_opslimit=64,
                       max_memlimit=2**32, field="new_kdf")
    assert raised.value.field == "new_kdf.opslimit"


def test_objects_must_fit_in_a_message():
    with pytest.raises(ValidationError, match="max_object_bytes"):
        EditorSettings(max_object_bytes=32 * 1024 * 1024)


@pytest.mark.parametrize(("raw", "normal"), [("alice", "alice"), ("Ame\u0301lie", "Am\u00e9lie"),
                                             ("名前", "名前"), ("a b", "a b"), ("x" * 64, "x" * 64)])
def test_username_normalisation(raw, normal):
    assert validation.username(raw) == normal


@pytest.mark.parametrize("raw", ["", "x" * 65, "a\u0000b", "a\u202eb", " a", "a ", "a\u2028b", "\ue000"])
def test_bad_usernames(raw):
    with pytest.raises(InvalidArgument) as raised:
        validation.username(raw)
    assert raised.value.field == "username"


def test_error_values_are_bounded():
    with pytest.raises(InvalidArgument) as raised:
        validation.object_id("x" * 100_000)
    assert len(raised.value.message) < 500


def test_registry_picks_by_scheme(tmp_path):
    assert type(create_storage(f"sqlite:///{tmp_path}/a.db")).__name__ == "SqliteStorage"
    assert type(create_storage("postgresql://u@h/db")).__name__ == "PostgresStorage"
    assert type(create_storage("postgres://u@h/db")).__name__ == "PostgresStorage"
    with pytest.raises(ValueError, match="unsupported database URL scheme 'mysql'"):
        create_storage("mysql://u@h/db")


def test_sqlite_paths():
    assert str(path_from_url("sqlite:///data/editor.db")) == "data/editor.db"
    assert str(path_from_url("sqlite:////var/lib/editor.db")) == "/var/lib/editor.db"
    for bad in ("sqlite:///", "sqlite:///:memory:", "sqlite://data.db"):
        with pytest.raises(ValueError):
            path_from_url(bad)
