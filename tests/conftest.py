"""Fixtures and switches shared by every test tier."""

from __future__ import annotations

import contextlib
import os
import uuid

import pytest

SLOW_ENABLED = os.environ.get("FABULA_SLOW_TESTS") == "1"


def _has_cuda() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    skip_slow = pytest.mark.skip(reason="slow: set FABULA_SLOW_TESTS=1 (make test-all)")
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    has_cuda = None
    for item in items:
        if item.get_closest_marker("slow") and not SLOW_ENABLED:
            item.add_marker(skip_slow)
        if item.get_closest_marker("gpu"):
            if has_cuda is None:
                has_cuda = _has_cuda()
            if not has_cuda:
                item.add_marker(skip_gpu)


# --- The editor service on each storage back end (used by the editor, gateway and SDK tests) ---

POSTGRES_URL = os.environ.get("FABULA_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")


def postgres_schema_url(schema: str) -> str:
    """A URL whose connections live in `schema` (their search_path), so tests never share tables."""
    separator = "&" if "?" in POSTGRES_URL else "?"
    return f"{POSTGRES_URL}{separator}options=-csearch_path%3D{schema}"


@contextlib.contextmanager
def fresh_postgres_schema():
    """A new, uniquely named schema on the test server, dropped afterwards; yields its URL."""
    import psycopg

    schema = f"fabula_test_{uuid.uuid4().hex}"
    try:
        admin = psycopg.connect(POSTGRES_URL, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as error:
        pytest.fail(f"PostgreSQL is not reachable at {POSTGRES_URL} ({error}). Start it (CI does) or "
                    "point FABULA_TEST_POSTGRES_URL at one.", pytrace=False)
    with admin:
        admin.execute(f'CREATE SCHEMA "{schema}"')
        try:
            yield postgres_schema_url(schema)
        finally:
            admin.execute(f'DROP SCHEMA "{schema}" CASCADE')


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path):
    """The editor's database URL on each back end: a SQLite file in tmp_path, a fresh PostgreSQL schema."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'editor.db'}"
        return
    with fresh_postgres_schema() as url:
        yield url


@pytest.fixture
def editor_settings(database_url: str):
    """Editor settings on `database_url` with libsodium's minimum Argon2id cost."""
    from services.editor.embedded import fast_settings

    return fast_settings(database_url)


@pytest.fixture
async def editor(editor_settings):
    """The editor service running in-process on 127.0.0.1:<free port> over `database_url`."""
    from services.editor.embedded import embedded_editor

    async with embedded_editor(editor_settings) as running:
        yield running
