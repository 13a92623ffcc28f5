"""Sentence data, the text training loop, the `text` command, and a short real SimCSE run."""

from __future__ import annotations

import argparse
import copy
import csv
import functools
import gzip
import json
import time

import numpy as np
import pytest
import torch
from torch import nn

from contrastkit.core.errors import ConfigError, DataError, TrainingError
from contrastkit.modalities.text import cli as text_cli
from contrastkit.modalities.text.data import SentenceData
from contrastkit.modalities.text.encoders import TextEncoder, small_random_encoder
from contrastkit.modalities.text.methods import build_text_method
from contrastkit.engine.optim import linear_warmup_decay
from contrastkit.modalities.text.train import fit_text
from tests.conftest import data_path, requires_minilm, requires_transformers

LINES = [f"Sentence {i} of a small corpus about topic {i % 3}." for i in range(12)]


@functools.cache
def _tiny_encoder() -> TextEncoder:
    return small_random_encoder(hidden_size=32, layers=1, heads=2, max_length=32, seed=0)


def tiny_encoder() -> TextEncoder:
    """A fresh copy of one small random encoder (building one costs seconds, copying it does not)."""
    return copy.deepcopy(_tiny_encoder())


# ------------------------------------------------------------------------------------------ data


def test_contexts_are_the_neighbouring_lines():
    data = SentenceData(LINES, context_window=2)
    assert data.context(0) == " ".join(LINES[1:3])
    assert data.context(5) == " ".join(LINES[3:5] + LINES[6:8])
    assert data.context(11) == " ".join(LINES[9:11])
    bounded = SentenceData(LINES, context_window=2, document_ids=[0] * 6 + [1] * 6)
    assert bounded.context(5) == " ".join(LINES[3:5])  # lines 6 and 7 belong to the next document
    assert bounded.context(6) == " ".join(LINES[7:9])


def test_epochs_are_seeded_permutations_of_full_batches():
    data = SentenceData(LINES, context_window=1)
    epoch = list(data.epoch(0, batch_size=5, seed=3, with_context=True))
    assert [len(b["texts"]) for b in epoch] == [5, 5]  # the incomplete batch is dropped
    indices = torch.cat([b["indices"] for b in epoch]).tolist()
    assert len(set(indices)) == 10
    for b in epoch:
        assert b["texts"] == [LINES[i] for i in b["indices"].tolist()]
        assert b["contexts"] == [data.context(i) for i in b["indices"].tolist()]
    again = torch.cat([b["indices"] for b in data.epoch(0, 5, seed=3)]).tolist()
    next_epoch = torch.cat([b["indices"] for b in data.epoch(1, 5, seed=3)]).tolist()
    assert again == indices and next_epoch != indices
    assert "contexts" not in next(data.epoch(0, 5, seed=3))


def test_data_errors(tmp_path):
    with pytest.raises(DataError, match="fewer than one batch"):
        next(SentenceData(LINES).epoch(0, batch_size=64))
    with pytest.raises(ConfigError, match="context window"):
        next(SentenceData(LINES, context_window=0).epoch(0, 4, with_context=True))
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    with pytest.raises(DataError, match="no text lines"):
        SentenceData.from_file(empty)


def test_real_sentences_file_count():
    data = SentenceData.from_file(data_path("scifact/sentences.txt.gz"))
    assert len(data) == 49676  # PROVENANCE-sentences.txt


# -------------------------------------------------------------------------------------- training


def test_schedule_matches_hand_values():
    assert [linear_warmup_decay(s, 4, 12) for s in (0, 1, 3)] == [0.25, 0.5, 1.0]
    assert [linear_warmup_decay(s, 4, 12) for s in (4, 8, 11, 12)] == [1.0, 0.5, 0.125, 0.0]
    assert linear_warmup_decay(1000, 4, None) == 1.0


def train_once(tmp_path, name: str, seed: int, **settings):
    method = build_text_method("simcse", tiny_encoder())
    summary = fit_text(method, SentenceData(LINES), batch_size=4, lr=1e-3, warmup_steps=1, seed=seed,
                       out_dir=tmp_path / name, log_every=2, **{"max_steps": 3, **settings})
    return method, summary


