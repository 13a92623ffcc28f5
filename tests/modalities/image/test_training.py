"""The training path: schedule, LARS, sharded sampling, resume after SIGKILL, NaN guard, embed."""

from __future__ import annotations

import csv
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from contrastkit.modalities.image.config import FitConfig
from contrastkit.core.errors import TrainingError
from contrastkit.modalities.image.training.data import BatchedSamples, EpochShuffleSampler
from contrastkit.engine.optim import LARS, warmup_cosine

# A small, fast, label-free configuration: no held-out split means no probe and no evaluation.
QUICK = dict(data="digits", limit=320, holdout=0.0, batch_size=64, width=0.25, report=False, probe_every=0)


def test_warmup_cosine_matches_closed_form():
    warmup, total = 10, 110
    assert warmup_cosine(0, warmup, total) == pytest.approx(1 / 10)
    assert warmup_cosine(9, warmup, total) == pytest.approx(1.0)
    assert warmup_cosine(10, warmup, total) == pytest.approx(1.0)
    assert warmup_cosine(60, warmup, total) == pytest.approx(0.5)  # half way through the decay: cos(pi/2)
    assert warmup_cosine(35, warmup, total) == pytest.approx(0.5 * (1 + math.cos(math.pi * 25 / 100)))
    assert warmup_cosine(110, warmup, total) == pytest.approx(0.0, abs=1e-12)


def test_lars_step_matches_hand_computation():
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(4, 3))
    b = torch.nn.Parameter(torch.randn(3))
    w.grad, b.grad = torch.randn(4, 3), torch.randn(3)
    w0, b0, gw, gb = (t.detach().clone().numpy() for t in (w, b, w.grad, b.grad))
    lr, wd, eta = 0.5, 0.01, 0.001
    opt = LARS([{"params": [w], "weight_decay": wd}, {"params": [b], "weight_decay": 0.0, "lars_exclude": True}],
               lr=lr, momentum=0.9, trust_coefficient=eta)
    opt.step()
    g = gw + wd * w0
    expected_w = w0 - lr * g * eta * np.linalg.norm(w0) / np.linalg.norm(g)
    np.testing.assert_allclose(w.detach().numpy(), expected_w, rtol=1e-5)
    np.testing.assert_allclose(b.detach().numpy(), b0 - lr * gb, rtol=1e-6)  # excluded: plain SGD


def test_sharded_batches_concatenate_to_the_single_process_batch():
    n, per_process, seed = 103, 8, 7
    single = list(EpochShuffleSampler(n, 2 * per_process, seed))
    shards = [EpochShuffleSampler(n, per_process, seed, rank=r, num_replicas=2) for r in range(2)]
    for sampler in [*shards]:
        sampler.set_epoch(0)
    for step, (a, b) in enumerate(zip(*shards, strict=True)):
        assert a + b == single[step]
    assert len(single) == n // 16
    # another epoch, another order; the same epoch, the same order
    s = EpochShuffleSampler(n, 16, seed)
    s.set_epoch(1)
    assert list(s) != single
    s.set_epoch(0)
    assert list(s) == single


def test_batched_samples_fetch_whole_batches():
    images = torch.arange(5 * 1 * 2 * 2, dtype=torch.uint8).reshape(5, 1, 2, 2)
    samples = BatchedSamples(images, torch.tensor([0, 1, 0, 1, 1]))
    batch = samples.__getitems__([4, 0])
    assert torch.equal(batch["image"], images[[4, 0]])
    assert batch["index"].tolist() == [4, 0] and batch["label"].tolist() == [1, 0]


def _fit(tmp_path: Path, name: str, **overrides):
    from contrastkit.modalities.image.training.run import fit

    return fit(FitConfig(**{**QUICK, "out": str(tmp_path / name), **overrides}))


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    checkpoint = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    return checkpoint["state_dict"]


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "contrastkit.cli", *args]


