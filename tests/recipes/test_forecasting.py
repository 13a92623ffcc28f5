"""Forecasting with a contrastive term: windows, the leak-free split, the loss."""

from __future__ import annotations

import dataclasses
import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from contrastkit import objectives
from contrastkit.engine import EpochShuffleSampler, step_seed
from contrastkit.core.errors import ConfigError, DataError
from contrastkit.recipes.forecasting import (
    ForecasterConfig,
    PatchTransformerForecaster,
    chronological_split,
    evaluate_forecaster,
    fit_forecaster,
    prepare_forecast_data,
    sliding_windows,
    two_augmented_views,
)
from contrastkit.objectives.forecasting import forecast_contrastive_loss
from contrastkit.core.seeding import seeded
from tests.resume_harness import ENV, assert_kill_and_resume_is_exact

TINY = ForecasterConfig(
    patch_length=4,
    d_model=16,
    heads=2,
    layers=1,
    steps=6,
    batch_size=8,
    projection_dim=8,
)


def _series(length: int = 200, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(length)
    return np.sin(2 * np.pi * t / 24) + 0.01 * t + 0.1 * rng.standard_normal(length)


def test_sliding_windows_match_a_naive_loop():
    series = np.arange(30, dtype=np.float64)
    inputs, targets = sliding_windows(series, 5, 3, range(5, 28))
    assert inputs.shape == (23, 5) and targets.shape == (23, 3)
    for row, t in enumerate(range(5, 28)):
        assert inputs[row].tolist() == list(range(t - 5, t))
        assert targets[row].tolist() == list(range(t, t + 3))


def test_split_parts_and_window_targets_stay_in_their_part():
    series = np.arange(100, dtype=np.float64)
    data = prepare_forecast_data(
        series, input_length=8, horizon=4, validation_fraction=0.2, test_fraction=0.2
    )
    assert data.split == chronological_split(100) == type(data.split)(60, 80, 100)
    unscale = lambda v: v.numpy() * data.standardizer.std + data.standardizer.mean
    train_inputs, train_targets = (unscale(v) for v in data.train)
    assert (
        train_targets.max() == pytest.approx(59) and train_inputs.max() < 59
    )  # nothing at t >= 60
    assert len(train_targets) == 60 - 8 - 4 + 1
    val_targets, test_targets = unscale(data.validation[1]), unscale(data.test[1])
    assert val_targets.min() == pytest.approx(
        60
    ) and val_targets.max() == pytest.approx(79)
    assert test_targets.min() == pytest.approx(
        80
    ) and test_targets.max() == pytest.approx(99)
    assert len(test_targets) == 20 - 4 + 1  # every test step is a target of some window
    # Standardised with the training part's statistics (numpy as the second derivation).
    assert data.standardizer.mean == pytest.approx(np.arange(60).mean())
    assert data.standardizer.std == pytest.approx(np.arange(60).std())


def test_training_ignores_the_validation_and_test_parts():
    series = _series()
    perturbed = series.copy()
    split = chronological_split(len(series))
    perturbed[split.train_end :] = 1e3 * np.random.default_rng(1).standard_normal(
        len(series) - split.train_end
    )
    config = dataclasses.replace(TINY, contrastive_weight=0.5)
    first = fit_forecaster(prepare_forecast_data(series, 16, 4), config)
    second_data = prepare_forecast_data(perturbed, 16, 4)
    second = fit_forecaster(second_data, config)
    for (name, a), (_, b) in zip(
        first.state_dict().items(), second.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name
    # The perturbation did reach the test windows: the check above can fail.
    assert not torch.equal(
        prepare_forecast_data(series, 16, 4).test[1], second_data.test[1]
    )


def test_loss_is_the_mse_when_the_weight_is_zero():
    torch.manual_seed(0)
    forecast, target = torch.randn(6, 4), torch.randn(6, 4)
    z_a, z_b = torch.randn(6, 3), torch.randn(6, 3)
    loss, mse, contrastive = forecast_contrastive_loss(
        forecast, target, z_a, z_b, 0.0, 0.2
    )
    assert loss.item() == pytest.approx(((forecast - target) ** 2).mean().item())
    assert loss.item() == mse.item() and contrastive.item() == 0.0


def test_contrastive_term_is_the_catalogue_infonce():
    torch.manual_seed(0)
    forecast, target = torch.randn(6, 4), torch.randn(6, 4)
    z_a, z_b = torch.randn(6, 3), torch.randn(6, 3)
    loss, mse, contrastive = forecast_contrastive_loss(
        forecast, target, z_a, z_b, 0.3, 0.2
    )
    expected = objectives.get("infonce", temperature=0.2)(z_a, z_b)
    assert contrastive.item() == pytest.approx(expected.item(), rel=1e-6)
    assert loss.item() == pytest.approx(mse.item() + 0.3 * expected.item(), rel=1e-6)


def test_fit_is_reproducible_and_evaluates():
    data = prepare_forecast_data(_series(), 16, 4)
    config = dataclasses.replace(TINY, contrastive_weight=0.1)
    a, b = fit_forecaster(data, config), fit_forecaster(data, config)
    scores = evaluate_forecaster(a, *data.test)
    assert scores == evaluate_forecaster(b, *data.test)
    forecasts = a(data.test[0])
    errors = forecasts - data.test[1]
    assert scores["mae"] == pytest.approx(errors.abs().mean().item(), rel=1e-5)


def test_fit_equals_a_plain_adamw_cosine_loop_over_the_same_batches_and_step_seeds():
    """The engine's fit against the loop it replaced, written out: torch's AdamW over every
    parameter with CosineAnnealingLR over the steps, epochs of 101 // 8 = 12 batches (13 steps
    cross into the second epoch), torch reseeded before every step as the engine does (views and
    dropout draw from it)."""
    data = prepare_forecast_data(_series(), 16, 4)
    config = dataclasses.replace(TINY, contrastive_weight=0.1, steps=13)
    trained = fit_forecaster(data, config)

    inputs, targets = data.train
    with seeded(config.seed):
        model = PatchTransformerForecaster(16, 4, config.patch_length, config.d_model, config.heads,
                                           config.layers, config.dropout, config.projection_dim)
        optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.steps)
        sampler = EpochShuffleSampler(len(inputs), config.batch_size, config.seed)
        model.train()
        step = epoch = 0
        while step < config.steps:
            sampler.set_epoch(epoch)
            for positions in sampler:
                if step == config.steps:
                    break
                torch.manual_seed(step_seed(config.seed, step, 0))
                x, y = inputs[positions], targets[positions]
                view_a, view_b = two_augmented_views(x, config.jitter_sigma, config.scale_sigma)
                z_a, z_b = model.project(view_a), model.project(view_b)
                loss, _, _ = forecast_contrastive_loss(model(x), y, z_a, z_b, 0.1, config.temperature)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                schedule.step()
                step += 1
            epoch += 1
    assert len(inputs) // config.batch_size == 12 and epoch == 2
    for (name, a), b in zip(trained.state_dict().items(), model.state_dict().values(), strict=True):
        if name.endswith("self_attn.in_proj_bias"):
            # The key projection's bias (the middle third) has a zero gradient up to rounding (the
            # softmax over keys ignores it), which Adam normalises into full-size steps of noise.
            d = config.d_model
            a, b = torch.cat([a[:d], a[2 * d :]]), torch.cat([b[:d], b[2 * d :]])
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)


