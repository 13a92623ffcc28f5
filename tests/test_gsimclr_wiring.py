"""G-SimCLR and BSS reach training from the configuration: `--batch-sampler spread` puts the
pseudo-labels into the run's loader (whose batches then keep the guarantee), and `extra.views.bss`
reaches BYOL's views as it reaches SimCLR's."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from contrastkit.config import FitConfig
from contrastkit.errors import ConfigError
from contrastkit.methods import METHODS
from contrastkit.methods._parts import DataInfo
from contrastkit.training.run_data import open_run_data


def test_spread_sampler_is_used_and_batches_keep_each_pseudo_class_apart():
    config = FitConfig(data="digits", limit=240, holdout=0.0, batch_size=40, batch_sampler="spread",
                       extra={"gsimclr": {"epochs": 1, "num_clusters": 4}})
    run_data = open_run_data(config)
    module = run_data.datamodule
    assert module.pseudo_labels is not None and len(module.pseudo_labels) == 240
    module.trainer = SimpleNamespace(global_rank=0, world_size=1)
    loader = module.train_dataloader()
    labels = np.asarray(module.pseudo_labels)
    classes, counts = np.unique(labels, return_counts=True)
    batches = 240 // 40
    for batch in loader:
        in_batch = labels[batch["index"].numpy()]
        for c, n in zip(classes, counts, strict=True):
            assert (in_batch == c).sum() <= -(-n // batches)  # ceil(n_c / M)


def test_spread_sampler_refuses_several_processes():
    with pytest.raises(ConfigError, match="one process"):
        open_run_data(FitConfig(data="digits", limit=64, batch_sampler="spread", devices=2))


def test_bss_option_reaches_byol_views():
    data = DataInfo(channels=1, image_size=8, mean=(0.5,), std=(0.25,), num_samples=100)
    plain = METHODS.build("byol", config=FitConfig(method="byol", backbone="small-cnn", width=0.25), data=data)
    with_bss = METHODS.build("byol", data=data, config=FitConfig(method="byol", backbone="small-cnn", width=0.25,
                                         extra={"views": {"bss": True}}))
    assert getattr(plain.views, "bss", None) is None
    assert with_bss.views.bss is not None


@pytest.mark.parametrize("method", ["moco", "simsiam", "directpred"])
def test_view_options_reach_every_method_with_image_views(method):
    data = DataInfo(channels=1, image_size=8, mean=(0.5,), std=(0.25,), num_samples=100)
    built = METHODS.build(method, data=data, config=FitConfig(method=method, backbone="small-cnn", width=0.25,
                                                              extra={"views": {"bss": True}}))
    assert built.views.bss is not None
