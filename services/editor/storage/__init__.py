"""Storage back ends, chosen by the database URL's scheme from a registry.

Each entry names its module and class, so a back end's driver (psycopg) is imported only when
a URL asks for it.
"""

from __future__ import annotations

import importlib
from typing import Any
from urllib.parse import urlsplit

from services.editor.storage.base import Storage

BACKENDS: dict[str, str] = {
    "sqlite": "services.editor.storage.sqlite:SqliteStorage",
    "postgresql": "services.editor.storage.postgres:PostgresStorage",
    "postgres": "services.editor.storage.postgres:PostgresStorage",
}


def create_storage(url: str, **options: Any) -> Storage:
    """The back end for `url` (not yet opened); `options` are passed to its constructor."""
    scheme = urlsplit(url).scheme.lower()
    target = BACKENDS.get(scheme)
    if target is None:
        raise ValueError(f"unsupported database URL scheme {scheme!r}; known: {', '.join(sorted(BACKENDS))}")
    module_name, class_name = target.split(":")
    backend = getattr(importlib.import_module(module_name), class_name)
    return backend(url, **options)


__all__ = ["BACKENDS", "Storage", "create_storage"]
