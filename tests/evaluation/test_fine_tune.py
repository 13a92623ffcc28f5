"""Fine-tuning evaluation: the label draw, the layer-wise rates, and the loop against second derivations
(a frozen encoder must give the linear head that the same loop trains on precomputed features)."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
from torch import nn

from contrastkit.core.errors import ConfigError
from contrastkit.evaluation.fine_tune import (
    balanced_labels,
    carve_development,
    encoder_blocks,
    fine_tune,
    layer_decay_groups,
)
from tests.fine_tune_reference import digits_simclr_run, hand_trained_head


def class_labels(n: int = 300, classes: int = 7, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, classes, size=n)


@pytest.mark.parametrize("n_labels", [7, 20, 80])
def test_balanced_labels_are_exactly_n_balanced_reproducible_and_off_the_dev_carve(n_labels):
    y = class_labels()
    candidates = np.arange(250)  # the last 50 rows are a held-out part
    rest, dev = carve_development(y, candidates, 60, seed=3)
    chosen = balanced_labels(y, rest, n_labels, seed=5)
    assert len(chosen) == n_labels and len(np.unique(chosen)) == n_labels
    counts = np.bincount(y[chosen], minlength=7)
    assert counts.max() - counts.min() <= 1 and counts.min() == n_labels // 7
    assert not set(chosen) & set(dev) and set(chosen) <= set(rest)
    assert abs(len(dev) - 60) <= 7 and not set(dev) & set(range(250, 300))  # rounded per class
    np.testing.assert_array_equal(chosen, balanced_labels(y, rest, n_labels, seed=5))
    assert not np.array_equal(chosen, balanced_labels(y, rest, n_labels, seed=6))


def test_balanced_labels_refuses_fewer_labels_than_classes_or_too_many():
    y = class_labels()
    with pytest.raises(ConfigError, match="one label per class"):
        balanced_labels(y, np.arange(300), 6)
    with pytest.raises(ConfigError, match="ask for fewer"):
        balanced_labels(y, np.arange(300), 7 * 200)


class TinyTransformer(nn.Module):
    """Parameters before, inside and after an ordered list of blocks (as a ViT registers them)."""

    def __init__(self, depth: int = 3):
        super().__init__()
        self.embed = nn.Linear(4, 4)
        self.blocks = nn.ModuleList(nn.Linear(4, 4) for _ in range(depth))
        self.norm = nn.LayerNorm(4)


class HuggingFaceLike(nn.Module):
    def __init__(self):
        super().__init__()
        self.transformer = nn.Module()
        self.transformer.embeddings = nn.Linear(4, 4)
        self.transformer.encoder = nn.Module()
        self.transformer.encoder.layer = nn.ModuleList(nn.Linear(4, 4) for _ in range(2))


@pytest.mark.parametrize("depth", [1, 3, 12])
def test_layer_decay_gives_lr_times_decay_to_the_distance_from_the_top(depth):
    encoder = TinyTransformer(depth)
    lr, decay = 0.01, 0.75
    rate = {id(p): g["lr"] for g in layer_decay_groups(encoder, lr, decay) for p in g["params"]}
    top = depth + 1  # closed form: the embedding is layer 0, block i (0-based) layer i + 1, the norm the top
    for p in encoder.embed.parameters():
        assert rate[id(p)] == pytest.approx(lr * decay ** top)
    for i, block in enumerate(encoder.blocks):
        for p in block.parameters():
            assert rate[id(p)] == pytest.approx(lr * decay ** (top - (i + 1)))
    for p in encoder.norm.parameters():
        assert rate[id(p)] == pytest.approx(lr)
    assert len(rate) == len(list(encoder.parameters()))


def test_layer_decay_on_the_vision_transformer_follows_its_block_order():
    from contrastkit.modalities.image.encoders import build_encoder

    try:
        vit = build_encoder("vit-micro", in_channels=3, image_size=32, width=1.0)
    except Exception as error:  # the ViT arrives with another change
        pytest.skip(f"no vit-micro backbone here ({error})")
    block_of = {name: int(re.search(r"\.(\d+)\.", name).group(1)) for name, _ in vit.named_parameters()
                if name.startswith("blocks.")}  # blocks.[layers.]i.<...>
    depth = max(block_of.values()) + 1
    rate = {id(p): g["lr"] for g in layer_decay_groups(vit, 1.0, 0.5) for p in g["params"]}
    for name, p in vit.named_parameters():
        if name in block_of:
            expected = 0.5 ** (depth - block_of[name])
        elif name.startswith(("patch_embed", "position", "cls_token")):
            expected = 0.5 ** (depth + 1)
        else:  # the final norm
            expected = 1.0
        assert rate[id(p)] == pytest.approx(expected), name


def test_layer_decay_finds_hugging_face_layers_and_refuses_an_encoder_without_blocks():
    encoder = HuggingFaceLike()
    assert encoder_blocks(encoder) == list(encoder.transformer.encoder.layer)
    groups = layer_decay_groups(encoder, 1.0, 0.5)
    assert [g["lr"] for g in groups] == [0.125, 0.25, 0.5]  # 2 blocks: depth 3, nothing after them
    flat = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2))
    (group,) = layer_decay_groups(flat, 0.1, None)  # no decay asked for: one rate
    assert group["lr"] == 0.1 and len(group["params"]) == 4
    with pytest.raises(ConfigError, match="leave --layer-decay out"):  # asked for, and nothing to decay over
        layer_decay_groups(flat, 0.1, 0.5)


def test_layer_decay_on_the_resnet_counts_its_residual_blocks():
    """ResNet-18: the stem, then 8 residual blocks (2 per stage), nothing after the pooling; the
    rate of each parameter written out from its name."""
    from contrastkit.modalities.image.encoders.resnet import resnet18

    encoder = resnet18(3, 32, width=0.125)
    rate = {id(p): g["lr"] for g in layer_decay_groups(encoder, 1.0, 0.5) for p in g["params"]}
    depth = 9  # 8 blocks + 1
    for name, p in encoder.named_parameters():
        if name.startswith("stem."):
            expected = 0.5 ** depth
        else:  # stages.S.B.*: block number 2 S + B + 1 counted from the stem
            stage, block = (int(part) for part in name.split(".")[1:3])
            expected = 0.5 ** (depth - (2 * stage + block + 1))
        assert rate[id(p)] == pytest.approx(expected), name


def test_layer_decay_on_a_gnn_counts_its_layers_with_their_activations():
    """A 3-layer GCN with PReLU: layer i's convolution and activation at decay^(4 - i), nothing before
    or after the layers."""
    pytest.importorskip("torch_geometric")
    from contrastkit.modalities.graph.encoders import GNNEncoder

    encoder = GNNEncoder("gcn", 5, 8, 4, num_layers=3)
    rate = {id(p): g["lr"] for g in layer_decay_groups(encoder, 1.0, 0.5) for p in g["params"]}
    for name, p in encoder.named_parameters():
        layer = int(name.split(".")[1]) + 1  # convs.I.* and activations.I.*
        assert rate[id(p)] == pytest.approx(0.5 ** (4 - layer)), name
    assert len(rate) == len(list(encoder.parameters()))


def small_encoder() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten())


def images_and_labels(n: int = 120):
    generator = torch.Generator().manual_seed(1)
    x = torch.rand((n, 1, 6, 6), generator=generator)
    y = (x[:, 0, :3].mean((1, 2)) > x[:, 0, 3:].mean((1, 2))).long().numpy()
    return x, y


def features(encoder: nn.Module, batch: torch.Tensor) -> torch.Tensor:
    return encoder(batch)


def test_a_frozen_encoder_gives_the_linear_head_trained_on_precomputed_features():
    encoder = small_encoder()
    x, y = images_and_labels()
    train, dev = np.arange(0, 80), np.arange(80, 120)
    result = fine_tune(encoder, features, x, y, train, dev, num_classes=2, feature_dim=4, epochs=3, lr=0.05,
                       encoder_lr=0.0, batch_size=16, seed=7)
    # Second derivation: the features once, in eval mode, and the same loop over a head alone.
    encoder.eval()
    with torch.no_grad():
        frozen = encoder(x)
    dev_top1, weights = hand_trained_head(frozen, torch.as_tensor(y), train, dev, 2, epochs=3, lr=0.05,
                                          batch_size=16, seed=7)
    assert result.dev_top1 == pytest.approx(dev_top1)
    torch.testing.assert_close(result.model.head.weight, weights[result.best_epoch - 1], rtol=1e-5, atol=1e-6)
    for kept, original in zip(result.model.encoder.state_dict().values(), encoder.state_dict().values()):
        assert torch.equal(kept, original)  # BatchNorm statistics included: the frozen encoder ran in eval mode


def test_a_learning_encoder_changes_a_copy_and_keeps_the_best_dev_epoch():
    encoder = small_encoder()
    before = {k: v.clone() for k, v in encoder.state_dict().items()}
    x, y = images_and_labels()
    result = fine_tune(encoder, features, x, y, np.arange(80), np.arange(80, 120), num_classes=2, feature_dim=4,
                       epochs=4, lr=0.05, batch_size=16, seed=0, test_rows=np.arange(100, 120))
    assert all(torch.equal(v, before[k]) for k, v in encoder.state_dict().items())  # the caller's encoder
    assert not torch.equal(result.model.encoder[0].weight, encoder[0].weight)
    assert result.best_dev_top1 == max(result.dev_top1)
    assert result.best_epoch == result.dev_top1.index(max(result.dev_top1)) + 1
    assert result.test_top1 is not None


@pytest.fixture(scope="module")
def image_run(tmp_path_factory):
    return digits_simclr_run(tmp_path_factory.mktemp("fine-tune") / "run", limit=500, max_steps=3)


def test_evaluate_fine_tune_on_an_image_run_scores_dev_by_default(image_run, tmp_path, capsys):
    from contrastkit.cli import main

    output = tmp_path / "ft.json"
    assert main(["evaluate", "--fine-tune", "--run", str(image_run), "--labels", "30", "--epochs", "2",
                 "--lr", "0.01", "--lr", "0.001", "--dev-size", "60", "--output", str(output)]) == 0
    figures = json.loads(output.read_text())
    assert figures["scored"] == "dev" and figures["labels"] == 30 and abs(figures["dev_size"] - 60) <= 10
    assert figures["n_scored"] == figures["dev_size"] and figures["fine_tune_top1"] == figures["fine_tune_dev_top1"]
    assert [t["lr"] for t in figures["tried"]] == [0.01, 0.001]
    assert figures["chosen"]["lr"] == max(figures["tried"], key=lambda t: t["dev_top1"])["lr"]
    for key in ("knn_top1", "linear_top1", "fine_tune_top1"):
        assert 0.0 <= figures[key] <= 1.0
    held_out = json.loads((image_run / "split.json").read_text())["holdout"]
    assert main(["evaluate", "--fine-tune", "--run", str(image_run), "--labels", "30", "--epochs", "1",
                 "--dev-size", "60", "--split", "test", "--output", str(output)]) == 0
    tested = json.loads(output.read_text())
    assert tested["n_scored"] == held_out[1] - held_out[0] and tested["scored"].startswith("test")


def test_evaluate_fine_tune_needs_a_number_of_labels(image_run):
    from contrastkit.cli import main

    assert main(["evaluate", "--fine-tune", "--run", str(image_run), "--labels", "labels.npy"]) == 2


def test_evaluate_fine_tune_on_a_timeseries_run(tmp_path):
    import contrastkit
    from contrastkit.cli import main

    out = tmp_path / "ts"
    contrastkit.fit(method="ts2vec", data="GunPoint", max_steps=2, output_dims=16, batch_size=8, out=str(out))
    output = tmp_path / "ft.json"
    assert main(["evaluate", "--fine-tune", "--run", str(out), "--labels", "10", "--epochs", "2",
                 "--output", str(output)]) == 0
    figures = json.loads(output.read_text())
    dev = np.load(out / "dev_indices.npy")
    assert figures["scored"] == "dev" and figures["dev_size"] == len(dev) == figures["n_scored"]
    assert figures["labels"] == 10
