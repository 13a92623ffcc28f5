"""The run folders of ``contrastkit graph``: one per pretraining seed, under the command's folder.

::

    OUT/
      config.yaml              the command's options (what ``--resume`` reads back)
      results.json             every seed's figures and their summary (the ``--out FILE.json`` report)
      seed-S/
        config.yaml            the seed's resolved configuration (options, seed, training settings)
        checkpoints/last.ckpt  every epoch and every --checkpoint-every-steps steps (engine)
        metrics.csv            train/loss and the method's terms per step
        summary.json           the seed's figures (probe, clustering, loss, seconds)
        embeddings.npy         the trained encoder's node embeddings (eval mode), labels.npy beside them
        report.md + plots/     loss curve, embedding map and spectrum

The trained encoder is reloadable: :func:`load_trained` rebuilds the method from config.yaml and
the graph, and loads the checkpoint's weights.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from contrastkit.engine.run_folder import CHECKPOINT, is_first_process
from contrastkit.core.errors import ConfigError
from contrastkit.core.safe_loading import read_torch_file, trust_alternative
from contrastkit.evaluation.diagnostics import effective_rank_from_singular_values, singular_values
from contrastkit.report import plots
from contrastkit.report.run_files import read_metrics_csv

RUNS_ENV = "CONTRASTKIT_GRAPH_RUNS"  # the command's folder, inherited by DDP child processes
RESULTS = "results.json"


def runs_folder(out: str | None, resume: bool, default_name: str) -> Path:
    """The command's folder: ``out`` when it is a folder, else ``runs/<default_name>-<time>``
    (``out`` ending in .json names only the results file). DDP child processes use their parent's."""
    inherited = os.environ.get(RUNS_ENV)
    if inherited and not is_first_process():
        return Path(inherited)
    if out is not None and not is_results_file(out):
        folder = Path(out)
    elif resume:
        raise ConfigError("--resume needs --out FOLDER: the folder of the run to continue (not a .json file).")
    else:
        name = f"{default_name}-{time.strftime('%Y%m%d-%H%M%S')}"
        folder, n = Path("runs") / name, 2
        while folder.exists():  # two commands started in the same second get two folders
            folder, n = Path("runs") / f"{name}-{n}", n + 1
    os.environ[RUNS_ENV] = str(folder.resolve())
    return folder


def is_results_file(out: str) -> bool:
    return str(out).lower().endswith(".json")


def seed_folder(folder: Path, seed: int) -> Path:
    return folder / f"seed-{seed}"


def check_seed_folders(folder: Path, seeds: range, resume: bool) -> None:
    """Before any training: without ``--resume`` no seed folder may hold a run; with it, some must."""
    held = [seed_folder(folder, s) for s in seeds
            if (seed_folder(folder, s) / CHECKPOINT).exists() or (seed_folder(folder, s) / "summary.json").exists()]
    if not resume and held:
        raise ConfigError(
            f"'{held[0]}' already holds a run; nothing in it is overwritten. Pass --resume (with --out "
            f"{folder}) to continue the command, or choose another --out."
        )
    if resume and not held and not any((seed_folder(folder, s) / "config.yaml").exists() for s in seeds):
        raise ConfigError(
            f"--resume: '{folder}' holds no run of these seeds ({seeds.start}..{seeds.stop - 1}); start the "
            f"command without --resume."
        )


def read_options(folder: Path) -> dict[str, Any]:
    """The options saved in ``folder/config.yaml`` by an earlier run of the command."""
    path = folder / "config.yaml"
    if not path.is_file():
        raise ConfigError(f"--resume needs --out pointing to the folder of a graph run; '{path}' does not exist.")
    return yaml.safe_load(path.read_text())["options"]


