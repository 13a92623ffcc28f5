"""``contrastkit graph``: pretrain a graph method over several seeds and evaluate it.

    contrastkit graph --method graphmae --data cora --seeds 20 --out runs/graphmae-cora
    contrastkit graph --out runs/graphmae-cora --resume        # continue it after a crash or a kill
    contrastkit graph --method scgc --data cora --out scgc-cora.json
    contrastkit graph --method graphcl --objective dcl --edges e.csv --features x.npy --labels y.txt

Each pretraining seed (0..S-1, from --first-seed) seeds the model, the masks/views and the batch
order; the method trains on the engine (:mod:`contrastkit.modalities.graph.train`) for the fixed epochs of
its defaults (the papers' settings; override with --epochs etc.) and the final model is
evaluated -- no epoch is chosen, nothing looks at a label during training.

``--out`` is a folder: one run folder per pretraining seed (``seed-S/``: config.yaml,
checkpoints/last.ckpt, metrics.csv, summary.json, embeddings.npy, report.md; the layout is in
:mod:`contrastkit.modalities.graph.run_folder`) and ``results.json``, the figures of every seed. An ``--out``
ending in ``.json`` is only that results file (as before run folders existed); the run folders
then go under ``runs/graph-<method>-<data>-<time>/``, as they do without ``--out``. ``--resume``
continues the folder's command: finished seeds are read back, an interrupted one continues from
its last checkpoint (bit for bit as if it had not stopped), the others start.

Evaluations (``--eval``, default both):

* ``probe``: node classification on the public split. ``--probe adam`` (default) is GraphMAE's
  probe (:func:`contrastkit.modalities.graph.evaluate.adam_probe_accuracy`: epoch chosen on the validation
  nodes), run with ``--probe-seeds`` P (default 20) seeds on each pretraining seed's fixed
  embeddings; ``--probe logreg`` is the deterministic scikit-learn probe with C chosen on the
  validation nodes. Reported: mean ± std over all S x P (pretraining seed, probe seed) pairs, and
  the two parts of the spread: over probe seeds (pooled within a pretraining seed) and over
  pretraining seeds (of the per-seed means).
* ``clustering``: k-means ACC / NMI / ARI, mean ± std over the pretraining seeds.

By default both run when the graph has labels and a split, clustering alone with labels only, and
none without labels (the embeddings are still trained and saved in each seed's folder).

``main(argv)`` returns the exit status (2 for a user error).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from contrastkit.engine.run_folder import is_first_process
from contrastkit.core.errors import ConfigError, DataError, closest_names
from contrastkit.modalities.graph.evaluate import (
    clustering_scores,
    mean_std,
    pooled_std,
    probe_over_seeds,
    split_parts,
    split_probe_accuracy,
)
from contrastkit.modalities.graph.run_folder import (
    RESULTS,
    check_seed_folders,
    finished_result,
    is_results_file,
    read_options,
    runs_folder,
    seed_folder,
    write_options,
    write_seed_outputs,
)
from contrastkit.modalities.graph.train import (
    GraphTrainConfig,
    embed_nodes,
    seed_everything,
    train_graph_method,
)
from contrastkit.modalities.graph.sources import (
    Graph,
    open_graph_source,
    read_edge_list_graph,
    row_normalize_features,
)

# Training defaults per method (papers' Cora settings; see each method's docstring).
TRAIN_DEFAULTS: dict[str, GraphTrainConfig] = {
    "graphmae": GraphTrainConfig(epochs=1500, lr=1e-3, weight_decay=2e-4, cosine_schedule=True),
    "scgc": GraphTrainConfig(epochs=200, lr=1e-3, weight_decay=0.0),
    "graphcl": GraphTrainConfig(epochs=200, lr=5e-4, weight_decay=1e-5),
    "graphclip": GraphTrainConfig(epochs=100, lr=1e-3, weight_decay=0.0),
}
# Node features as each method's reference code reads them: GraphMAE (PyG's NormalizeFeatures),
# GRACE and GraphCLIP row-normalise; SCGC's code (SDCN's loader) reads the raw values, and its
# autoencoder warm-up only learns on them (on row-normalised Cora it never beats predicting the
# feature means; see graphs/scgc.py).
FEATURE_NORMS = ("row", "none")
FEATURE_NORM_DEFAULTS = {"scgc": "none"}

# GraphMAE's probe on Cora (configs.yml of github.com/THUDM/GraphMAE: lr_f, weight_decay_f, max_epoch_f).
PROBE_DEFAULTS = {"lr": 0.01, "weight_decay": 1e-4, "epochs": 300}


def build_method(name: str, graph: Graph, args: argparse.Namespace) -> torch.nn.Module:
    """The method ``name`` for ``graph``, with the options the user gave (None = default), through
    its builder in the method registry."""
    from contrastkit.core.registry import METHODS
    from contrastkit.modalities.graph import plugin  # noqa: F401  (registers the graph methods)

    given = {k: v for k, v in vars(args).items() if v is not None and v is not False}
    return METHODS.load("graph", name)(graph, given)


def build_parser() -> argparse.ArgumentParser:
    # No abbreviations: '--epoch' must not silently mean '--epochs'.
    p = argparse.ArgumentParser(prog="contrastkit graph", description="Self-supervised learning on graphs.",
                                allow_abbrev=False)
    add_arguments(p)
    return p


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The graph options (``contrastkit fit --method graphmae --help``)."""
    p.add_argument("--method", choices=sorted(TRAIN_DEFAULTS), help="required, unless --resume reads it back")
    p.add_argument("--data", help="built-in graph (cora, citeseer) or a folder (edges.csv + features.csv/.npy "
                                  "[+ labels.txt/.csv/.npy, split.txt])")
    p.add_argument("--edges", help="edge-list CSV src,dst[,weight] (with --features)")
    p.add_argument("--features", help="node features, CSV or .npy, one row per node")
    p.add_argument("--labels", help="optional labels, one integer per line (-1 = unlabelled) or .npy")
    p.add_argument("--split", help="optional split, one word per line: train, val, test or - (needs --labels)")
    p.add_argument("--features-norm", choices=FEATURE_NORMS,
                   help="row: x_i / sum_j x_ij; none: the file's values (default: the method's reference "
                        "code: none for scgc, row for the others)")
    p.add_argument("--raw-features", action="store_true", help="same as --features-norm none")
    p.add_argument("--seeds", type=int, default=1, help="number of pretraining seeds (0..S-1)")
    p.add_argument("--first-seed", "--seed", dest="first_seed", type=int, default=0,
                   help="the first pretraining seed (default 0)")
    p.add_argument("--eval", choices=("probe", "clustering", "both", "none"),
                   help="default: both when the graph has a train/val/test split, clustering when it has "
                        "labels only, none without labels")
    p.add_argument("--probe", nargs="+", choices=("adam", "logreg"), default=["adam"],
                   help="adam: GraphMAE's probe (epoch chosen on validation nodes), over --probe-seeds; "
                        "logreg: scikit-learn, C chosen on validation nodes (deterministic)")
    p.add_argument("--probe-seeds", type=int, default=20, help="adam probe: seeds 0..P-1 per pretraining seed")
    p.add_argument("--probe-lr", type=float, default=PROBE_DEFAULTS["lr"])
    p.add_argument("--probe-weight-decay", type=float, default=PROBE_DEFAULTS["weight_decay"])
    p.add_argument("--probe-epochs", type=int, default=PROBE_DEFAULTS["epochs"])
    p.add_argument("--max-epochs", "--epochs", dest="epochs", type=int,
                   help="training epochs (default: the method's paper setting)")
    p.add_argument("--lr", type=float)
    p.add_argument("--weight-decay", type=float)
    p.add_argument("--batch-size", type=int, help="node batches instead of the full graph")
    p.add_argument("--sampler", choices=("random", "neighbourhood"))
    p.add_argument("--encoder", choices=("gat", "gcn", "gin"))
    p.add_argument("--hidden", type=int)
    p.add_argument("--temperature", type=float)
    p.add_argument("--objective", help="catalogue objective for graphcl (default infonce)")
    p.add_argument("--mask-rate", type=float)
    p.add_argument("--replace-rate", type=float)
    p.add_argument("--alpha", type=float, help="graphmae: SCE exponent")
    p.add_argument("--gat-init", choices=("graphmae", "pyg"),
                   help="graphmae: GAT weights drawn as the official code (default) or as torch-geometric does")
    p.add_argument("--order", type=int, help="scgc: r of A^r")
    p.add_argument("--no-influence", action="store_true", help="scgc: positives A^r only, not A + ... + A^r")
    p.add_argument("--clusters", type=int, help="scgc: K (default: number of classes)")
    p.add_argument("--embedding-dim", type=int, help="scgc: size of z")
    p.add_argument("--warmup-epochs", type=int, help="scgc: epochs before k-means places the centres (default 0)")
    p.add_argument("--pretrain-epochs", type=int,
                   help="scgc: reconstruction-autoencoder epochs before training (default 30, SDCN's; 0: none)")
    p.add_argument("--reconstruction-weight", type=float,
                   help="scgc: weight of the reconstruction loss during training (default 0: SCGC*; 1: SCGC)")
    p.add_argument("--text-embeddings", help="graphclip: (N, D) .npy of text-summary embeddings")
    p.add_argument("--max-steps", type=int, help="stop each seed's training after N optimiser steps (before "
                                                    "--epochs ends; a cosine schedule then spans N steps)")
    p.add_argument("--checkpoint-every-steps", type=int,
                   help="also checkpoint every N optimiser steps (a checkpoint is written every epoch anyway)")
    p.add_argument("--accelerator", default="cpu", help="Lightning's accelerator: cpu (default), gpu, auto")
    p.add_argument("--devices", type=int, default=1, help="processes (devices) that train together")
    p.add_argument("--strategy", default="auto", help="Lightning's strategy, e.g. ddp (with --devices N)")
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--out", help="FOLDER: a run folder per pretraining seed (seed-S/) and results.json; "
                                 "FILE.json: only the results (run folders then go under runs/)")
    p.add_argument("--resume", action="store_true", help="continue the command of --out FOLDER (its options are "
                                                         "read back; options given now override them)")
    p.add_argument("--no-report", action="store_true", help="no report.md per seed")
    p.add_argument("--quiet", action="store_true")


