"""What a ``contrastkit pairs`` run leaves in its run directory beside the engine's files, and how
to load the trained towers back.

::

    config.yaml            the command's options (what --resume and load_pairs_run read back)
    checkpoints/last.ckpt  the engine's checkpoint (weights, momentum branch, queues, optimiser)
    metrics.csv            train/loss and its terms per step
    summary.json           retrieval metrics, run facts, options
    report.md + plots/     the retrieval table and the loss curve
    tower_a/ [tower_b/]    the trained text encoders, Hugging Face layout (tower_b only when not shared)
    heads.pt               the projection heads and the cross objective's state (CLIP's logit scale)

``load_pairs_run(run_dir)`` rebuilds the online towers from these files, ready to embed.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch
import yaml

from contrastkit.core.errors import DataError
from contrastkit.core.safe_loading import read_torch_file
from contrastkit.modalities.pairs.towers import TextInput
from contrastkit.modalities.pairs.two_tower import TwoTower, build_two_tower
from contrastkit.report.run_files import METRICS_FILE, read_metrics_csv

CONFIG_FILE = "config.yaml"
HEADS_FILE = "heads.pt"
REPORT_FILE = "report.md"


def save_towers(model: TwoTower, run_dir: Path) -> None:
    """The online towers: ``tower_a/`` (and ``tower_b/`` when not shared) and ``heads.pt``."""
    model.encoder_a.save(run_dir / "tower_a")
    if not model.shared_encoder:
        model.encoder_b.save(run_dir / "tower_b")
    torch.save({"head_a": model.head_a.state_dict(), "head_b": model.head_b.state_dict(),
                "cross": model.cross.state_dict()}, run_dir / HEADS_FILE)


def load_pairs_run(run_dir: str | os.PathLike) -> tuple[TwoTower, TextInput, TextInput]:
    """The trained two-tower model of a ``contrastkit pairs`` run and its tower inputs, in eval mode.

    Only the online towers come back (no momentum branch, queues or in-modality losses: they
    matter for training, not for embedding). Embed with
    :func:`~contrastkit.modalities.pairs.train.encode_side` or ``model.embed(input_a.collate(texts), "a")``.
    """
    from contrastkit.modalities.pairs.cli import two_tower_options
    from contrastkit.modalities.text.encoders import TextEncoder

    run_dir = Path(run_dir)
    if not (run_dir / CONFIG_FILE).is_file() or not (run_dir / HEADS_FILE).is_file():
        raise DataError(f"'{run_dir}' is not a finished pairs run: it needs {CONFIG_FILE}, {HEADS_FILE} and "
                        f"tower_a/ (written when 'contrastkit pairs' ends).")
    heads = read_torch_file(run_dir / HEADS_FILE, alternative=(
        f"'contrastkit pairs' writes only tensors in {HEADS_FILE}, so this file was not written by it or was altered."))
    saved = argparse.Namespace(**yaml.safe_load((run_dir / CONFIG_FILE).read_text()))
    saved.momentum, saved.queue_size = None, 0
    saved.in_modality_weight_first = saved.in_modality_weight_second = 0.0
    encoder_a = TextEncoder.from_folder(run_dir / "tower_a")
    encoder_b = TextEncoder.from_folder(run_dir / "tower_b") if (run_dir / "tower_b").is_dir() else None
    model = build_two_tower(encoder_a, encoder_b, two_tower_options(saved))
    model.head_a.load_state_dict(heads["head_a"])
    model.head_b.load_state_dict(heads["head_b"])
    model.cross.load_state_dict(heads["cross"])
    model.eval()
    input_a = TextInput(encoder_a.tokenizer, saved.max_length_first)
    input_b = TextInput((encoder_b or encoder_a).tokenizer, saved.max_length_second)
    return model, input_a, input_b


def write_report(run_dir: Path, summary: dict) -> Path:
    """``report.md``: the retrieval table, the run's facts and the loss curve (plots/loss_curve.png)."""
    from contrastkit.report import plots
    from contrastkit.report.html import write_html_report

    lines = [f"# Run report: pairs on {summary['data']}", ""]
    retrieval = summary.get("retrieval")
    if retrieval:
        first, second = summary["sides"]
        lines += [f"## Retrieval ({summary.get('eval_split') or 'evaluation file'})", "",
                  "| direction | MRR | R@1 | R@5 | R@10 | queries / corpus |", "|---|---|---|---|---|---|"]
        for key, label in (("first_to_second", f"{first} -> {second}"), ("second_to_first", f"{second} -> {first}")):
            m = retrieval[key]
            lines.append(f"| {label} | {m['mrr']:.3f} | {m['recall@1']:.3f} | {m['recall@5']:.3f} | "
                         f"{m['recall@10']:.3f} | {m['queries']} / {m['corpus']} |")
    else:
        lines.append("_No evaluation pairs (--eval-split or --eval-data): nothing was scored._")
    lines += ["", "## Run", "", "| fact | value |", "|---|---|"]
    lines += [f"| {key} | {value} |" for key, value in summary.items()
              if isinstance(value, (str, int, float, bool)) and key != "data"]
    lines += ["", "## Training loss", ""]
    steps, losses = ([], [])
    if (run_dir / METRICS_FILE).is_file():
        steps, losses = read_metrics_csv(run_dir / METRICS_FILE).series("train/loss", x="step")
    if len(losses):
        path = plots.plot_loss_curve(steps, losses, run_dir / "plots" / "loss_curve.png", "train/loss")
        lines.append(f"![Training loss]({path.relative_to(run_dir).as_posix()})")
    else:
        lines.append("_No training steps: no loss curve._")
    report = run_dir / REPORT_FILE
    report.write_text("\n".join(lines) + "\n")
    write_html_report(run_dir)  # report.html: the run's facts and loss curve (a pairs run keeps no embeddings)
    return report
