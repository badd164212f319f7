"""Fixtures and switches shared by every test tier."""

from __future__ import annotations

import os

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
        if "slow" in item.keywords and not SLOW_ENABLED:
            item.add_marker(skip_slow)
        if "gpu" in item.keywords:
            if has_cuda is None:
                has_cuda = _has_cuda()
            if not has_cuda:
                item.add_marker(skip_gpu)