def load_graph(args: argparse.Namespace) -> Graph:
    if args.data:
        graph = open_graph_source(args.data)
    elif args.edges and args.features:
        graph = read_edge_list_graph(args.edges, args.features, args.labels, split=args.split)
    else:
        raise ConfigError("Give --data NAME_OR_FOLDER, or --edges FILE and --features FILE (and optionally --labels).")
    return graph if feature_norm(args) == "none" else graph.with_features(row_normalize_features(graph.x))


def feature_norm(args: argparse.Namespace) -> str:
    """``--features-norm``, ``none`` with ``--raw-features``, else the method's default."""
    return "none" if args.raw_features else (args.features_norm or FEATURE_NORM_DEFAULTS.get(args.method, "row"))


def default_evaluation(graph: Graph) -> str:
    """Probe and clustering with labels and a split; clustering with labels only; else none."""
    if graph.y is None:
        return "none"
    return "both" if graph.train_mask is not None else "clustering"


def evaluate_seed(embeddings: torch.Tensor, graph: Graph, args: argparse.Namespace, seed: int) -> dict[str, Any]:
    """The evaluations of one pretraining seed's embeddings (see the module docstring)."""
    result: dict[str, Any] = {}
    if args.eval in ("probe", "both"):
        if "adam" in args.probe:
            result["probe"] = probe_over_seeds(
                embeddings, graph, range(args.probe_seeds),
                lr=args.probe_lr, weight_decay=args.probe_weight_decay, epochs=args.probe_epochs,
            )
        if "logreg" in args.probe:
            result["probe_logreg"] = split_probe_accuracy(embeddings, graph)
    if args.eval in ("clustering", "both"):
        result["clustering"] = clustering_scores(embeddings, graph, seed)
    return result


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean ± std of every evaluation over the runs (see the module docstring for the probe's)."""
    summary: dict[str, Any] = {}
    if "probe" in runs[0]:
        per_seed = [r["probe"]["test"] for r in runs]
        summary["probe_test"] = mean_std([t for tests in per_seed for t in tests])
        summary["probe_test_std_over_probe_seeds"] = pooled_std(per_seed)
        summary["probe_test_std_over_pretraining_seeds"] = (
            float(np.std([np.mean(t) for t in per_seed])) if len(runs) > 1 else None
        )
        summary["probe_val"] = mean_std([v for r in runs for v in r["probe"]["val"]])
        summary["probe_final_epoch_test"] = mean_std([t for r in runs for t in r["probe"]["final_test"]])
    if "probe_logreg" in runs[0]:
        summary["probe_logreg_test"] = mean_std([r["probe_logreg"]["test"] for r in runs])
    for part in ("clustering", "head_clustering"):
        if part in runs[0]:
            for key in ("acc", "nmi", "ari"):
                summary[f"{part}_{key}"] = mean_std([r[part][key] for r in runs])
    return summary


def summary_lines(summary: dict[str, Any], seeds: int, probe_seeds: int) -> list[str]:
    def pct(pair: tuple[float, float]) -> str:
        return f"{100 * pair[0]:.1f} ± {100 * pair[1]:.1f}"

    lines = []
    if "probe_test" in summary:
        between = summary["probe_test_std_over_pretraining_seeds"]
        lines.append(
            f"probe test accuracy (adam, {seeds} pretraining x {probe_seeds} probe seeds): {pct(summary['probe_test'])}"
            f"  [std over probe seeds {100 * summary['probe_test_std_over_probe_seeds']:.1f}, over pretraining seeds "
            f"{'-' if between is None else f'{100 * between:.1f}'}; validation {pct(summary['probe_val'])}; "
            f"last probe epoch {pct(summary['probe_final_epoch_test'])}]"
        )
    if "probe_logreg_test" in summary:
        lines.append(f"probe test accuracy (logreg, {seeds} pretraining seeds): {pct(summary['probe_logreg_test'])}")
    for part, what in (("clustering", "clustering (k-means on the embeddings"),
                       ("head_clustering", "clustering (argmax of the clustering head")):
        if f"{part}_acc" in summary:
            lines.append("{}, {} pretraining seeds): ACC {}  NMI {}  ARI {}".format(
                what, seeds, *(pct(summary[f"{part}_{k}"]) for k in ("acc", "nmi", "ari"))))
    return lines


TRAIN_OPTIONS = ("epochs", "lr", "weight_decay", "batch_size", "sampler", "max_steps", "checkpoint_every_steps",
                 "accelerator", "devices", "strategy")


def saved_options(args: argparse.Namespace) -> dict[str, Any]:
    """The options a run folder keeps (what --resume reads back)."""
    return {k: v for k, v in vars(args).items()
            if v is not None and v is not False and k not in ("resume", "given_options")}


def run(args: argparse.Namespace) -> dict[str, Any]:
    # Lightning logs a line at every checkpoint it restores or writes (here every epoch): not shown.
    logging.getLogger("lightning.pytorch.trainer.connectors.checkpoint_connector").setLevel(logging.WARNING)
    if args.quiet:
        logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.seeds < 1 or args.probe_seeds < 1:
        raise ConfigError(f"--seeds and --probe-seeds must be >= 1, got {args.seeds} and {args.probe_seeds}.")
    graph = load_graph(args)
    args.eval = args.eval or default_evaluation(graph)
    if args.eval in ("probe", "both"):
        split_parts(graph)  # a graph without labels or split fails now, not after training
    if args.eval in ("clustering", "both") and graph.y is None:
        raise DataError(f"Clustering scores on '{graph.name}' need node labels; give a label file.")
    overrides = {k: getattr(args, k) for k in TRAIN_OPTIONS if getattr(args, k) is not None}
    train_config = replace(TRAIN_DEFAULTS[args.method], **overrides)  # checks the options before any training
    seeds = range(args.first_seed, args.first_seed + args.seeds)
    folder = runs_folder(args.out, args.resume, f"graph-{args.method}-{graph.name}")
    first = is_first_process()
    if first:
        check_seed_folders(folder, seeds, args.resume)
        write_options(folder, saved_options(args))
    log = None if args.quiet else print
    if log and first:
        log(f"run folders: {folder}/seed-S")
    runs = []
    for seed in seeds:
        run_dir = seed_folder(folder, seed)
        done = finished_result(run_dir) if args.resume else None
        if done is not None:
            runs.append(done)
            continue
        result = train_and_evaluate_seed(args, graph, replace(train_config, seed=seed), run_dir, log)
        if result is not None:
            runs.append(result)
    if not first:
        return {}  # a DDP child process: rank 0 evaluates and writes
    summary = summarize(runs)
    report = {"method": args.method, "data": graph.name, "features_norm": feature_norm(args), "seeds": args.seeds,
              "probe_seeds": args.probe_seeds, "train": asdict(train_config),
              "options": {k: v for k, v in vars(args).items() if v not in (None, False)},
              "run_folder": str(folder), "summary": summary, "runs": runs}
    for line in summary_lines(summary, args.seeds, args.probe_seeds):
        print(line)
    (folder / RESULTS).write_text(json.dumps(report, indent=2))
    if args.out and is_results_file(args.out):
        Path(args.out).write_text(json.dumps(report, indent=2))
    return report


def train_and_evaluate_seed(args: argparse.Namespace, graph: Graph, config: GraphTrainConfig, run_dir: Path,
                            log) -> dict[str, Any] | None:
    """Pretrain one seed into ``run_dir`` (resuming it with --resume), evaluate it and write its
    outputs; None on DDP processes other than rank 0."""
    seed_everything(config.seed)  # the initialisation; the engine seeds every step
    method = build_method(args.method, graph, args)
    description = {"method": args.method, "data": graph.name, "features_norm": feature_norm(args),
                   "seed": config.seed, "options": saved_options(args)}
    training = train_graph_method(method, graph, config, log, run_dir=run_dir, resume=args.resume,
                                  description=description, progress_bar=False if args.quiet else None)
    if not training.is_global_zero:
        return None
    history = training.history
    result: dict[str, Any] = {
        "method": args.method, "data": graph.name, "seed": config.seed, "run_dir": str(run_dir),
        "epochs_trained": len(history), "steps": training.steps, "world_size": training.world_size,
        "final_loss": history[-1]["loss"] if history else None, "train_seconds": training.seconds,
        "seconds_per_epoch": training.seconds / len(history) if history else None,
    }
    embeddings = embed_nodes(method, graph)
    result.update(evaluate_seed(embeddings, graph, args, config.seed))
    if args.eval in ("clustering", "both") and hasattr(method, "predict_clusters") \
            and bool(getattr(method, "centres_ready", True)):
        # A method with a clustering head (SCGC's DEC q) is also scored by argmax_j q_ij,
        # the clustering its reference code reports.
        from contrastkit.modalities.graph.scgc import head_clustering_scores

        result["head_clustering"] = head_clustering_scores(method, graph)
    lines = summary_lines(summarize([result]), 1, args.probe_seeds)
    write_seed_outputs(run_dir, result, embeddings, graph.y, lines, report=not args.no_report)
    if log:
        log(f"seed {config.seed}: " + "; ".join(lines))
    return result


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The options; an unknown one is a ConfigError naming the closest valid ones. With --resume,
    the options saved in --out FOLDER are the defaults of those not given now."""
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        valid = [o for action in parser._actions for o in action.option_strings if o.startswith("--")]
        named = []
        for option in unknown:
            close = closest_names(option.split("=")[0], valid) if option.startswith("-") else []
            named.append(f"'{option}'" + (f" (did you mean {', '.join(close)}?)" if close else ""))
        raise ConfigError(f"Unknown option {', '.join(named)} for 'contrastkit graph'. "
                          f"Run 'contrastkit graph --help' for the valid options.")
    if args.resume:
        if not args.out or is_results_file(args.out):
            raise ConfigError("--resume needs --out FOLDER: the folder of the run to continue (not a .json file).")
        parser.set_defaults(**{k: v for k, v in read_options(Path(args.out)).items() if k != "out"})
        args = parser.parse_args(argv)
    if args.method is None:
        raise ConfigError(f"--method is required: one of {', '.join(sorted(TRAIN_DEFAULTS))}.")
    return args


NEEDS_GIVEN_OPTIONS = True  # command() tells given options from defaults


def command(args: argparse.Namespace) -> int:
    """``contrastkit fit`` for a graph method: with --resume the options saved in --out are the
    values of those not given now (``args.given_options``: the destinations given)."""
    given = set(vars(args).pop("given_options", ()))
    if args.resume:
        if not args.out or is_results_file(args.out):
            raise ConfigError("--resume needs --out FOLDER: the folder of the run to continue (not a .json file).")
        for name, value in read_options(Path(args.out)).items():
            if name != "out" and name not in given:
                setattr(args, name, value)
    if args.method is None:
        raise ConfigError(f"--method is required: one of {', '.join(sorted(TRAIN_DEFAULTS))}.")
    run(args)
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m contrastkit.modalities.graph.cli ARGS`` = ``contrastkit graph ARGS`` (the same
    checks of the options as ``contrastkit fit``)."""
    from contrastkit.cli import main as contrastkit_main

    return contrastkit_main(["graph", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
