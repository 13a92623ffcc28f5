"""The ViT's patch size, pooling and position embeddings from `contrastkit fit`: saved in the run's
config, rebuilt by the export (checked against a ViT built directly with those options), taken by
--init only when the architecture is the same, and refused for backbones that are not ViTs."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from safetensors.torch import load_file

from contrastkit.core.errors import ConfigError

VIT = dict(backbone="vit-micro", width=0.25, patch_size=4, pooling="cls", positions="learned")


def fit(out, **options):
    import contrastkit

    settings = dict(method="simclr", data="digits", limit=200, holdout=0.0, batch_size=32, max_steps=2,
                    optimizer="adamw", no_report=True, no_baselines=True, out=str(out))
    return contrastkit.fit(**{**settings, **options})


@pytest.fixture(scope="module")
def vit_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("vit-options") / "run"
    fit(out, **VIT)
    return out


def test_the_options_are_saved_in_the_runs_config(vit_run):
    saved = yaml.safe_load((vit_run / "config.yaml").read_text())
    assert {key: saved[key] for key in VIT} == VIT


def test_export_rebuilds_the_same_vit_as_one_built_directly(vit_run, tmp_path):
    from contrastkit.modalities.image.encoders.vit import VisionTransformer, vit
    from contrastkit.modalities.image.export import export_encoder, load_exported

    folder = export_encoder(vit_run / "checkpoints" / "last.ckpt", tmp_path / "export")
    config = json.loads((folder / "config.json").read_text())
    assert config["backbone_options"] == {"patch_size": 4, "pooling": "cls", "positions": "learned"}
    rebuilt = load_exported(folder).backbone
    # Second derivation: the ViT built by hand with the options, loaded with the exported weights.
    direct = vit("vit-micro", in_channels=1, image_size=8, width=0.25, patch_size=4, pooling="cls",
                 positions="learned")
    direct.load_state_dict(load_file(folder / "model.safetensors"))  # strict: same keys, same shapes
    assert isinstance(rebuilt, VisionTransformer) and rebuilt.grid == 2 and rebuilt.cls_token is not None
    assert isinstance(rebuilt.position_table, torch.nn.Parameter)
    images = torch.rand(5, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(rebuilt.eval()(images), direct.eval()(images), rtol=0, atol=0)
    default = vit("vit-micro", in_channels=1, image_size=8, width=0.25)
    assert {k: v.shape for k, v in default.state_dict().items()} != {k: v.shape for k, v in direct.state_dict().items()}


def test_init_takes_an_export_of_the_same_vit_and_names_the_keys_of_another(vit_run, tmp_path):
    from contrastkit.modalities.image.export import export_encoder

    folder = export_encoder(vit_run / "checkpoints" / "last.ckpt", tmp_path / "export")
    fit(tmp_path / "same", init=str(folder), **VIT)
    assert json.loads((tmp_path / "same" / "init.json").read_text())
    with pytest.raises(ConfigError, match="patch_embed|position_table|cls_token"):
        fit(tmp_path / "other", init=str(folder), **{**VIT, "patch_size": 2, "positions": "sincos"})


@pytest.mark.parametrize("backbone", ["small-cnn", "resnet18"])
def test_vit_options_are_refused_for_other_backbones(backbone, tmp_path):
    with pytest.raises(ConfigError, match="--pooling"):
        fit(tmp_path / "run", backbone=backbone, width=0.25, pooling="cls")


def test_bad_values_are_named(tmp_path):
    with pytest.raises(ConfigError, match="--positions"):
        fit(tmp_path / "run", backbone="vit-micro", positions="rotary")
    with pytest.raises(ConfigError, match="patch size 3 must divide"):
        fit(tmp_path / "run2", backbone="vit-micro", width=0.25, patch_size=3)


def test_a_masked_methods_own_vit_takes_the_options(tmp_path):
    from contrastkit.modalities.image.training.restore import load_method

    fit(tmp_path / "mae", method="mae", pooling="cls", patch_size=4, positions="learned", width=0.25)
    method = load_method(tmp_path / "mae" / "checkpoints" / "last.ckpt")[0]
    assert method.backbone.architecture_options() == {"patch_size": 4, "pooling": "cls", "positions": "learned"}
    # The summary names the ViT that --backbone auto built for MAE, its size read off the weights' shapes.
    shapes = {k: v.shape for k, v in method.backbone.state_dict().items()}
    depth = len({k.split(".")[2] for k in shapes if k.startswith("blocks.layers.")})
    summary = json.loads((tmp_path / "mae" / "summary.json").read_text())
    assert summary["backbone"] == f"vit (dim {shapes['patch_embed.weight'][0]}, depth {depth}, heads 3, patch 4)"
    extra = tmp_path / "extra.yaml"
    extra.write_text(yaml.safe_dump({"extra": {"mae": {"patch_size": 2}}}))
    with pytest.raises(ConfigError, match="disagree"):
        fit(tmp_path / "mae2", method="mae", patch_size=4, config=str(extra))