@pytest.mark.slow
def test_resume_after_sigkill_equals_uninterrupted_run(tmp_path):
    options = ["fit", "--data", "digits", "--limit", "320", "--holdout", "0", "--batch-size", "64",
               "--width", "0.25", "--epochs", "3", "--no-report", "--seed", "3"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    subprocess.run(_cli(*options, "--out", str(tmp_path / "whole")), check=True, env=env, capture_output=True)

    killed = tmp_path / "killed"
    process = subprocess.Popen(_cli(*options, "--out", str(killed)), env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    checkpoint = killed / "checkpoints" / "last.ckpt"
    deadline = time.time() + 120
    while not checkpoint.exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert checkpoint.exists(), "the run never wrote its first checkpoint"
    first = torch.load(checkpoint, map_location="cpu", weights_only=False)["epoch"]
    assert first < 2, "killed too late to test anything"
    subprocess.run(_cli("fit", "--out", str(killed), "--resume"), check=True, env=env, capture_output=True)

    with open(killed / "metrics.csv") as handle:  # the killed part's history is kept, not repeated
        steps = [int(row["step"]) for row in csv.DictReader(handle) if row.get("train/loss")]
    assert sorted(steps) == list(range(15)), steps  # 3 epochs x 320 // 64 steps, each once
    summary = json.loads((killed / "summary.json").read_text())
    assert summary["samples_per_second"] > 0  # the throughput of the killed part survived in the checkpoint
    whole, resumed = _weights(tmp_path / "whole"), _weights(killed)
    assert whole.keys() == resumed.keys()
    for key in whole:
        assert torch.equal(whole[key], resumed[key]), key


def test_nan_loss_stops_with_message_and_keeps_last_good_checkpoint(tmp_path, monkeypatch):
    from contrastkit.modalities.image.methods.simclr import SimCLR

    original = SimCLR.training_loss
    calls = {"n": 0}

    def poisoned(self, batch):
        calls["n"] += 1
        loss, logs = original(self, batch)
        return (loss * float("nan") if calls["n"] > 7 else loss), logs  # 5 steps per epoch: NaN in epoch 1

    monkeypatch.setattr(SimCLR, "training_loss", poisoned)
    with pytest.raises(TrainingError, match="NaN|nan") as error:
        _fit(tmp_path, "nan", epochs=3)
    assert "last good checkpoint" in str(error.value) and "--resume" in str(error.value)
    kept = torch.load(tmp_path / "nan" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert kept["epoch"] == 0
    assert all(torch.isfinite(v).all() for v in kept["state_dict"].values() if v.is_floating_point())


def test_nan_policy_skip_skips_the_step(tmp_path, monkeypatch):
    from contrastkit.modalities.image.methods.simclr import SimCLR

    original = SimCLR.training_loss
    calls = {"n": 0}

    def poisoned(self, batch):
        calls["n"] += 1
        loss, logs = original(self, batch)
        return (loss * float("nan") if calls["n"] == 3 else loss), logs

    monkeypatch.setattr(SimCLR, "training_loss", poisoned)
    summary = _fit(tmp_path, "skip", epochs=1, nan_policy="skip")
    assert summary["skipped_steps"] == 1


def test_embed_command_reproduces_the_run_embeddings(tmp_path):
    from contrastkit.cli import main

    _fit(tmp_path, "run", epochs=1, limit=None)
    run = tmp_path / "run"
    out = tmp_path / "emb.npy"
    assert main(["embed", "--checkpoint", str(run / "checkpoints" / "last.ckpt"), "--data", "digits",
                 "--out", str(out)]) == 0
    np.testing.assert_allclose(np.load(out), np.load(run / "embeddings.npy"), rtol=1e-5, atol=1e-6)
    assert np.array_equal(np.load(tmp_path / "emb.labels.npy"), load_digits().target)


def test_raw_pixel_baseline_is_the_normalised_input():
    from contrastkit.modalities.image.methods.parts import DataInfo
    from contrastkit.modalities.image.training.run import raw_pixels

    images = torch.randint(0, 256, (5, 3, 4, 4), dtype=torch.uint8)
    data = DataInfo(channels=3, image_size=4, mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3), num_samples=5)
    x = images.double() / 255
    mean, std = torch.tensor(data.mean).double(), torch.tensor(data.std).double()
    expected = ((x - mean[:, None, None]) / std[:, None, None]).reshape(5, -1)
    np.testing.assert_allclose(raw_pixels(images, data), expected.numpy(), rtol=1e-5, atol=1e-5)


def test_no_baselines_skips_the_untrained_and_raw_scores(tmp_path):
    summary = _fit(tmp_path, "nobase", epochs=1, holdout=0.2, baselines=False, probe_every=1)
    assert "knn_top1" in summary and "baselines" not in summary


def test_probe_logs_alignment_and_uniformity_every_epoch(tmp_path):
    _fit(tmp_path, "diag", epochs=2, holdout=0.2, baselines=False, probe_every=1)
    with open(tmp_path / "diag" / "metrics.csv") as handle:
        rows = [row for row in csv.DictReader(handle) if row.get("diag/alignment")]
    assert [int(row["epoch"]) for row in rows] == [0, 1]
    for row in rows:
        assert 0.0 <= float(row["diag/alignment"]) <= 4.0  # squared distance of unit vectors
        assert -4.0 <= float(row["diag/uniformity"]) <= 0.0


@pytest.mark.parametrize("name", __import__("contrastkit.objectives", fromlist=["OBJECTIVES"]).OBJECTIVES.names())
def test_simclr_trains_with_every_catalogue_objective_or_says_why_not(name, tmp_path):
    from contrastkit.core.errors import ConfigError
    from contrastkit.objectives import OBJECTIVES

    if name == "ts2vec_hierarchical":
        pytest.skip("a (B, T, D) time-series objective: used by contrastkit.modalities.timeseries.ts2vec.TS2Vec")
    options = dict(epochs=1, limit=128, batch_size=32, objective=name)
    if name in ("mochi", "listwise", "augmented_negatives",  # the ones whose inputs are not view pairs
                "queued_clip", "normalized_mse", "negative_cosine", "scaled_cosine_error", "neighbour_contrast",
                "forecast_contrastive", "deep_clustering_kl", "masked_token_regression", "masked_pixel_regression",
                "listwise_distillation", "pair_score_distillation", "cpc", "wav2vec_contrastive",
                "codebook_diversity", "hubert_masked_prediction", "vicregl", "swav", "dino", "obow", "msn",
                "dense_infonce", "masked_language_modelling", "replaced_token_detection",
                "representative_words"):
        assert getattr(OBJECTIVES.factory(name), "not_for_view_pairs", "")
        with pytest.raises(ConfigError, match=name):
            _fit(tmp_path, name, **options)
        return
    summary = _fit(tmp_path, name, **options)
    assert np.isfinite(summary["collapse"]["uniformity"])


def test_supervised_objective_refuses_unlabeled_data(tmp_path):
    from contrastkit.core.errors import ConfigError

    folder = tmp_path / "flat"
    folder.mkdir()
    from PIL import Image

    for i in range(40):
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (8, 8), dtype=np.uint8)).save(folder / f"{i}.png")
    with pytest.raises(ConfigError, match="unlabeled"):
        _fit(tmp_path, "supcon", data=str(folder), epochs=1, batch_size=16, objective="supcon")