def test_model_shapes():
    model = PatchTransformerForecaster(
        16, 4, patch_length=4, d_model=8, heads=2, layers=1, projection_dim=5
    )
    x = torch.randn(3, 16)
    assert (
        model(x).shape == (3, 4)
        and model.represent(x).shape == (3, 8)
        and model.project(x).shape == (3, 5)
    )


def test_user_errors():
    with pytest.raises(ConfigError, match="multiple of patch_length"):
        PatchTransformerForecaster(15, 4, patch_length=4)
    with pytest.raises(DataError, match="No forecasting window fits"):
        prepare_forecast_data(np.arange(20.0), 16, 4)
    with pytest.raises(DataError, match="finite univariate"):
        prepare_forecast_data(np.array([1.0, np.nan] * 50), 8, 2)
    with pytest.raises(ConfigError, match="sum to less than 1"):
        chronological_split(100, 0.5, 0.5)


def _internal_bleeding_csv() -> Path:
    """aeon's bundled KDD-TSAD 135 record (1,200 steps), found without importing aeon (slow)."""
    spec = importlib.util.find_spec("aeon")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("aeon is not installed: its bundled KDD-TSAD 135 record is the series of this test")
    path = (Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data" / "KDD-TSAD_135"
            / "135_UCR_Anomaly_InternalBleeding16_TRAIN.csv")
    if not path.is_file():
        pytest.skip(f"aeon's KDD-TSAD 135 record is not at {path}")
    return path


@pytest.mark.slow
def test_a_forecaster_run_killed_between_checkpoints_resumes_exactly(tmp_path):
    """MSE + InfoNCE with dropout under the cosine schedule (tests/recipes/forecasting_resume_run.py) on a
    real heart-rate record, killed with SIGKILL after its checkpoint of step 10; resumed, weights,
    AdamW state and scheduler must equal the uninterrupted run's."""
    script = [sys.executable, str(Path(__file__).with_name("forecasting_resume_run.py")), str(_internal_bleeding_csv())]
    subprocess.run([*script, str(tmp_path / "whole")], check=True, env=ENV, capture_output=True)
    run_dir = tmp_path / "killed"
    assert_kill_and_resume_is_exact([*script, str(run_dir)], [*script, str(run_dir), "--resume"], run_dir,
                                    tmp_path / "whole", kill_after_step=10, seed=3)