@requires_transformers
@requires_minilm
def test_fit_is_deterministic_and_writes_the_run(tmp_path):
    torch.manual_seed(123)
    outside = torch.rand(2)
    torch.manual_seed(123)
    first, summary = train_once(tmp_path, "a", seed=0, max_length=16)
    assert torch.equal(torch.rand(2), outside)  # the caller's random stream is untouched
    second, _ = train_once(tmp_path, "b", seed=0, max_length=16)
    other, _ = train_once(tmp_path, "c", seed=1, max_length=16)
    untrained = tiny_encoder()
    for p1, p2, p3, p0 in zip(first.encoder.parameters(), second.encoder.parameters(),
                              other.encoder.parameters(), untrained.parameters(), strict=True):
        assert torch.equal(p1, p2)
    assert any(not torch.equal(p1, p3) for p1, p3 in zip(first.parameters(), other.parameters(), strict=True))
    assert any(not torch.equal(p1, p0) for p1, p0 in zip(first.encoder.parameters(), untrained.parameters(),
                                                          strict=True))
    assert summary["steps"] == 3 and summary["stopped_by"] == "max_steps" and summary["max_length"] == 16
    assert first.encoder.max_length == 32  # the encoder's own length is restored for saving
    with open(tmp_path / "a" / "metrics.csv") as handle:
        rows = [r for r in csv.DictReader(handle) if r["train/loss"]]
    assert [int(r["step"]) for r in rows] == [1]  # the steps logged every 2: the second (0-based 1)
    assert {"train/loss", "train/lr", "train/positive_cosine", "elapsed_s"} <= rows[0].keys()
    assert json.loads((tmp_path / "a" / "summary.json").read_text())["steps"] == 3
    reloaded = TextEncoder.from_folder(tmp_path / "a" / "encoder")
    texts = LINES[:3]
    assert torch.allclose(reloaded.encode(texts), first.encoder.encode(texts), atol=1e-5)
    with pytest.raises(ConfigError, match="already holds a run"):
        train_once(tmp_path, "a", seed=0)


@requires_transformers
@requires_minilm
def test_time_budget_stops_the_run(tmp_path):
    _, summary = train_once(tmp_path, "t", seed=0, max_steps=None, max_minutes=1e-6)
    assert summary["stopped_by"] == "time_budget" and summary["schedule"].endswith("constant")
    with pytest.raises(ConfigError, match="--max-steps"):
        train_once(tmp_path, "u", seed=0, max_steps=None)


