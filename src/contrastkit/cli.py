"""The `contrastkit` command line: fit, embed, evaluate.

Errors a user can cause (``ContrastkitError``) are printed as one paragraph, without a traceback,
and the exit status is 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import textwrap
import warnings
from pathlib import Path

from contrastkit.config import FitConfig, from_mapping, load_yaml, to_yaml
from contrastkit.errors import ConfigError, ContrastkitError, DataError, closest_names

# `--option`: (type, help). Defaults come from FitConfig; argparse leaves absent options out
# (SUPPRESS), so that we know which options the user actually gave.
FIT_OPTIONS = {
    "method": (str, "self-supervised method (simclr, ...)"),
    "objective": (str, "objective of the catalogue, replacing the method's own (e.g. dcl, hcl)"),
    "data": (str, "a path (image folder, IDX files, .npz) or a built-in name: digits, mnist-test, cifar10-test"),
    "image-size": (int, "resize images to this side length"),
    "holdout": (float, "share of labelled samples held out of pretraining for evaluation"),
    "limit": (int, "use only the first N samples"),
    "backbone": (str, "auto, small-cnn, resnet18, resnet50, or timm:NAME when timm is installed"),
    "width": (float, "channel multiplier of the backbone"),
    "projection-dim": (int, "output size of the projection head"),
    "temperature": (float, "temperature of the contrastive objective"),
    "epochs": (int, "training epochs"),
    "batch-size": (int, "batch size per process"),
    "optimizer": (str, "sgd, lars or adamw"),
    "lr": (float, "base learning rate for a global batch of 256 (scaled linearly, except adamw)"),
    "weight-decay": (float, "weight decay"),
    "warmup-epochs": (float, "epochs of linear warm-up before the cosine decay"),
    "nan-policy": (str, "on a NaN/Inf loss: stop (default) or skip the batch"),
    "accelerator": (str, "cpu, gpu or auto"),
    "devices": (int, "processes (devices) per node"),
    "strategy": (str, "Lightning strategy: auto, ddp, ddp_spawn, ..."),
    "num-nodes": (int, "number of nodes"),
    "precision": (str, "32-true, bf16-mixed, 16-mixed, ..."),
    "num-workers": (int, "DataLoader worker processes"),
    "seed": (int, "random seed"),
    "out": (str, "run directory (default runs/<method>-<data>-<time>)"),
}
FLAGS = {
    "resume": "continue the run in --out from its last checkpoint",
    "deterministic": "use deterministic algorithms (slower)",
    "channels-last": "channels-last memory format for the images",
    "sync-batchnorm": "BatchNorm statistics over the global batch under DDP",
    "tsne": "t-SNE (instead of PCA) for the report's 2-D map",
}


class Parser(argparse.ArgumentParser):
    """argparse whose errors are ConfigErrors that name the closest valid option. Abbreviations are
    off: `--epoch` must not silently mean `--epochs`."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        raise ConfigError(f"{self.prog}: {message}. Run '{self.prog} --help' for the options.")


def unknown_options_message(command: str, unknown: list[str], parser: argparse.ArgumentParser) -> str:
    valid = [a for action in parser._actions for a in action.option_strings if a.startswith("--")]
    parts = []
    for option in unknown:
        close = closest_names(option.split("=")[0], valid) if option.startswith("-") else []
        parts.append(f"'{option}'" + (f" (did you mean {', '.join(close)}?)" if close else ""))
    return (f"Unknown option {', '.join(parts)} for 'contrastkit {command}'. "
            f"Run 'contrastkit {command} --help' for the valid options.")


