"""A forecaster run (MSE + InfoNCE, dropout on) for the SIGKILL test in tests/recipes/test_forecasting.py.

    python tests/recipes/forecasting_resume_run.py SERIES_CSV OUT [--resume]

The series is the value column of a CSV with a header (aeon's bundled KDD-TSAD 135 heart-rate
record, the benchmark's series); windows of 32 -> 8, batches of 32 (21 steps an epoch), 150 steps
under the cosine schedule, a checkpoint every 5 steps.
"""

from __future__ import annotations

import sys

import numpy as np
import torch

from contrastkit.recipes.forecasting import ForecasterConfig, fit_forecaster, prepare_forecast_data

CONFIG = ForecasterConfig(patch_length=8, d_model=16, heads=2, layers=1, projection_dim=8, steps=150,
                          batch_size=32, contrastive_weight=0.1, seed=3)


def main(series_csv: str, out: str, resume: bool) -> None:
    torch.set_num_threads(1)
    series = np.loadtxt(series_csv, delimiter=",", skiprows=1, usecols=1)
    data = prepare_forecast_data(series, input_length=32, horizon=8)
    fit_forecaster(data, CONFIG, out=out, resume=resume, checkpoint_every_steps=5)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], resume="--resume" in sys.argv[3:])
