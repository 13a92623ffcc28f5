"""Kvasir-SEG end to end: the reader's counts and masks, the development carve and label budgets, and
2 steps of each dense method through `contrastkit fit` followed by `contrastkit segment`. Skipped with the
reason when the data is absent."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from contrastkit.cli import main
from contrastkit.core.errors import DataError
from contrastkit.modalities.image.segmentation.data import development_carve, label_budget, read_kvasir
from tests.conftest import data_path

KVASIR = "segmentation/kvasir-seg"


@pytest.fixture(scope="module")
def kvasir_train():
    data_path(KVASIR)
    return read_kvasir("train", image_size=32)


def test_kvasir_has_380_train_pairs_of_binary_masks_in_its_id_order(kvasir_train):
    root = data_path(KVASIR)
    assert len(kvasir_train) == 380 and kvasir_train.images.shape == (380, 3, 32, 32)
    assert kvasir_train.names == tuple((root / "train.txt").read_text().split())
    assert set(torch.unique(kvasir_train.masks).tolist()) == {0, 1} and kvasir_train.num_classes == 2
    share = kvasir_train.masks.float().mean(dim=(1, 2))
    assert 0.05 < float(share.mean()) < 0.3  # PROVENANCE: polyp fraction 0.5 %-76 %, mean 15 %
    assert read_kvasir("val", image_size=16).images.shape[0] == 120


def test_the_carve_and_the_budgets_are_fixed_disjoint_and_nested():
    available, carve = development_carve(380)
    assert len(carve) == 60 and len(available) == 320 and not set(carve) & set(available)
    assert np.array_equal(carve, development_carve(380)[1])  # the same for every run
    for seed in (0, 1):
        budgets = [label_budget(available, n, seed, 380) for n in (4, 38, 320)]
        assert [len(b) for b in budgets] == [4, 38, 320] and set(budgets[0]) <= set(budgets[1]) <= set(available)
        assert np.array_equal(budgets[1], label_budget(available, 38, seed, 380))
        everything = label_budget(np.arange(380), 38, seed, 380)  # the validation protocol's draw
        assert set(budgets[0]) - set(carve) <= set(everything) | set(budgets[1])
    assert not np.array_equal(label_budget(available, 4, 0, 380), label_budget(available, 4, 1, 380))
    with pytest.raises(DataError, match="at most 320"):
        label_budget(available, 380, 0, 380)


@pytest.mark.slow
def test_two_steps_of_each_dense_method_then_fine_tuning(tmp_path, capsys):
    images = str(data_path(KVASIR) / "train" / "images")
    common = ["--data", images, "--image-size", "64", "--limit", "24", "--batch-size", "8", "--max-steps", "2",
              "--epochs", "1", "--warmup-epochs", "0", "--width", "0.25", "--backbone", "resnet18",
              "--no-report", "--no-baselines"]
    assert main(["fit", "--method", "gcl-global", *common, "--out", str(tmp_path / "global")]) == 0
    assert main(["fit", "--method", "gcl-local", *common, "--init", str(tmp_path / "global"),
                 "--out", str(tmp_path / "local")]) == 0
    init = json.loads((tmp_path / "local" / "init.json").read_text())
    assert init["loaded_into"] == "backbone" and init["prefix"] == "method.backbone."
    losses = [line.split(",")[2] for line in (tmp_path / "local" / "metrics.csv").read_text().splitlines()[1:]]
    assert len([value for value in losses if value]) == 2
    capsys.readouterr()
    assert main(["segment", "--run", str(tmp_path / "local"), "--masks", "4", "--steps", "2", "--image-size", "64",
                 "--out", str(tmp_path / "segment.json")]) == 0
    result = json.loads((tmp_path / "segment.json").read_text())
    assert result["split"] == "dev" and result["scored_images"] == 60 and len(result["training_rows"]) == 4
    assert 0.0 <= result["dice"] <= 1.0 and result["start"].startswith("gcl-local run")


def test_fine_tuning_scores_the_development_carve_by_default_and_repeats_exactly(kvasir_train):
    from contrastkit.modalities.image.segmentation.finetune import FineTuning, segment

    settings = FineTuning(steps=2, batch_size=4, width=0.25)
    first = segment(4, seed=3, settings=settings, image_size=32, train_set=kvasir_train)
    again = segment(4, seed=3, settings=settings, image_size=32, train_set=kvasir_train)
    available, carve = development_carve(380)
    assert first["split"] == "dev" and first["scored_images"] == 60
    assert first["training_rows"] == label_budget(available, 4, 3, 380).tolist()
    assert not set(first["training_rows"]) & set(carve.tolist())
    assert first["dice"] == again["dice"] and first["final_loss"] == again["final_loss"]


def test_segment_refuses_options_that_do_not_apply(tmp_path, capsys):
    assert main(["segment", "--run", str(tmp_path), "--width", "0.5", "--masks", "4"]) == 2
    assert "--width" in capsys.readouterr().err
    assert main(["segment", "--run", str(tmp_path), "--masks", "4"]) == 2
    assert "checkpoints/last.ckpt" in capsys.readouterr().err
