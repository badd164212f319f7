"""Every document the repository names is in the repository.

A person who clones Fabula has only the tree: a comment, Makefile line or page that sends them to
a Markdown document must name one that exists here (relative to the repository root or to the
file that names it), never one beside or outside the checkout.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
# Build output, environments, caches and data: not part of the tree a person clones (.gitignore).
SKIPPED_TOP_DIRS = {"build", "data", "models", "engines"}
# node_modules: the web editor's npm dependencies (make web), with their own documents.
SKIPPED_DIRS = {".git", ".venv", "__pycache__", ".pytest_cache", ".mypy_cache", ".ruff_cache", "node_modules"}
TEXT_SUFFIXES = {".md", ".py", ".toml", ".yaml", ".yml", ".txt", ".cfg", ".ini", ".json", ".sh"}
TEXT_NAMES = {"Makefile", ".dockerignore", ".gitignore"}
# A Markdown file name, with the folders written before it (possibly "../").
DOCUMENT = re.compile(r"(?<![\w./-])((?:\.\.?/|[\w-]+/)*[\w.-]+\.md)\b")


def _tree_files() -> list[Path]:
    files = []
    for folder, dirs, names in os.walk(ROOT):
        here = Path(folder)
        dirs[:] = [name for name in dirs if name not in SKIPPED_DIRS and not name.endswith(".egg-info")
                   and not (here == ROOT and name in SKIPPED_TOP_DIRS)]
        for name in names:
            path = here / name
            if (path.suffix in TEXT_SUFFIXES or name in TEXT_NAMES or name.endswith(".Dockerfile")
                    or here.name == ".ci"):
                files.append(path)
    return sorted(files)


def _resolves_inside(name: str, referrer: Path, documents: set[str]) -> bool:
    if "/" not in name:
        # A bare file name ("deploy.md" joined onto a folder in code) names a document of the tree.
        return name in documents
    for base in (ROOT, referrer.parent):
        target = (base / name).resolve()
        if target.is_relative_to(ROOT) and target.is_file():
            return True
    return False


def _missing_documents(text: str, referrer: Path, documents: set[str]) -> list[str]:
    return sorted({name for name in DOCUMENT.findall(text) if not _resolves_inside(name, referrer, documents)})


def test_a_document_outside_the_tree_is_caught() -> None:
    referrer = ROOT / "docs" / "development.md"
    text = ("Read `../beside/NOTES.md` first, then docs/architecture.md, [the format](encryption.md), "
            "NOTES.md and docs/missing.md.")
    assert _missing_documents(text, referrer, {"architecture.md", "encryption.md"}) == [
        "../beside/NOTES.md", "NOTES.md", "docs/missing.md"]


def test_named_documents_are_in_the_repository() -> None:
    # This file is left out: its own example above names documents that must not exist.
    files = [path for path in _tree_files() if path != Path(__file__).resolve()]
    names = {path.relative_to(ROOT).as_posix() for path in files}
    assert {"README.md", "Makefile", "docs/architecture.md", "docs/development.md"} <= names
    documents = {path.name for path in files if path.suffix == ".md"}
    missing = {path.relative_to(ROOT).as_posix(): found for path in files
               if (found := _missing_documents(path.read_text(encoding="utf-8", errors="replace"), path, documents))}
    assert not missing, f"documents named but not in the repository: {missing}"
