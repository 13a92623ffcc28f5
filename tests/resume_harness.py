"""Kill a real training run with SIGKILL and resume it: the shared check of every modality.

``assert_kill_and_resume_is_exact(command, resume_command, run_dir, reference_dir)`` starts
``command`` (a training run writing ``run_dir``), waits until ``run_dir/checkpoints/last.ckpt``
holds at least ``kill_after_step`` optimiser steps, lets the run go on for a random moment (so the
kill lands mid-way through the next stretch: a training step, an epoch's end or a checkpoint write),
SIGKILLs it, then runs ``resume_command`` to the end. The final checkpoint must equal that of the
uninterrupted run in ``reference_dir``: every parameter and buffer (EMA targets, queues), every
optimiser state tensor, the scheduler and the step count, compared with ``torch.equal``; and where
the run writes a ``metrics.csv``, its training losses, step by step.

In-process crashes, for runs that resume within one test: ``crash_on_call(method, n)`` makes the
n-th call of ``method.training_loss`` raise, and ``crash_after_first_epoch_checkpoint(monkeypatch)``
makes the engine raise right after writing its first end-of-epoch checkpoint.
"""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}


CRASH = "simulated crash"


def crash_on_call(method, call: int | None) -> None:
    """Make ``method``'s ``call``-th (1-based) ``training_loss`` raise ``RuntimeError(CRASH)``; None: no crash."""
    if call is None:
        return
    calls, original = [0], method.training_loss

    def training_loss(batch):
        calls[0] += 1
        if calls[0] == call:
            raise RuntimeError(CRASH)
        return original(batch)

    method.training_loss = training_loss


def crash_after_first_epoch_checkpoint(monkeypatch):
    """Patch the engine's end-of-epoch checkpointing to raise ``RuntimeError(CRASH)`` right after the
    checkpoint is written; returns the original, for ``monkeypatch.setattr`` to restore before resuming."""
    from contrastkit.engine import callbacks

    save = callbacks.Checkpointing.on_train_epoch_end

    def save_then_crash(self, trainer, module):
        save(self, trainer, module)
        raise RuntimeError(CRASH)

    monkeypatch.setattr(callbacks.Checkpointing, "on_train_epoch_end", save_then_crash)
    return save


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "contrastkit.cli", *args]


def load_checkpoint(run_dir: Path) -> dict:
    return torch.load(Path(run_dir) / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)


def assert_same_tensors(expected, actual, where: str = "") -> None:
    """Recursively: tensors torch.equal, containers of the same shape, other values equal."""
    if isinstance(expected, torch.Tensor):
        assert isinstance(actual, torch.Tensor) and expected.dtype == actual.dtype, where
        assert torch.equal(expected, actual), f"{where}: tensors differ"
    elif isinstance(expected, dict):
        assert set(expected) == set(actual), f"{where}: keys {sorted(map(str, expected))} != {sorted(map(str, actual))}"
        for key in expected:
            assert_same_tensors(expected[key], actual[key], f"{where}.{key}")
    elif isinstance(expected, list | tuple):
        assert len(expected) == len(actual), f"{where}: lengths differ"
        for i, (e, a) in enumerate(zip(expected, actual, strict=True)):
            assert_same_tensors(e, a, f"{where}[{i}]")
    elif isinstance(expected, float) and np.isnan(expected):
        assert isinstance(actual, float) and np.isnan(actual), where
    else:
        assert expected == actual, f"{where}: {expected!r} != {actual!r}"


def assert_same_training_state(reference: dict, resumed: dict) -> None:
    """Weights and buffers, optimiser and scheduler states, and the step count of two checkpoints."""
    assert reference["global_step"] == resumed["global_step"], (reference["global_step"], resumed["global_step"])
    assert_same_tensors(reference["state_dict"], resumed["state_dict"], "state_dict")
    assert_same_tensors(reference["optimizer_states"], resumed["optimizer_states"], "optimizer_states")
    assert_same_tensors(reference["lr_schedulers"], resumed["lr_schedulers"], "lr_schedulers")