def write_options(folder: Path, options: dict[str, Any]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.yaml").write_text(yaml.safe_dump({"command": "graph", "options": options}, sort_keys=False))


def finished_result(run_dir: Path) -> dict[str, Any] | None:
    """A finished seed's figures (its summary.json), or None."""
    path = run_dir / "summary.json"
    return json.loads(path.read_text()) if path.is_file() else None


def write_seed_outputs(run_dir: Path, result: dict[str, Any], embeddings: torch.Tensor, labels: torch.Tensor | None,
                       lines: list[str], report: bool) -> None:
    """summary.json, embeddings.npy (+ labels.npy) and, with ``report``, report.md of one seed."""
    np.save(run_dir / "embeddings.npy", embeddings.numpy())
    if labels is not None:
        np.save(run_dir / "labels.npy", labels.cpu().numpy())
    (run_dir / "summary.json").write_text(json.dumps(result, indent=2))
    if report:
        write_graph_report(run_dir, result, lines)


def write_graph_report(run_dir: Path, result: dict[str, Any], lines: list[str]) -> Path:
    """report.md: the evaluation lines, the loss curve and the embeddings' PCA map and spectrum."""
    plots_dir = run_dir / "plots"
    sections = [f"# Run report: {result['method']} on {result['data']}, pretraining seed {result['seed']}",
                "## Evaluation", "\n".join(f"- {line}" for line in lines) or "_No evaluation (no labels)._",
                f"Training: {result['epochs_trained']} epochs, {result['steps']} optimiser steps, "
                f"{result['train_seconds']:.1f} s; final loss {result['final_loss']:.4f}."]
    steps, losses = read_metrics_csv(run_dir / "metrics.csv").series("train/loss", x="step")
    if len(losses):
        path = plots.plot_loss_curve(steps, losses, plots_dir / "loss_curve.png")
        sections += ["## Training loss", f"![Training loss]({path.relative_to(run_dir).as_posix()})"]
    embeddings = np.load(run_dir / "embeddings.npy").astype(np.float32)
    labels = np.load(run_dir / "labels.npy") if (run_dir / "labels.npy").is_file() else None
    sigma = singular_values(embeddings)
    spectrum = plots.plot_singular_values(sigma, plots_dir / "singular_values.png",
                                          effective_rank_from_singular_values(sigma))
    pca = plots.plot_embedding_map(plots.pca_2d(embeddings), labels, plots_dir / "embedding_pca.png",
                                   f"PCA of the {len(embeddings)} node embeddings")
    sections += ["## Embeddings", f"![PCA map]({pca.relative_to(run_dir).as_posix()})",
                 f"![Singular value spectrum]({spectrum.relative_to(run_dir).as_posix()})"]
    path = run_dir / "report.md"
    path.write_text("\n\n".join(sections) + "\n")
    return path


def load_trained(run_dir: str | Path, *, trust_checkpoint: bool = False) -> tuple[torch.nn.Module, Any]:
    """(method, graph) of a seed's run folder: the method rebuilt from its config.yaml on the graph
    the run used, with the weights of checkpoints/last.ckpt, in eval mode. The checkpoint is read
    without running code; ``trust_checkpoint=True`` reads one that carries code, and so runs it."""
    from contrastkit.modalities.graph.cli import build_method, load_graph, parse_args

    run_dir = Path(run_dir)
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    state = read_torch_file(run_dir / CHECKPOINT, trust=trust_checkpoint,
                            alternative=trust_alternative(command_line=False, share_hint=False))["state_dict"]
    args = parse_args(options_to_argv(config["options"]))
    graph = load_graph(args)
    method = build_method(args.method, graph, args)
    method.load_state_dict({k.removeprefix("method."): v for k, v in state.items()})
    return method.eval(), graph


def options_to_argv(options: dict[str, Any]) -> list[str]:
    """The command line that gives ``options`` (a saved ``vars(args)``, without unset ones)."""
    argv: list[str] = []
    for key, value in options.items():
        if value is None or value is False:
            continue
        flag = "--" + key.replace("_", "-")
        if value is True:
            argv.append(flag)
        elif isinstance(value, list):
            argv += [flag, *map(str, value)]
        else:
            argv += [flag, str(value)]
    return argv
