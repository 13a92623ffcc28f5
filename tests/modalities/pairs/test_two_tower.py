"""The two-tower method: its losses against the catalogue's and naive loops, soft augmentation's
properties, and the text towers and CLI end to end (two processes against one, and resume after
SIGKILL: tests/modalities/pairs/test_pairs_engine.py)."""

from __future__ import annotations

import argparse
import csv
import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from contrastkit import objectives
from contrastkit.core.errors import ConfigError
from contrastkit.objectives.queued_clip import queued_clip_terms
from contrastkit.modalities.pairs.two_tower import TwoTowerOptions, build_two_tower
from contrastkit.modalities.text.soft_augment import soft_augment
from tests.conftest import requires_minilm, requires_transformers


def _mlp_towers(seed: int = 0) -> tuple[nn.Module, nn.Module]:
    """An 'image' tower over 6 features and a 'text' tower over 5: any two modules (B, *) -> (B, 8)."""
    torch.manual_seed(seed)
    return (nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 8)),
            nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 8)))


def test_cross_loss_is_the_catalogue_clip_on_the_same_embeddings():
    encoder_a, encoder_b = _mlp_towers()
    model = build_two_tower(encoder_a, encoder_b, TwoTowerOptions(head="none", temperature=0.1), dim_a=8, dim_b=8)
    x_a, x_b = torch.randn(10, 6), torch.randn(10, 5)
    terms = model.losses(x_a, x_b)
    assert list(terms) == ["cross"]
    reference = objectives.get("clip", init_temperature=0.1)(encoder_a(x_a), encoder_b(x_b))
    assert torch.allclose(terms["cross"], reference, atol=1e-6)


def test_hcl_cross_objective_gets_the_concentration():
    encoder_a, encoder_b = _mlp_towers()
    options = TwoTowerOptions(head="none", objective="hcl", temperature=0.2, concentration=3.0, tau_plus=0.05)
    model = build_two_tower(encoder_a, encoder_b, options, dim_a=8, dim_b=8)
    x_a, x_b = torch.randn(10, 6), torch.randn(10, 5)
    reference = objectives.get("hcl", temperature=0.2, beta=3.0, tau_plus=0.05)(encoder_a(x_a), encoder_b(x_b))
    assert torch.allclose(model.losses(x_a, x_b)["cross"], reference, atol=1e-6)


def test_queued_clip_without_queue_and_with_online_keys_is_clip():
    torch.manual_seed(1)
    a, b = torch.randn(7, 4), torch.randn(7, 4)
    scale = torch.tensor(math.log(1 / 0.07))
    queued = queued_clip_terms(a, b, a, b, scale).mean()
    assert torch.allclose(queued, objectives.clip_terms(a, b, scale).mean(), atol=1e-6)


def test_queued_clip_matches_a_naive_loop():
    torch.manual_seed(2)
    n, k, d, t = 5, 3, 4, 0.1
    a, b, keys_a, keys_b = (torch.randn(n, d, dtype=torch.float64) for _ in range(4))
    queue_a, queue_b = torch.randn(k, d, dtype=torch.float64), torch.randn(k + 1, d, dtype=torch.float64)
    value = queued_clip_terms(a, b, keys_a, keys_b, torch.tensor(math.log(1 / t), dtype=torch.float64),
                              queue_a, queue_b).mean()

    def cosine(u, v):
        return float(u @ v / (u.norm() * v.norm()))

    total = 0.0
    for r in range(n):
        for query, keys, queue in ((a[r], keys_b, queue_b), (b[r], keys_a, queue_a)):
            candidates = list(keys) + list(queue)
            logits = [cosine(query, c) / t for c in candidates]
            total += -logits[r] + math.log(sum(math.exp(x) for x in logits))
    assert value.item() == pytest.approx(total / (2 * n), rel=1e-9)


def test_shared_weights_and_momentum_branch():
    encoder, _ = _mlp_towers()
    model = build_two_tower(encoder, None, TwoTowerOptions(momentum=0.9, queue_size=16), dim_a=8)
    assert model.shared_encoder and model.momentum_branch.encoder_a is model.momentum_branch.encoder_b
    assert all(not p.requires_grad for p in model.momentum_branch.parameters())
    before = [p.clone() for p in model.momentum_branch.encoder_a.parameters()]
    with torch.no_grad():
        for p in model.encoder_a.parameters():
            p.add_(1.0)
    model.after_optimizer_step()  # shared: the EMA must move the momentum encoder once, by 1 - m
    for old, new in zip(before, model.momentum_branch.encoder_a.parameters()):
        assert torch.allclose(new, old + 0.1, atol=1e-6)


@pytest.mark.parametrize("options, message", [
    (TwoTowerOptions(objective="siglip", momentum=0.99), "need --objective clip"),
    (TwoTowerOptions(queue_size=8), "needs --momentum"),
    (TwoTowerOptions(objective="simclr"), "Valid objectives"),
])
def test_invalid_options_are_config_errors(options, message):
    encoder_a, encoder_b = _mlp_towers()
    with pytest.raises(ConfigError, match=message):
        build_two_tower(encoder_a, encoder_b, options, dim_a=8, dim_b=8)


# -- soft augmentation ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    from contrastkit.modalities.text.encoders import minilm_folder

    return AutoTokenizer.from_pretrained(str(minilm_folder()), local_files_only=True)


TEXTS = ["def add(x, y): return x + y  # the sum of two numbers", "return the sum", "a"]


