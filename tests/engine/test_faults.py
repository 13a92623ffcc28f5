"""Runs that survive faults: SIGKILL at random moments (and in the middle of a checkpoint write) then
`--resume` ends with the weights of an uninterrupted run; a full disk while writing a checkpoint
leaves the previous one byte-identical and says so."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from contrastkit.modalities.image.config import FitConfig
from contrastkit.core.errors import TrainingError

# 320 digits, batches of 64: 5 steps an epoch, a checkpoint after each of the 6 epochs.
OPTIONS = ["--data", "digits", "--limit", "320", "--holdout", "0", "--batch-size", "64", "--width", "0.25",
           "--epochs", "6", "--no-report", "--seed", "11"]
ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "contrastkit.cli", *args]


def _state(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)["state_dict"]


def _assert_same_weights(expected: dict[str, torch.Tensor], actual: dict[str, torch.Tensor]) -> None:
    assert expected.keys() == actual.keys()
    for key, tensor in expected.items():
        assert torch.equal(tensor, actual[key]), key


def _temp_files(run_dir: Path) -> list[str]:
    return sorted(p.name for p in (run_dir / "checkpoints").glob("*.tmp"))


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> dict[str, torch.Tensor]:
    run_dir = tmp_path_factory.mktemp("faults") / "whole"
    subprocess.run(_cli("fit", *OPTIONS, "--out", str(run_dir)), check=True, env=ENV, capture_output=True)
    return _state(run_dir)


def _wait_for_epoch(process: subprocess.Popen, checkpoint: Path, epoch: int, timeout: float = 120.0) -> None:
    """Until ``checkpoint`` holds ``epoch`` (or a later one) or the process ends. Each write replaces
    the file (a new inode), so the file is read again only when it changed."""
    seen, deadline = None, time.monotonic() + timeout
    while process.poll() is None and time.monotonic() < deadline:
        try:
            identity = checkpoint.stat().st_ino
        except FileNotFoundError:
            identity = None
        if identity is not None and identity != seen:
            seen = identity
            if torch.load(checkpoint, map_location="cpu", weights_only=False)["epoch"] >= epoch:
                return
        time.sleep(0.01)


@pytest.mark.slow
def test_sigkill_at_random_moments_then_resume_equals_uninterrupted_run(tmp_path, uninterrupted):
    """Three kills at seeded random moments: each waits until the run has checkpointed a randomly
    drawn epoch (0-4, increasing) and then a random 0-0.8 s more, so the kill lands anywhere in the
    next epoch: in a training step, the end-of-epoch hooks or the checkpoint write. (Moments are
    tied to the run's progress, not to wall time, because start-up time varies with the machine's
    load.) After every kill the checkpoint must load and never go back in epochs; the last resume
    runs to the end and must give the uninterrupted run's weights exactly."""
    rng = np.random.default_rng(2024)
    target_epochs = sorted(rng.choice(5, size=3, replace=False).tolist())
    run_dir = tmp_path / "killed"
    checkpoint = run_dir / "checkpoints" / "last.ckpt"
    epochs_seen = []
    command = _cli("fit", *OPTIONS, "--out", str(run_dir))
    for target in target_epochs:
        process = subprocess.Popen(command, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        _wait_for_epoch(process, checkpoint, target)
        deadline = time.monotonic() + rng.uniform(0.0, 0.8)
        while process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        finished = process.poll() is not None
        process.send_signal(signal.SIGKILL)
        _, stderr = process.communicate()
        assert not finished or process.returncode == 0, stderr.decode()[-2000:]
        assert checkpoint.exists(), "the run never wrote its first checkpoint"
        epochs_seen.append(torch.load(checkpoint, map_location="cpu", weights_only=False)["epoch"])
        stale = _temp_files(run_dir)  # only a kill inside a checkpoint write leaves one; it must be harmless
        assert all(name.startswith(".last.ckpt.") for name in stale), stale
        if finished:
            break
        command = _cli("fit", "--out", str(run_dir), "--resume")
    print("kill after epochs", target_epochs, "-> checkpointed epochs", epochs_seen)
    assert epochs_seen == sorted(epochs_seen) and epochs_seen[0] >= target_epochs[0], epochs_seen
    if epochs_seen[-1] < 5:  # not yet finished: resume to the end
        subprocess.run(_cli("fit", "--out", str(run_dir), "--resume"), check=True, env=ENV, capture_output=True)
    _assert_same_weights(uninterrupted, _state(run_dir))


# Runs `contrastkit fit` in a process that SIGKILLs itself inside the checkpoint writer, after the
# bytes of the checkpoint of epoch KILL_AT_EPOCH went to the temporary file and before the rename:
# the worst moment for a non-atomic writer.
KILL_INSIDE_WRITE = """
import os, signal, sys
from contrastkit.engine import checkpoint
from contrastkit.cli import main

real_fsync, writes = os.fsync, []

def fsync_then_die(fd):
    real_fsync(fd)
    if os.readlink(f"/proc/self/fd/{fd}").endswith(".tmp"):
        writes.append(fd)
        if len(writes) == int(os.environ["KILL_AT_WRITE"]):
            os.kill(os.getpid(), signal.SIGKILL)

os.fsync = fsync_then_die
sys.exit(main(sys.argv[1:]))
"""


def _kill_inside_third_checkpoint_write(run_dir: Path) -> None:
    result = subprocess.run([sys.executable, "-c", KILL_INSIDE_WRITE, "fit", *OPTIONS, "--out", str(run_dir)],
                            env={**ENV, "KILL_AT_WRITE": "3"}, capture_output=True, check=False)
    assert result.returncode == -signal.SIGKILL, result.stderr.decode()[-2000:]


@pytest.mark.slow
def test_sigkill_inside_a_checkpoint_write_keeps_the_previous_checkpoint(tmp_path, uninterrupted):
    run_dir = tmp_path / "killed"
    _kill_inside_third_checkpoint_write(run_dir)
    assert len(_temp_files(run_dir)) == 1  # the third checkpoint, written but never renamed
    kept = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert kept["epoch"] == 1  # the second checkpoint (epochs count from 0), complete
    subprocess.run(_cli("fit", "--out", str(run_dir), "--resume"), check=True, env=ENV, capture_output=True)
    _assert_same_weights(uninterrupted, _state(run_dir))


@pytest.mark.slow
def test_resume_removes_the_temporary_file_of_a_killed_checkpoint_write(tmp_path):
    run_dir = tmp_path / "killed"
    _kill_inside_third_checkpoint_write(run_dir)
    subprocess.run(_cli("fit", "--out", str(run_dir), "--resume"), check=True, env=ENV, capture_output=True)
    assert _temp_files(run_dir) == []


# ---------------------------------------------------------------------------------------- disk full


def _writer_that_fills_the_disk(obj, handle, *args, **kwargs):
    handle.write(b"\x80\x02partial checkpoint")  # some bytes reach the disk before it is full
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_full_disk_while_writing_keeps_the_previous_checkpoint_byte_identical(tmp_path, monkeypatch):
    from contrastkit.engine import checkpoint as checkpoint_module
    from contrastkit.modalities.image.training.run import fit

    quick = {"data": "digits", "limit": 192, "holdout": 0.0, "batch_size": 64, "width": 0.25, "report": False,
             "probe_every": 0, "baselines": False, "seed": 1, "out": str(tmp_path / "run")}
    fit(FitConfig(**quick, epochs=1))
    path = tmp_path / "run" / "checkpoints" / "last.ckpt"
    before = path.read_bytes()

    monkeypatch.setattr(checkpoint_module.torch, "save", _writer_that_fills_the_disk)
    with pytest.raises(TrainingError) as error:
        fit(FitConfig(**quick, epochs=2, resume=True))
    message = str(error.value)
    assert "disk is full" in message and str(path) in message
    assert "previous checkpoint there is intact" in message and "--resume" in message
    assert path.read_bytes() == before
    assert _temp_files(tmp_path / "run") == []


def test_full_disk_on_the_first_checkpoint_says_there_was_none(tmp_path, monkeypatch):
    from contrastkit.engine import checkpoint as checkpoint_module

    monkeypatch.setattr(checkpoint_module.torch, "save", _writer_that_fills_the_disk)
    path = tmp_path / "checkpoints" / "last.ckpt"
    with pytest.raises(TrainingError, match="no earlier checkpoint existed"):
        checkpoint_module.atomic_torch_save({"weights": torch.zeros(3)}, path)
    assert not path.exists() and list(path.parent.iterdir()) == []
