"""SCARF and CLAN in two processes (``contrastkit fit --devices 2 --strategy ddp``) against one
process on the concatenated batch, and the corruption's independence of how a batch is split."""

from __future__ import annotations

import csv
import json
import subprocess

import numpy as np
import pytest
import torch

from contrastkit.modalities.tabular.estimators import CLAN, SCARF
from contrastkit.modalities.tabular.views import scarf_corrupt
from tests.resume_harness import ENV, cli, load_checkpoint

SMALL = ["--hidden-dims", "16", "--depth", "2", "--max-epochs", "2", "--max-steps", "4", "--seed", "3"]


def write_rows(folder, rows: int = 120):
    """Two numeric columns, a categorical one (a one-hot block) and a label, 1 row in 4 'odd'."""
    rng = np.random.default_rng(0)
    path = folder / "rows.csv"
    lines = ["a,b,colour,kind"]
    for i in range(rows):
        kind = "normal" if i % 4 else "odd"
        lines.append(f"{rng.normal():.4f},{rng.normal() + (3 if kind == 'odd' else 0):.4f},"
                     f"{['red', 'green', 'blue'][i % 3]},{kind}")
    path.write_text("\n".join(lines) + "\n")
    return path


def test_a_share_of_a_batch_is_corrupted_as_its_rows_of_the_whole_batch_are():
    reference = torch.randn(50, 7)
    x = torch.randn(12, 7)
    groups = np.array([0, 1, 1, 2, 3, 3, 3])
    whole, whole_mask = scarf_corrupt(x, reference, 0.5, groups, torch.Generator().manual_seed(5))
    for first, size in ((0, 4), (4, 4), (8, 4), (3, 6)):
        part, mask = scarf_corrupt(x[first:first + size], reference, 0.5, groups, torch.Generator().manual_seed(5),
                                   batch_rows=12, first_row=first)
        assert torch.equal(part, whole[first:first + size]) and torch.equal(mask, whole_mask[first:first + size])


def _run_pair(tmp_path, method: str, *options: str) -> None:
    env = {**ENV, "OMP_NUM_THREADS": "1"}

    def run(*extra: str, out: str) -> None:
        done = subprocess.run(cli("fit", "--method", method, *options, *SMALL, *extra, "--out", str(tmp_path / out)),
                              env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]

    run("--batch-size", "16", out="one")
    run("--batch-size", "8", "--devices", "2", "--strategy", "ddp", out="two")


def _assert_two_equal_one(tmp_path, estimator, **constructor) -> None:
    def losses(out: str) -> torch.Tensor:
        with open(tmp_path / out / "metrics.csv") as handle:
            return torch.tensor([float(r["train/loss"]) for r in csv.DictReader(handle) if r["train/loss"]])

    assert len(losses("one")) == 4
    torch.testing.assert_close(losses("two"), losses("one"), rtol=0, atol=1e-5)
    one, two = load_checkpoint(tmp_path / "one"), load_checkpoint(tmp_path / "two")
    assert one["global_step"] == two["global_step"] == 4
    one, two = one["state_dict"], two["state_dict"]
    assert one.keys() == two.keys()
    for key in one:
        torch.testing.assert_close(two[key], one[key], rtol=0, atol=1e-5, msg=key)
    # The weights moved: equal weights are not merely the initial ones (what --seed 3 builds).
    initial = estimator(one["method.encoder.0.weight"].shape[1], hidden_dims=16, depth=2, seed=3, **constructor)
    moved = max((one[f"method.{k}"] - v).abs().max().item() for k, v in initial._state_dict().items())
    assert moved > 1e-3
    summary = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["global_batch_size"] == 16 and summary["steps"] == 4
    assert (tmp_path / "two" / "embeddings.npy").is_file()


@pytest.mark.slow
@pytest.mark.distributed
def test_two_scarf_processes_equal_one_process_on_the_concatenated_batch(tmp_path):
    """SCARF (both views corrupted, NT-Xent with the negatives of both processes): 2 processes of 8
    rows log the losses and end with the weights of 1 process of 16 rows."""
    _run_pair(tmp_path, "scarf", "--data", str(write_rows(tmp_path)), "--output-dims", "8")
    _assert_two_equal_one(tmp_path, SCARF, output_dims=8)


@pytest.mark.slow
@pytest.mark.distributed
def test_two_clan_processes_equal_one_process_on_the_concatenated_batch(tmp_path):
    """CLAN (benign positives and corrupted negatives of both processes), trained on the benign
    rows of the training carve."""
    _run_pair(tmp_path, "clan", "--data", str(write_rows(tmp_path, rows=160)), "--label-column", "kind")
    _assert_two_equal_one(tmp_path, CLAN)
