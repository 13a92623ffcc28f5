"""One run of a recipe for the 2-processes-vs-1 tests in tests/recipes/test_recipes_ddp.py.

    python tests/recipes/recipe_ddp_run.py forecasting OUT BATCH DEVICES SERIES_CSV
    python tests/recipes/recipe_ddp_run.py recommendation OUT BATCH SSL_BATCH DEVICES

``BATCH`` (and ``SSL_BATCH``) are per process; ``DEVICES > 1`` trains with ``strategy="ddp"``
(Lightning starts the other processes by running this script again). The run folder ``OUT``
keeps metrics.csv (the per-step losses) and model.safetensors (the final weights).

* forecasting: the series is the value column of a CSV with a header (aeon's bundled KDD-TSAD 135
  heart-rate record, the recipe's test series), windows of 32 -> 8, MSE + 0.1 x InfoNCE with
  dropout 0.1 on, 4 AdamW steps under the cosine schedule.
* recommendation: the recipe's tests' synthetic interaction log (no recommendation data set is on
  disk; tests/recipes/recommendation_resume_run.py): 200 users who each like one of three item
  groups, 5 pairs each, 90 items with features (id, group, id mod 5); logQ correction, duplicate
  masking, the item SSL term under correlated feature masking, 4 Adam steps.
"""

from __future__ import annotations

import sys

import numpy as np
import torch

from contrastkit.recipes.forecasting import ForecasterConfig, fit_forecaster, prepare_forecast_data
from contrastkit.recipes.recommendation import TwoTowerConfig, fit_two_tower

STEPS = 4
FORECASTER = dict(patch_length=8, d_model=16, heads=2, layers=1, projection_dim=8, steps=STEPS,
                  contrastive_weight=0.1, dropout=0.1, seed=3)
TWO_TOWER = dict(steps=STEPS, ssl_weight=0.3, embedding_dim=4, hidden_dim=8, output_dim=8, masking="correlated",
                 seed=5)


def forecast_data(series_csv: str):
    series = np.loadtxt(series_csv, delimiter=",", skiprows=1, usecols=1)
    return prepare_forecast_data(series, input_length=32, horizon=8)


def interactions():
    """(pairs, query features, item features, query cardinalities, item cardinalities)."""
    rng = np.random.default_rng(0)
    n_users, n_items = 200, 90
    item_ids = np.arange(n_items)
    item_features = torch.as_tensor(np.column_stack([item_ids, item_ids % 3, item_ids % 5]))
    group = rng.integers(0, 3, n_users)
    pairs = torch.as_tensor([(u, i) for u in range(n_users) for i in rng.choice(item_ids[item_ids % 3 == group[u]], 5)])
    return pairs, torch.arange(n_users)[:, None], item_features, [n_users], [n_items, 3, 5]


def main(recipe: str, out: str, *args: str) -> None:
    torch.set_num_threads(1)
    if recipe == "forecasting":
        batch, devices, series_csv = int(args[0]), int(args[1]), args[2]
        fit_forecaster(forecast_data(series_csv), ForecasterConfig(batch_size=batch, **FORECASTER), out=out,
                       devices=devices, strategy="ddp" if devices > 1 else "auto")
    elif recipe == "recommendation":
        batch, ssl_batch, devices = int(args[0]), int(args[1]), int(args[2])
        fit_two_tower(*interactions(), TwoTowerConfig(batch_size=batch, ssl_batch_size=ssl_batch, **TWO_TOWER),
                      out=out, devices=devices, strategy="ddp" if devices > 1 else "auto")
    else:
        raise SystemExit(f"unknown recipe {recipe!r}")


if __name__ == "__main__":
    main(*sys.argv[1:])
