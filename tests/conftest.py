"""Shared test fixtures: where the real data is, and skipping when it is absent."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DATA_ROOT = Path(os.environ.get("CONTRASTKIT_DATA", REPO.parent / "shared" / "data"))


def data_path(name: str) -> Path:
    """Path of a data set under the data root, or skip the test with the reason."""
    path = DATA_ROOT / name
    if not path.exists():
        pytest.skip(f"real data '{name}' not found under {DATA_ROOT} (set CONTRASTKIT_DATA)")
    return path


@pytest.fixture(autouse=True)
def _data_env(monkeypatch):
    # The library resolves built-in data names through CONTRASTKIT_DATA; point it at the same
    # root the tests use, whatever the current directory.
    monkeypatch.setenv("CONTRASTKIT_DATA", str(DATA_ROOT))
