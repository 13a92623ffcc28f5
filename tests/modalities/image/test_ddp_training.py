"""Data-parallel training from the command line: 2 processes (gloo, CPU) with a per-process batch of
b must train exactly like one process with a batch of 2b.

What makes the two equal, and what the test therefore pins down:
- the sampler gives rank r the slice [r*b, (r+1)*b) of each single-process global batch;
- the objective gathers embeddings across processes with gradient, and DDP averages gradients;
- BatchNorm statistics are synchronised (--sync-batchnorm), as SimCLR's global BN;
- the views are made deterministic (no random crop, flip or colour ops) because each process draws
  its own augmentation parameters: randomness is per process by design, not shared.
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys

import pytest
import torch
import yaml

DETERMINISTIC_VIEWS = {"random_crop": False, "hflip_p": 0.0, "jitter_p": 0.0, "grayscale_p": 0.0}


def _losses(run_dir) -> list[float]:
    with open(run_dir / "metrics.csv") as handle:
        return [float(row["train/loss"]) for row in csv.DictReader(handle) if row.get("train/loss")]


def _weights(run_dir) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)["state_dict"]


@pytest.mark.slow
@pytest.mark.distributed
def test_two_processes_equal_one_process_on_the_concatenated_batch(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({"extra": {"views": DETERMINISTIC_VIEWS}}))
    common = ["fit", "--config", str(config), "--data", "digits", "--limit", "256", "--holdout", "0",
              "--width", "0.25", "--epochs", "2", "--no-report", "--sync-batchnorm", "--seed", "5",
              "--accelerator", "cpu",
              # One memory format for both runs: channels-last (the 1-process default) changes the
              # convolution kernels and so the float rounding, which 8 steps amplify to ~7e-4 in the weights.
              "--no-channels-last"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}

    def fit(*extra: str, out: str) -> None:
        done = subprocess.run([sys.executable, "-m", "contrastkit.cli", *common, *extra, "--out",
                               str(tmp_path / out)], env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]

    fit("--devices", "1", "--batch-size", "64", out="single")
    fit("--devices", "2", "--strategy", "ddp", "--batch-size", "32", out="ddp")

    single, ddp = tmp_path / "single", tmp_path / "ddp"
    assert len(_losses(single)) == len(_losses(ddp)) == 8  # 256 // 64 steps x 2 epochs
    torch.testing.assert_close(torch.tensor(_losses(ddp)), torch.tensor(_losses(single)), rtol=1e-4, atol=1e-5)
    a, b = _weights(single), _weights(ddp)
    assert a.keys() == b.keys()
    for key in a:
        if a[key].is_floating_point():
            torch.testing.assert_close(b[key], a[key], rtol=1e-4, atol=1e-5, msg=key)
        else:
            assert torch.equal(a[key], b[key]), key
    summary = yaml.safe_load((ddp / "config.yaml").read_text())
    assert summary["devices"] == 2 and summary["batch_size"] == 32