def build_parser() -> Parser:
    parser = Parser(prog="contrastkit", description="Self-supervised representation learning. "
                    "Graph methods: 'contrastkit graph --help'.")
    commands = parser.add_subparsers(dest="command", parser_class=Parser)
    parser.commands = commands.choices  # name -> subparser, for messages about its options

    fit = commands.add_parser("fit", help="pretrain an encoder and write a run directory",
                              argument_default=argparse.SUPPRESS)
    fit.add_argument("--config", help="YAML file of options (command-line options win)")
    fit.add_argument("--print-config", action="store_true", help="print the resolved configuration and exit")
    for name, (kind, help_text) in FIT_OPTIONS.items():
        fit.add_argument(f"--{name}", type=kind, help=f"{help_text} (default: {_default(name)})")
    for name, help_text in FLAGS.items():
        fit.add_argument(f"--{name}", action="store_true", help=help_text)
    fit.add_argument("--no-report", dest="report", action="store_false", help="skip the report")
    fit.add_argument("--no-baselines", dest="baselines", action="store_false",
                     help="skip scoring the untrained encoder and raw pixels (faster sweeps)")

    embed = commands.add_parser("embed", help="embed data with a trained checkpoint")
    embed.add_argument("--checkpoint", required=True, help="a checkpoint written by fit (checkpoints/last.ckpt)")
    embed.add_argument("--data", required=True, help="data to embed (same forms as fit --data)")
    embed.add_argument("--out", required=True, help="output .npy file (labels go beside it as *.labels.npy)")
    embed.add_argument("--batch-size", type=int, default=512)

    evaluate = commands.add_parser("evaluate", help="kNN and linear probes of embeddings with labels")
    evaluate.add_argument("--embeddings", required=True, help=".npy file of shape (N, d)")
    evaluate.add_argument("--labels", required=True, help=".npy file of N integer labels")
    evaluate.add_argument("--test-fraction", type=float, default=0.2)
    evaluate.add_argument("--label-fractions", default="0.01,0.1,1.0",
                          help="comma-separated shares of training labels for the linear probe")
    evaluate.add_argument("--k", type=int, default=200)
    evaluate.add_argument("--seed", type=int, default=0)
    shard = commands.add_parser("shard", help="convert an image set into memory-mapped shards for streaming")
    shard.add_argument("--data", required=True, help="images to convert (same forms as fit --data)")
    shard.add_argument("--out", required=True, help="output folder (index.json, shard-*.npy, labels.npy)")
    shard.add_argument("--shard-size", type=int, default=10_000, help="images per shard file (default 10000)")
    shard.add_argument("--image-size", type=int, default=None, help="resize images to this side length")
    shard.add_argument("--channels", type=int, default=None, help="1 or 3 to force grayscale or RGB")

    from contrastkit.timeseries_cli import add_arguments as add_timeseries_arguments

    add_timeseries_arguments(commands.add_parser(
        "timeseries", help="TS2Vec on a UCR/UEA set, scored with the SVM protocol and the 1-NN floor"))

    export = commands.add_parser("export", help="save a trained encoder as safetensors + config.json")
    export.add_argument("--checkpoint", required=True, help="a checkpoint written by fit (checkpoints/last.ckpt)")
    export.add_argument("--out", required=True, help="output folder (model.safetensors, config.json)")
    export.add_argument("--overwrite", action="store_true", help="replace an earlier export in --out")
    return parser


def _default(option: str):
    return getattr(FitConfig(), option.replace("-", "_"))


def resolve_fit_config(args: argparse.Namespace) -> FitConfig:
    """defaults < --config file < the run's saved config (with --resume) < explicit options."""
    given = {k: v for k, v in vars(args).items() if k not in ("command", "config", "print_config")}
    values: dict = {}
    if getattr(args, "config", None):
        values.update(load_yaml(args.config))
    if given.get("resume"):
        out = given.get("out") or values.get("out")
        saved = Path(out or "") / "config.yaml"
        if out is None or not saved.is_file():
            raise ConfigError(f"--resume needs --out pointing to a run directory with config.yaml; "
                              f"'{saved}' does not exist.")
        values.update(load_yaml(saved))
    values.update(given)
    return from_mapping({k.replace("-", "_"): v for k, v in values.items()}, origin="the options")


GRAPH_METHODS = ("graphmae", "scgc", "graphcl", "graphclip")


def run_fit(args: argparse.Namespace) -> int:
    if getattr(args, "method", None) in GRAPH_METHODS:
        raise ConfigError(f"'{args.method}' is a graph method: run it with "
                          f"'contrastkit graph --method {args.method} --data cora' (see 'contrastkit graph --help').")
    config = resolve_fit_config(args)
    if getattr(args, "print_config", False):
        print(to_yaml(config), end="")
        return 0
    from contrastkit.report import format_comparison_table
    from contrastkit.training.run import fit

    quiet_lightning()  # after Lightning's import, which sets its own loggers' levels

    summary = fit(config)
    if summary:
        print(format_comparison_table(summary))
        print(f"\nRun directory: {summary['out']} (report.md, summary.json, checkpoints/)")
    return 0