@pytest.mark.parametrize("method_name", ["simclr", "byol"])
def test_channels_last_method_gives_the_contiguous_loss_and_gradients(method_name):
    import copy

    from contrastkit.modalities.image.methods import build_method
    from contrastkit.modalities.image.methods.parts import DataInfo
    from contrastkit.modalities.image.training.module import use_channels_last

    data = DataInfo(channels=3, image_size=16, mean=(0.5,) * 3, std=(0.25,) * 3, num_samples=8)
    config = FitConfig(method=method_name, backbone="resnet18", width=0.125, batch_size=8)
    torch.manual_seed(0)
    contiguous = build_method(method_name, config, data)
    nhwc = use_channels_last(copy.deepcopy(contiguous))
    conv = next(m for m in nhwc.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last) and not conv.weight.is_contiguous()
    images = torch.randint(0, 256, (8, 3, 16, 16), dtype=torch.uint8)
    view_a, _ = nhwc.views.two_views(images)
    assert view_a.is_contiguous(memory_format=torch.channels_last)
    losses, grads = [], []
    for model in (contiguous, nhwc):
        torch.manual_seed(1)  # the same views for both
        loss, _ = model.training_loss({"image": images, "index": torch.arange(8), "label": torch.zeros(8, dtype=torch.long)})
        loss.backward()
        losses.append(loss.item())
        grads.append(torch.cat([p.grad.flatten() for p in model.backbone.parameters()]))
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-3, atol=1e-5)  # summation order differs


def test_channels_last_default_is_on_for_one_process_only():
    from contrastkit.modalities.image.training.module import resolve_channels_last

    assert resolve_channels_last(None, 1) is True
    assert resolve_channels_last(None, 2) is False  # see tests/modalities/image/test_ddp_training.py
    assert resolve_channels_last(False, 1) is False
    with pytest.warns(UserWarning, match="channels-last with several processes"):
        assert resolve_channels_last(True, 2) is True