@requires_transformers
@requires_minilm
def test_soft_augment_changes_exactly_the_rate_and_never_special_tokens(tokenizer):
    batch = tokenizer(TEXTS, padding=True, return_tensors="pt")
    ids, mask = batch["input_ids"], batch["attention_mask"]
    original = ids.clone()
    special = torch.isin(ids, torch.tensor(tokenizer.all_special_ids))
    augmented = soft_augment(ids, mask, 0.3, tokenizer, torch.Generator().manual_seed(0))
    assert torch.equal(ids, original)  # the input is not modified
    changed = augmented != ids
    assert not changed[special | (mask == 0)].any()  # [CLS], [SEP], padding untouched
    eligible = (mask.bool() & ~special).sum(1)
    assert changed.sum(1).tolist() == [round(0.3 * n) for n in eligible.tolist()]
    new_tokens = augmented[changed]
    assert not torch.isin(new_tokens, torch.tensor([t for t in tokenizer.all_special_ids
                                                    if t != tokenizer.mask_token_id])).any()


@requires_transformers
@requires_minilm
def test_soft_augment_is_reproducible_and_mask_share_chooses_the_operation(tokenizer):
    batch = tokenizer(TEXTS * 4, padding=True, return_tensors="pt")
    ids, mask = batch["input_ids"], batch["attention_mask"]

    def draw(seed, **kwargs):
        return soft_augment(ids, mask, 0.5, tokenizer, torch.Generator().manual_seed(seed), **kwargs)

    assert torch.equal(draw(3), draw(3))
    assert not torch.equal(draw(3), draw(4))
    masked_only = draw(3, mask_share=1.0)
    assert (masked_only[masked_only != ids] == tokenizer.mask_token_id).all()
    replaced_only = draw(3, mask_share=0.0)
    assert not (replaced_only == tokenizer.mask_token_id).any()
    assert torch.equal(soft_augment(ids, mask, 0.0, tokenizer), ids)
    with pytest.raises(ConfigError, match="rate must be in"):
        soft_augment(ids, mask, 1.5, tokenizer)


# -- text towers and the command ------------------------------------------------------------

@requires_transformers
@requires_minilm
def test_pairs_command_trains_and_scores_text_towers(tmp_path, capsys):
    from contrastkit.modalities.pairs import cli
    from contrastkit.modalities.text.encoders import small_random_encoder

    small_random_encoder(hidden_size=32, layers=1, heads=2, max_length=32).save(tmp_path / "tiny")
    words = ["sum", "quote", "parse", "open", "close", "sort", "merge", "split", "join", "read", "write", "find"]
    records = [{"doc": f"{w} the items", "code": f"def {w}(items):\n    return {w}_all(items)",
                "split": "test" if i % 3 == 0 else "train"} for i, w in enumerate(words)]
    (tmp_path / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    args = parser.parse_args([
        "--data", str(tmp_path / "pairs.jsonl"), "--first-field", "doc", "--second-field", "code",
        "--train-split", "train", "--eval-split", "test", "--out", str(tmp_path / "run"),
        "--backbone", str(tmp_path / "tiny"), "--steps", "2", "--batch-size", "4",
        "--momentum", "0.9", "--queue-size", "8", "--augment-rate-second", "0.2",
        "--in-modality-weight-first", "0.5", "--in-modality-weight-second", "0.5",
        "--harmonize", "--curriculum-share", "0.25"])
    assert cli.run(args) == 0
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["train_pairs"] == 8 and summary["eval_pairs"] == 4 and summary["steps"] == 2
    rows = csv.DictReader((tmp_path / "run" / "metrics.csv").read_text().splitlines())
    losses = [float(row["train/loss"]) for row in rows]
    assert len(losses) == 2 and all(math.isfinite(loss) for loss in losses)
    metrics = summary["retrieval"]["first_to_second"]
    assert metrics["queries"] == 4 and 0 < metrics["mrr"] <= 1
    assert "doc -> code" in capsys.readouterr().out
    assert (tmp_path / "run" / "tower_a" / "config.json").is_file()
    with pytest.raises(ConfigError, match="already holds"):
        cli.run(args)
    args.out, args.in_modality_weight_first, args.in_modality_weight_second = str(tmp_path / "other"), 0.0, 0.0
    with pytest.raises(ConfigError, match="only the cross-modal one"):
        cli.run(args)


def test_in_modality_second_view_uses_dropout_without_momentum():
    """SimCSE-style: with no augmentation the second view differs only by dropout, so the
    in-modality loss is finite and positive in train mode and the loss has the catalogue's value."""
    torch.manual_seed(0)
    encoder = nn.Sequential(nn.Linear(6, 8), nn.Dropout(0.3))
    model = build_two_tower(encoder, None, TwoTowerOptions(in_modality_weights=(1.0, 0.0)), dim_a=8)
    x_a, x_b = torch.randn(6, 6), torch.randn(6, 6)
    torch.manual_seed(1)
    terms = model.losses(x_a, x_b)
    torch.manual_seed(1)
    z_a = model.head_a(encoder(x_a))
    encoder(x_b)  # the b tower's forward pass draws its dropout mask in between
    second = model.head_a(encoder(x_a))
    reference = objectives.get("infonce", temperature=0.05)(z_a, second)
    assert torch.allclose(terms["in_a"], reference, atol=1e-6)
    assert F.cosine_similarity(z_a, second).max() < 1
