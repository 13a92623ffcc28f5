"""What the fine-tuning tests share. The second derivation they compare against: a frozen encoder's
features computed once, and a linear head trained on them by hand with the same loop (``fit_auxiliary``)
and seed that ``evaluation.fine_tune`` uses; fine-tuning at encoder rate 0 must give exactly this head's
figures. A tiny image run to fine-tune, and the rows of a run report's "Fine-tuning" section."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from contrastkit.core.seeding import seeded
from contrastkit.engine.auxiliary import fit_auxiliary


def hand_trained_head(frozen: torch.Tensor, labels: torch.Tensor, train: Sequence[int], dev: Sequence[int],
                      classes: int, *, epochs: int, lr: float, batch_size: int, seed: int = 0
                      ) -> tuple[list[float], list[torch.Tensor]]:
    """(dev top-1 after each epoch, the head's weight after each epoch) of a linear head on
    ``frozen[train]``, built and trained under ``seed``."""
    train, dev = torch.as_tensor(train), torch.as_tensor(dev)
    dev_top1: list[float] = []
    weights: list[torch.Tensor] = []

    def after_epoch(epoch: int) -> None:
        weights.append(head.weight.detach().clone())
        with torch.no_grad():
            dev_top1.append(float((head(frozen[dev]).argmax(1) == labels[dev]).float().mean()))

    with seeded(seed):
        head = nn.Linear(frozen.shape[1], classes)
        fit_auxiliary(head.parameters(),
                      lambda rows: nn.functional.cross_entropy(head(frozen[train[rows]]), labels[train[rows]]),
                      len(train), epochs=epochs, lr=lr, batch_size=batch_size, after_epoch=after_epoch)
    return dev_top1, weights


def digits_simclr_run(out, *, limit: int, max_steps: int, report: bool = False):
    """A tiny image run to fine-tune: SimCLR on ``limit`` sklearn digits (a fifth held out), a quarter-width
    small CNN, ``max_steps`` steps of 64 images, no baselines; ``out`` is its folder."""
    import contrastkit

    contrastkit.fit(method="simclr", modality="image", data="digits", limit=limit, holdout=0.2, backbone="small-cnn",
                    width=0.25, batch_size=64, max_steps=max_steps, no_report=not report, no_baselines=True,
                    out=str(out))
    return out


REPORTED = ("knn_top1", "linear_top1", "fine_tune_top1", "fine_tune_dev_top1")


def fine_tuning_report_rows(run_dir) -> list[list[str]]:
    """The cells of each row of the "Fine-tuning" section of the run's report.md (one row per setting)."""
    section = (run_dir / "report.md").read_text().split("## Fine-tuning", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| ") and line[2].isdigit()]
    return [[cell.strip() for cell in row.strip("|").split("|")] for row in rows]


def reported_figures(result: dict) -> list[str]:
    """What the report's row shows for a fine-tuning result: kNN, linear, fine-tuned and its dev figure, in %."""
    return [f"{100 * result[key]:.1f}" for key in REPORTED]
