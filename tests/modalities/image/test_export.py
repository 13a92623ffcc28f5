"""Exported encoders (safetensors + config.json) reload without the training code and give the same
embeddings as `contrastkit embed` with the checkpoint they came from."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from contrastkit.modalities.image.config import FitConfig
from contrastkit.core.errors import ConfigError, DataError

QUICK = {"data": "digits", "limit": 192, "holdout": 0.0, "batch_size": 64, "width": 0.25, "epochs": 1,
         "report": False, "probe_every": 0, "baselines": False}


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    from contrastkit.modalities.image.training.run import fit

    run_dir = tmp_path_factory.mktemp("export") / "run"
    fit(FitConfig(**QUICK, out=str(run_dir)))
    return run_dir


def test_reloaded_encoder_gives_the_embeddings_of_contrastkit_embed(trained_run, tmp_path):
    from contrastkit.cli import main
    from contrastkit.modalities.image.export import export_encoder, load_exported
    from contrastkit.modalities.image.sources import open_image_source

    checkpoint = trained_run / "checkpoints" / "last.ckpt"
    assert main(["embed", "--checkpoint", str(checkpoint), "--data", "digits", "--out",
                 str(tmp_path / "e.npy")]) == 0
    from_cli = np.load(tmp_path / "e.npy")

    folder = export_encoder(checkpoint, tmp_path / "exported")
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]
    config = json.loads((folder / "config.json").read_text())
    assert (config["architecture"], config["in_channels"], config["image_size"]) == ("small-cnn", 1, 8)
    assert config["output_dim"] == from_cli.shape[1]

    encoder = load_exported(folder)
    images = open_image_source("digits").images  # all 1,797 images, most never seen in training
    with torch.inference_mode():
        reloaded = torch.cat([encoder(images[i : i + 512]) for i in range(0, len(images), 512)]).numpy()
    assert reloaded.shape == from_cli.shape
    np.testing.assert_array_equal(reloaded, from_cli)


def test_loading_needs_no_training_code(trained_run, tmp_path):
    from contrastkit.modalities.image.export import export_encoder

    folder = export_encoder(trained_run / "checkpoints" / "last.ckpt", tmp_path / "exported")
    script = (
        "import sys, torch\n"
        "from contrastkit.modalities.image.export import load_exported\n"
        f"encoder = load_exported({str(folder)!r})\n"
        "out = encoder(torch.zeros(3, 1, 8, 8, dtype=torch.uint8))\n"
        "assert out.shape == (3, encoder.output_dim), out.shape\n"
        "loaded = [m for m in sys.modules if m.startswith(('lightning', 'contrastkit.modalities.image.training', "
        "'contrastkit.modalities.image.methods', 'contrastkit.objectives', 'contrastkit.modalities.image.views', 'sklearn'))]\n"
        "assert not loaded, loaded\n"
    )
    subprocess.run([sys.executable, "-c", script], check=True)


def test_export_refuses_to_overwrite_and_reports_missing_files(trained_run, tmp_path):
    from contrastkit.modalities.image.export import export_encoder, load_exported

    checkpoint = trained_run / "checkpoints" / "last.ckpt"
    export_encoder(checkpoint, tmp_path / "exported")
    with pytest.raises(ConfigError, match="already holds"):
        export_encoder(checkpoint, tmp_path / "exported")
    (tmp_path / "exported" / "model.safetensors").unlink()
    with pytest.raises(DataError, match="model.safetensors"):
        load_exported(tmp_path / "exported")
