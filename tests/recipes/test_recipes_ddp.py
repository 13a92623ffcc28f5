"""The recipes in two processes (``devices=2, strategy="ddp"``) against one process on the
concatenated batch: the per-step losses and every final weight agree to 1e-5.

Each run is a subprocess of tests/recipes/recipe_ddp_run.py (Lightning's DDP starts the second
process by running the script again). Forecasting trains on aeon's bundled KDD-TSAD 135 heart-rate
record (the recipe's test series); recommendation on the recipe's tests' synthetic interaction log."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.recipes.recipe_ddp_run import FORECASTER, STEPS, TWO_TOWER, forecast_data, interactions
from tests.recipes.test_forecasting import _internal_bleeding_csv
from tests.resume_harness import ENV

SCRIPT = str(Path(__file__).with_name("recipe_ddp_run.py"))


def _run(out: Path, *args: str) -> None:
    done = subprocess.run([sys.executable, SCRIPT, args[0], str(out), *args[1:]],
                          env={**ENV, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]


def _losses(out: Path) -> torch.Tensor:
    with open(out / "metrics.csv") as handle:
        return torch.tensor([float(r["train/loss"]) for r in csv.DictReader(handle) if r.get("train/loss")])


def _assert_two_equal_one(tmp_path: Path, initial: dict[str, torch.Tensor], global_batch: int) -> None:
    one, two = tmp_path / "one", tmp_path / "two"
    assert len(_losses(one)) == STEPS
    torch.testing.assert_close(_losses(two), _losses(one), rtol=0, atol=1e-5)
    weights_one, weights_two = load_file(one / "model.safetensors"), load_file(two / "model.safetensors")
    assert weights_one.keys() == weights_two.keys() == initial.keys()
    for key in weights_one:
        a, b = weights_two[key], weights_one[key]
        if key.endswith("self_attn.in_proj_bias"):
            # The key projection's bias (the middle third) has a zero gradient up to rounding (the
            # softmax over keys ignores it), which Adam normalises into full-size steps of noise
            # (as in test_forecasting.py's comparison with the plain loop).
            d = a.shape[0] // 3
            a, b = torch.cat([a[:d], a[2 * d :]]), torch.cat([b[:d], b[2 * d :]])
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5, msg=key)
    # The weights moved: equal weights are not merely the initial ones.
    assert max((weights_one[k] - v).abs().max().item() for k, v in initial.items()) > 1e-3
    summary = json.loads((two / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["global_batch_size"] == global_batch and summary["steps"] == STEPS


@pytest.mark.slow
@pytest.mark.distributed
def test_two_forecasting_processes_equal_one_process_on_the_concatenated_batch(tmp_path):
    """MSE + InfoNCE (the negatives: both processes' views) with jitter, scaling and dropout drawn
    for the global batch: 2 processes of 16 windows against 1 process of 32."""
    from contrastkit.recipes.forecasting import ForecasterConfig, fit_forecaster

    series = str(_internal_bleeding_csv())
    _run(tmp_path / "one", "forecasting", "32", "1", series)
    _run(tmp_path / "two", "forecasting", "16", "2", series)
    initial = fit_forecaster(forecast_data(series), ForecasterConfig(**FORECASTER), max_steps=0).state_dict()
    _assert_two_equal_one(tmp_path, initial, 32)


@pytest.mark.slow
@pytest.mark.distributed
def test_two_recommendation_processes_equal_one_process_on_the_concatenated_batch(tmp_path):
    """In-batch softmax (logQ, duplicates masked across processes) + the item SSL term (the SSL
    items and correlated masks drawn for the global SSL batch) on the synthetic interaction log:
    2 processes of 16 pairs and 8 SSL items against 1 process of 32 and 16."""
    from contrastkit.recipes.recommendation import TwoTowerConfig, fit_two_tower

    _run(tmp_path / "one", "recommendation", "32", "16", "1")
    _run(tmp_path / "two", "recommendation", "16", "8", "2")
    initial = fit_two_tower(*interactions(), TwoTowerConfig(**TWO_TOWER), max_steps=0).state_dict()
    _assert_two_equal_one(tmp_path, initial, 32)