class NaNMethod(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = tiny_encoder()

    def training_loss(self, batch):
        z = self.encoder(self.encoder.tokenize(batch["texts"]))
        return z.sum() * float("nan"), {}


@requires_transformers
@requires_minilm
def test_nan_loss_raises_training_error(tmp_path):
    with pytest.raises(TrainingError, match="loss became nan at epoch 0, step 0"):
        fit_text(NaNMethod(), SentenceData(LINES), batch_size=4, lr=1e-3, max_steps=2, out_dir=tmp_path / "nan")
    assert not (tmp_path / "nan" / "encoder").exists()


# ------------------------------------------------------------------------------------------- CLI


def write_sts(path, rows):
    with open(path, "w") as handle:
        handle.writelines(f"main-captions\tMSRvid\t2012test\t{i:04d}\t{score}\t{first}\t{second}\n" for i, (score, first, second) in enumerate(rows))


@requires_transformers
@requires_minilm
def test_text_command_trains_and_evaluates_before_and_after(tmp_path, capsys):
    lines = tmp_path / "lines.txt.gz"
    with gzip.open(lines, "wt") as handle:
        handle.write("\n".join(LINES) + "\n")
    sts = tmp_path / "sts.csv"
    write_sts(sts, [(5.0, "A cat sits.", "A cat is sitting."), (0.5, "A man runs.", "The sky is blue."),
                    (3.0, "Dogs bark.", "A dog barks loudly.")])
    parser = argparse.ArgumentParser()
    text_cli.add_arguments(parser)
    args = parser.parse_args([
        "--method", "contriever", "--backbone", "random-small", "--data", str(lines), "--out",
        str(tmp_path / "run"), "--batch-size", "4", "--max-steps", "2", "--max-length", "16",
        "--option", "augmentation=mask", "--option", "queue_size=8", "--eval-sts", str(sts), "--device", "cpu",
    ])
    assert text_cli.run(args) == 0
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["method"] == "contriever" and summary["options"] == {"augmentation": "mask", "queue_size": 8}
    assert summary["warmup_steps"] == 1 and summary["steps"] == 2
    assert {"before", "after"} <= summary["evaluation"].keys()
    assert "STS Spearman" in capsys.readouterr().out
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        text_cli.parse_options(["queue_size"])


# ------------------------------------------------------------------------------------ slow: real


@pytest.mark.slow
@requires_transformers
@requires_minilm
def test_simcse_on_stsb_train_improves_dev_spearman(tmp_path):
    """500 steps of SimCSE on STS-B train sentences lift a small random encoder on STS-B dev.

    A fixed number of steps, not a time budget, so the run is the same however loaded the machine is
    (about 30 s of training on two idle cores). Measured at lr 5e-4: 51.97 -> 60.42, 60.09, 60.21 for
    seeds 0, 1, 2 (+8.1 to +8.5), where 150 steps gave +4.7 (seed 0)."""
    from scipy.stats import spearmanr

    from contrastkit.modalities.text.sources import read_sts

    train = read_sts(data_path("stsb/sts-train.csv"))
    dev = read_sts(data_path("stsb/sts-dev.csv"))
    sentences = list(dict.fromkeys(train.first + train.second))

    def dev_spearman(encoder) -> float:
        # Computed here with scipy on cosines, independently of contrastkit.modalities.text.evaluation.
        a = torch.nn.functional.normalize(encoder.encode(dev.first), dim=1)
        b = torch.nn.functional.normalize(encoder.encode(dev.second), dim=1)
        return 100 * spearmanr((a * b).sum(1).numpy(), np.asarray(dev.scores)).statistic

    before = dev_spearman(small_random_encoder(hidden_size=64, layers=2, max_length=32, seed=0))
    encoder = small_random_encoder(hidden_size=64, layers=2, max_length=32, seed=0)
    started = time.perf_counter()
    summary = fit_text(build_text_method("simcse", encoder), SentenceData(sentences), batch_size=64, lr=5e-4,
                       max_steps=500, warmup_steps=20, seed=0, out_dir=tmp_path / "simcse", log_every=20)
    after = dev_spearman(encoder)
    print(f"STS-B dev Spearman: random {before:.2f} -> SimCSE {after:.2f} after {summary['steps']} steps "
          f"({time.perf_counter() - started:.0f} s)")
    assert summary["steps"] == 500 and summary["stopped_by"] == "max_steps"
    assert after > before + 5


@requires_transformers
@requires_minilm
def test_bf16_run_equals_a_loop_with_only_the_forward_under_autocast(tmp_path):
    """PyTorch's rule for autocast: the forward pass and the loss inside, backward, clipping and the
    optimiser step outside. A run of fit_text at bf16 must equal that loop written out by hand
    (with the engine's per-step seeds and the text runs' per-sample dropout). Autocast's weight-cast
    cache is off, as in Lightning: each use of a weight gets its own bf16 copy, whose gradients are
    summed in float32."""
    from contrastkit.engine.module import step_seed
    from contrastkit.engine.optim import adamw, parameter_groups
    from contrastkit.modalities.text.dropout import sample_seeded_dropout

    data = SentenceData(LINES, context_window=0)
    trained = build_text_method("simcse", tiny_encoder())
    fit_text(trained, data, batch_size=4, lr=1e-3, max_steps=6, warmup_steps=2, seed=3, out_dir=tmp_path / "run",
             precision="bf16", log_every=3)

    method = build_text_method("simcse", tiny_encoder())
    optimizer = adamw(parameter_groups(method, 0.01), 1e-3)
    parameters = [p for p in method.parameters() if p.requires_grad]
    method.train()
    with torch.random.fork_rng(devices=[]), sample_seeded_dropout(method, seed=3) as dropout:
        batches = [b for epoch in (0, 1) for b in data.epoch(epoch, 4, 3, False)]  # 3 batches an epoch
        for step, batch in enumerate(batches):
            torch.default_generator.manual_seed(step_seed(3, step, rank=0))
            dropout.begin_step(step)
            for group in optimizer.param_groups:
                group["lr"] = 1e-3 * linear_warmup_decay(step, 2, 6)
            with torch.autocast("cpu", dtype=torch.bfloat16, cache_enabled=False):
                loss, _ = method.training_loss(batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(parameters, 1.0)
            optimizer.step()
    for (name, got), expected in zip(trained.encoder.state_dict().items(), method.encoder.state_dict().values()):
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-7, msg=lambda detail, name=name: f"{name}: {detail}")
