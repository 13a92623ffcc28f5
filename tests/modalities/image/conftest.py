"""Fixtures of the image tests."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    # The image tests' models are tiny: intra-op threads cost more than they save (20x on a loaded
    # machine), so every image test runs with one and gives the caller's count back.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