def quiet_lightning() -> None:
    """Lightning's start-up chatter (accelerator probes, tips, log-directory notes) says nothing a
    contrastkit user can act on; its warnings about real problems still show."""
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    logging.getLogger("lightning.fabric").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=r"Experiment logs directory .* exists and is not empty")
    warnings.filterwarnings("ignore", message=r".*LeafSpec.*is deprecated")


def run_embed(args: argparse.Namespace) -> int:
    import numpy as np

    from contrastkit.training.restore import embed_with_checkpoint

    embeddings, labels = embed_with_checkpoint(args.checkpoint, args.data, batch_size=args.batch_size)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.save(out, embeddings)
    print(f"Wrote {embeddings.shape[0]} embeddings of dimension {embeddings.shape[1]} to {out}")
    if labels is not None:
        labels_path = out.with_name(out.stem + ".labels.npy")
        np.save(labels_path, labels)
        print(f"Wrote their labels to {labels_path}")
    return 0


def run_evaluate(args: argparse.Namespace) -> int:
    from contrastkit.evaluation.protocol import evaluate_with_label_fractions

    embeddings = _load_array(args.embeddings, "--embeddings")
    labels = _load_array(args.labels, "--labels")
    fractions = _parse_fractions(args.label_fractions)
    results = evaluate_with_label_fractions(embeddings, labels, fractions=fractions,
                                            test_fraction=args.test_fraction, k=args.k, seed=args.seed)
    print(json.dumps(results, indent=2))
    return 0


def run_shard(args: argparse.Namespace) -> int:
    from contrastkit.sources.shards import shard_image_source

    index = shard_image_source(args.data, args.out, shard_size=args.shard_size, image_size=args.image_size,
                               channels=args.channels)
    written = json.loads(index.read_text())
    print(f"Wrote {written['num_samples']} images of shape {tuple(written['image_shape'])} in "
          f"{len(written['shards'])} shards to {index.parent}")
    return 0


def run_timeseries(args: argparse.Namespace) -> int:
    from contrastkit.timeseries_cli import format_summary, run

    summary = run(args)
    print(format_summary(summary))
    print(f"\nRun directory: {args.out}")
    return 0


def run_export(args: argparse.Namespace) -> int:
    from contrastkit.export import export_encoder

    folder = export_encoder(args.checkpoint, args.out, overwrite=args.overwrite)
    print(f"Wrote the encoder to {folder}: model.safetensors + config.json "
          f"(reload it with contrastkit.export.load_exported('{folder}'))")
    return 0


def _load_array(path: str, option: str):
    import numpy as np

    file = Path(path)
    if not file.is_file():
        raise DataError(f"{option}: '{file}' does not exist. Pass a .npy file (contrastkit embed writes one).")
    try:
        return np.load(file, allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise DataError(f"{option}: '{file}' is not a readable .npy array ({exc}).") from None


def _parse_fractions(text: str) -> list[float]:
    try:
        fractions = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ConfigError(f"--label-fractions must be comma-separated numbers in (0, 1], got '{text}'.") from None
    if not fractions or any(not 0 < f <= 1 for f in fractions):
        raise ConfigError(f"--label-fractions must be comma-separated numbers in (0, 1], got '{text}'.")
    return fractions


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else argv
    try:
        if not argv:
            parser.print_help()
            return 0
        if argv[0] == "graph":  # graph methods train full graphs with their own loop
            from contrastkit.graphs.cli import main as graph_main

            return graph_main(argv[1:])
        commands = ["fit", "embed", "evaluate", "graph", "timeseries", "shard", "export"]
        if argv[0] not in (*commands, "-h", "--help"):
            close = closest_names(argv[0], commands)
            hint = f" Did you mean: {', '.join(close)}?" if close else ""
            raise ConfigError(f"Unknown command '{argv[0]}'.{hint} Commands: {', '.join(commands)}.")
        args, unknown = parser.parse_known_args(argv)
        if unknown:
            raise ConfigError(unknown_options_message(args.command, unknown, parser.commands[args.command]))
        handlers = {"fit": run_fit, "embed": run_embed, "evaluate": run_evaluate, "timeseries": run_timeseries,
                    "shard": run_shard, "export": run_export}
        return handlers[args.command](args)
    except ContrastkitError as exc:
        print("\n" + textwrap.fill(f"error: {exc}", width=100) + "\n", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted; the last checkpoint (if any) is intact: continue with --resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

