"""The engine: schedules against their closed forms, the resumable loader against a plain loop, a
mid-epoch resume in process, and an image run killed with SIGKILL between step checkpoints."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.utils.data import Dataset

from contrastkit.engine import EpochShuffleSampler, TrainSettings, batch_loader, train
from contrastkit.engine.metrics_log import trim_after_step
from contrastkit.engine.optim import lr_multiplier
from contrastkit.core.errors import ConfigError
from tests.resume_harness import assert_fit_resumes_exactly, assert_same_training_state, load_checkpoint


def test_schedules_match_their_closed_forms():
    warmup, total = 3, 10
    for step in range(12):
        ramp = (step + 1) / warmup
        cosine = 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / (total - warmup))))
        linear = max(0.0, (total - step) / (total - warmup))
        assert lr_multiplier("warmup-cosine", step, warmup, total) == pytest.approx(ramp if step < warmup else cosine)
        assert lr_multiplier("warmup-linear", step, warmup, total) == pytest.approx(ramp if step < warmup else linear)
        assert lr_multiplier("warmup-constant", step, warmup, total) == pytest.approx(min(ramp, 1.0))
        assert lr_multiplier("constant", step, warmup, total) == 1.0
    # a run bounded only by time has no total: the rate stays at its peak after the warm-up
    assert lr_multiplier("warmup-linear", 50, warmup, None) == 1.0


def test_settings_refuse_a_run_without_a_length_and_name_the_options():
    with pytest.raises(ConfigError, match="--max-epochs, --max-steps or --max-minutes"):
        TrainSettings()
    with pytest.raises(ConfigError, match="optimizer must be one of"):
        TrainSettings(max_steps=1, optimizer="rmsprop")
    assert TrainSettings(max_steps=1, lr=0.1, lr_reference_batch=256, batch_size=64).lr_for(2) == pytest.approx(0.05)


class Rows(Dataset):
    def __init__(self, x: torch.Tensor):
        self.x = x

    def __len__(self) -> int:
        return len(self.x)

    def __getitems__(self, positions: list[int]) -> dict:
        index = torch.as_tensor(positions)
        return {"x": self.x[index], "index": index}


def test_the_resumable_loader_skips_the_batches_a_checkpoint_holds():
    sampler = EpochShuffleSampler(40, 8, seed=3)
    loader = batch_loader(Rows(torch.arange(40.0)), sampler)
    sampler.set_epoch(2)
    whole = [batch["index"].tolist() for batch in loader]
    expected = [sampler.epoch_order()[b * 8:(b + 1) * 8].tolist() for b in range(5)]  # the order, cut by hand
    assert whole == expected
    loader.load_state_dict({"epoch": 2, "batches_done": 3})
    assert [batch["index"].tolist() for batch in loader] == expected[3:]
    sampler.set_epoch(3)  # another epoch: nothing skipped
    assert len(list(loader)) == 5


class NoisyRegression(nn.Module):
    """A method with every kind of state the engine must restore: weights, dropout (randomness per
    step), an EMA copy updated after each optimiser step, and a queue of past outputs."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4, 16), nn.Dropout(0.3), nn.Linear(16, 1))
        self.register_buffer("ema", torch.zeros(1))
        self.register_buffer("queue", torch.zeros(6))

    def training_loss(self, batch):
        x = batch["x"]
        features = torch.stack([x, x.sin(), x.cos(), x / 40], 1)
        prediction = self.net(features).squeeze(1)
        loss = ((prediction - x.cos()) ** 2).mean()
        self._last = prediction.detach().mean()
        return loss, {"prediction_mean": float(self._last)}

    def after_optimizer_step(self, step: int, total_steps: int) -> None:
        self.ema.mul_(0.9).add_(0.1 * self._last)
        self.queue.copy_(torch.roll(self.queue, 1))
        self.queue[0] = self._last


