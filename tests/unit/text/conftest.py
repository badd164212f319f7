"""Fixtures of the text unit tests: a tiny model folder (real tokenizer, random seeded weights)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    from services.text.testing import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny-model") / "tiny", seed=0)


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)
