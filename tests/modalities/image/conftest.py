"""Fixtures of the image tests."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    # Every image test runs at one torch thread (tests/conftest.py's one_torch_thread).
    yield