def _fit(run_dir, resume=False, crash_after_step=None, length=None, crash_before_step=None):
    torch.manual_seed(0)
    method = NoisyRegression()
    settings = TrainSettings(optimizer="adamw", lr=1e-2, weight_decay=0.01, schedule="warmup-cosine",
                             warmup_steps=2, seed=5, batch_size=8, checkpoint_every_steps=3,
                             max_grad_norm=1.0, **(length or {"max_steps": 13}))
    loader = batch_loader(Rows(torch.linspace(-3, 3, 40)), EpochShuffleSampler(40, 8, seed=5))
    callbacks = []
    if crash_after_step is not None or crash_before_step is not None:
        import lightning as L

        class Crash(L.Callback):
            def on_train_batch_start(self, trainer, module, batch, batch_idx):
                if trainer.global_step == crash_before_step:
                    raise RuntimeError("simulated crash")

            def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
                if trainer.global_step == crash_after_step:
                    raise RuntimeError("simulated crash")

        callbacks.append(Crash())
    train(method, loader, settings, run_dir, resume=resume, callbacks=callbacks, progress_bar=False)


@pytest.mark.parametrize("length", [{"max_steps": 13}, {"max_epochs": 3}], ids=["max_steps", "max_epochs"])
def test_a_run_stopped_mid_epoch_resumes_to_the_uninterrupted_state(tmp_path, length):
    """5 steps per epoch, checkpoints every 3: the crash at step 8 (epoch 1, batch 3) leaves the
    checkpoint of step 6 (epoch 1, batch 1); the resumed run must skip exactly one batch. A run
    bounded by epochs counts its steps from the data while the optimiser is configured, before
    Lightning restores the loop (the case that once restarted the epoch from its first batch)."""
    _fit(tmp_path / "whole", length=length)
    with pytest.raises(RuntimeError, match="simulated crash"):
        _fit(tmp_path / "broken", crash_after_step=8, length=length)
    assert load_checkpoint(tmp_path / "broken")["global_step"] == 6
    _fit(tmp_path / "broken", resume=True, length=length)
    assert_same_training_state(load_checkpoint(tmp_path / "whole"), load_checkpoint(tmp_path / "broken"))
    whole = (tmp_path / "whole" / "metrics.csv").read_text().splitlines()
    resumed = (tmp_path / "broken" / "metrics.csv").read_text().splitlines()
    assert resumed == whole  # the log of the killed steps was dropped and written again, once


@pytest.mark.parametrize("length", [
    {"max_steps": 13},
    {"max_epochs": 3}], ids=["max_steps", "max_epochs"])
def test_a_run_stopped_right_after_an_end_of_epoch_checkpoint_resumes_exactly(tmp_path, length):
    """The crash comes at the start of the first batch of epoch 1, right after epoch 0's checkpoint."""
    _fit(tmp_path / "whole", length=length)
    with pytest.raises(RuntimeError, match="simulated crash"):
        _fit(tmp_path / "broken", crash_before_step=5, length=length)
    assert load_checkpoint(tmp_path / "broken")["global_step"] == 5
    _fit(tmp_path / "broken", resume=True, length=length)
    assert_same_training_state(load_checkpoint(tmp_path / "whole"), load_checkpoint(tmp_path / "broken"))


def test_a_run_stopped_between_a_step_checkpoint_and_its_row_resumes_with_every_row(tmp_path, monkeypatch):
    """Lightning writes a step's row after the callbacks' on_train_batch_end, so the crash right
    after step 6's checkpoint (inside that hook) leaves metrics.csv without step 6's row; the
    resumed run starts at step 7. The checkpoint carries the row, and the resumed file must equal
    the uninterrupted run's, line for line (it lacked that line before the checkpoint carried it)."""
    from contrastkit.engine import callbacks

    _fit(tmp_path / "whole")
    save = callbacks.Checkpointing.on_train_batch_end

    def save_then_crash(self, trainer, module, outputs, batch, batch_idx):
        save(self, trainer, module, outputs, batch, batch_idx)
        if trainer.global_step == 6:
            raise RuntimeError("simulated crash")

    monkeypatch.setattr(callbacks.Checkpointing, "on_train_batch_end", save_then_crash)
    with pytest.raises(RuntimeError, match="simulated crash"):
        _fit(tmp_path / "broken")
    monkeypatch.setattr(callbacks.Checkpointing, "on_train_batch_end", save)
    assert load_checkpoint(tmp_path / "broken")["global_step"] == 6
    killed = (tmp_path / "broken" / "metrics.csv").read_text().splitlines()
    whole = (tmp_path / "whole" / "metrics.csv").read_text().splitlines()
    assert killed == whole[:6]  # the header and steps 1..5: step 6's row was never written
    _fit(tmp_path / "broken", resume=True)
    assert (tmp_path / "broken" / "metrics.csv").read_text().splitlines() == whole