def wait_for_step(process: subprocess.Popen, checkpoint: Path, step: int, timeout: float = 300.0) -> None:
    """Until ``checkpoint`` holds ``step`` optimiser steps or more, or the process ends. Each write
    replaces the file (a new inode), so the file is read again only when it changed."""
    seen, deadline = None, time.monotonic() + timeout
    while process.poll() is None and time.monotonic() < deadline:
        try:
            identity = checkpoint.stat().st_ino
        except FileNotFoundError:
            identity = None
        if identity is not None and identity != seen:
            seen = identity
            try:
                if torch.load(checkpoint, map_location="cpu", weights_only=False)["global_step"] >= step:
                    return
            except Exception:  # noqa: BLE001 - replaced between stat and load; look again
                seen = None
        time.sleep(0.01)


def kill_then_resume(command: list[str], resume_command: list[str], run_dir: Path, kill_after_step: int,
                     seed: int = 0, max_extra_seconds: float = 0.5, env: dict | None = None) -> dict:
    """SIGKILL ``command`` after its checkpoint holds ``kill_after_step`` steps (plus a random
    0..``max_extra_seconds``), resume it to the end, and return the final checkpoint."""
    env = env or ENV
    rng = np.random.default_rng(seed)
    checkpoint = Path(run_dir) / "checkpoints" / "last.ckpt"
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    wait_for_step(process, checkpoint, kill_after_step)
    deadline = time.monotonic() + rng.uniform(0.0, max_extra_seconds)
    while process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    finished = process.poll() is not None
    process.send_signal(signal.SIGKILL)
    _, stderr = process.communicate()
    assert not finished or process.returncode == 0, stderr.decode()[-3000:]
    assert checkpoint.exists(), "the run never wrote a checkpoint: " + stderr.decode()[-3000:]
    killed_at = torch.load(checkpoint, map_location="cpu", weights_only=False)["global_step"]
    assert killed_at >= kill_after_step
    result = subprocess.run(resume_command, env=env, capture_output=True, check=False)
    assert result.returncode == 0, result.stderr.decode()[-3000:]
    return load_checkpoint(run_dir)


def assert_kill_and_resume_is_exact(command: list[str], resume_command: list[str], run_dir: Path,
                                    reference_dir: Path, kill_after_step: int, seed: int = 0,
                                    env: dict | None = None) -> None:
    """The whole check (module docstring); ``reference_dir`` holds the uninterrupted run."""
    resumed = kill_then_resume(command, resume_command, run_dir, kill_after_step, seed=seed, env=env)
    assert_same_training_state(load_checkpoint(reference_dir), resumed)
    if (Path(reference_dir) / "metrics.csv").is_file():
        assert training_losses(run_dir) == training_losses(reference_dir), "metrics.csv's losses differ"


def training_losses(run_dir: Path) -> list[tuple[int, float]]:
    """(step, train/loss) of every training row of ``run_dir/metrics.csv``, in file order: a resumed
    run must log each step once, as the uninterrupted run did (the killed steps' rows dropped and
    written again, the checkpoint's last row kept or written back)."""
    with open(Path(run_dir) / "metrics.csv", newline="") as handle:
        return [(int(float(row["step"])), float(row["train/loss"])) for row in csv.DictReader(handle)
                if row.get("train/loss")]


def assert_fit_resumes_exactly(tmp_path: Path, options: list[str], kill_after_step: int, seed: int = 0) -> Path:
    """``contrastkit fit *options`` run whole, then run again, killed after ``kill_after_step`` steps
    and resumed with ``fit --out RUN --resume``: the two final checkpoints must be equal. Returns the
    uninterrupted run's folder."""
    whole = Path(tmp_path) / "whole"
    subprocess.run(cli("fit", *options, "--out", str(whole)), check=True, env=ENV, capture_output=True)
    run_dir = Path(tmp_path) / "killed"
    assert_kill_and_resume_is_exact(cli("fit", *options, "--out", str(run_dir)),
                                    cli("fit", "--out", str(run_dir), "--resume"), run_dir, whole,
                                    kill_after_step=kill_after_step, seed=seed)
    return whole