def test_trimming_writes_back_the_checkpoints_last_row_only_when_missing(tmp_path):
    path = tmp_path / "metrics.csv"
    header = "epoch,step,train/loss,train/lr"
    path.write_text(f"{header}\n0,0,1.0,0.1\n0,1,0.9,0.1\n0,2,0.8,0.1\n")
    trim_after_step(path, 3, {"epoch": 0, "step": 2, "train/loss": 0.8, "train/lr": 0.1})  # present: kept once
    assert path.read_text().splitlines() == [header, "0,0,1.0,0.1", "0,1,0.9,0.1", "0,2,0.8,0.1"]
    path.write_text(f"{header}\n0,0,1.0,0.1\n0,1,0.9,0.1\n")
    trim_after_step(path, 3, {"epoch": 0, "step": 2, "train/loss": 0.75, "train/lr": 0.1, "train/extra": 2.0})
    assert path.read_text().splitlines() == [header + ",train/extra", "0,0,1.0,0.1,", "0,1,0.9,0.1,",
                                             "0,2,0.75,0.1,2.0"]


def test_a_new_column_rewrites_metrics_csv_whole_or_not_at_all(tmp_path, monkeypatch):
    """A new column makes the CSV writer rewrite the file; a crash in the middle of that rewrite must
    leave the rows already written (Lightning's own rewrite truncates the file first)."""
    import csv

    from contrastkit.engine.metrics_log import ResumableCSVLogger

    logger = ResumableCSVLogger(tmp_path, name="", version="")
    for step in range(3):
        logger.log_metrics({"train/loss": 1.0 - 0.1 * step}, step=step)
    logger.save()
    before = (tmp_path / "metrics.csv").read_text()
    assert len(before.splitlines()) == 4
    write_rows = csv.DictWriter.writerows

    def crash_midway(self, rows):
        write_rows(self, list(rows)[:1])
        raise RuntimeError("simulated crash")

    monkeypatch.setattr(csv.DictWriter, "writerows", crash_midway)
    logger.log_metrics({"train/loss": 0.6, "probe/knn": 0.5}, step=3)
    with pytest.raises(RuntimeError, match="simulated crash"):
        logger.save()
    assert (tmp_path / "metrics.csv").read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.csv"]  # no temporary file left
    monkeypatch.setattr(csv.DictWriter, "writerows", write_rows)
    logger.save()  # the row is still pending: written with the new column
    rows = list(csv.DictReader((tmp_path / "metrics.csv").read_text().splitlines()))
    assert [row["train/loss"] for row in rows] == ["1.0", "0.9", "0.8", "0.6"] and rows[-1]["probe/knn"] == "0.5"


def test_trimming_keeps_the_rows_the_checkpoint_holds(tmp_path):
    path = tmp_path / "metrics.csv"
    path.write_text("epoch,step,train/loss,probe/knn\n0,0,1.0,\n0,1,0.9,\n0,1,,0.5\n1,1,0.8,\n1,2,0.7,\n")
    trim_after_step(path, 1)  # one step done; the epoch-0 probe row (logged at step 1) stays
    assert path.read_text().splitlines() == ["epoch,step,train/loss,probe/knn", "0,0,1.0,", "0,1,,0.5"]


# Images through the command line: 320 digits, batches of 64 (5 steps an epoch), 3 epochs,
# a checkpoint every 2 steps, so most checkpoints fall inside an epoch.
IMAGE_OPTIONS = ["--data", "digits", "--limit", "320", "--holdout", "0", "--batch-size", "64", "--width", "0.25",
                 "--epochs", "3", "--no-report", "--no-baselines", "--seed", "4", "--method", "byol",
                 "--checkpoint-every-steps", "2"]


@pytest.mark.slow
def test_an_image_run_killed_between_step_checkpoints_resumes_exactly(tmp_path):
    assert_fit_resumes_exactly(tmp_path, IMAGE_OPTIONS, kill_after_step=6, seed=1)