"""Image options of ``contrastkit fit`` and the run they start.

    contrastkit fit --method simclr --data cifar10-test --max-epochs 100 --out runs/simclr-cifar
    contrastkit fit --method byol --data ./photos --image-size 96 --devices 2 --strategy ddp
    contrastkit fit --out runs/simclr-cifar --resume

Defaults come from :class:`contrastkit.modalities.image.config.FitConfig`; the options a user gave
are told apart from the defaults (``argparse.SUPPRESS``), so that ``--resume`` takes the run's saved
config.yaml and only the given options replace its values.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from contrastkit.core.errors import ConfigError
from contrastkit.modalities.image.config import FitConfig, from_mapping, load_yaml, to_yaml

# `--option`: (type, help). Defaults come from FitConfig; argparse leaves absent options out
# (SUPPRESS), so that we know which options the user actually gave.
FIT_OPTIONS = {
    "method": (str, "self-supervised method (simclr, ...)"),
    "objective": (str, "objective of the catalogue, replacing the method's own (e.g. dcl, hcl)"),
    "data": (str, ("a path (image folder, CSV/Parquet list of images, Hugging Face save_to_disk folder, "
                   "webdataset .tar shards or a glob/brace list of them, TIFF stack, IDX files, .npz/.npy), a "
                   "built-in name (digits, mnist-test, cifar10-test), shards:DIR to stream a folder written "
                   "by 'contrastkit shard', or stream:PATH to stream tar shards or a save_to_disk folder as they are "
                   "(decoded batch by batch)")),
    "image-size": (int, "resize images to this side length"),
    "holdout": (float, "share of labelled samples held out of pretraining for evaluation"),
    "split-seed": (int, "seed of the held-out split and the evaluation's draws (default: --seed); give one "
                        "value to compare training seeds on the same held-out images"),
    "limit": (int, "use only the first N samples"),
    "backbone": (str, "auto, small-cnn, resnet18, resnet50, or timm:NAME when timm is installed"),
    "width": (float, "channel multiplier of the backbone"),
    "patch-size": (int, "vit-* backbones: the side of a patch, a divisor of the image side (default: at most 8 "
                        "patches a side up to 64 px, 14 beyond)"),
    "pooling": (str, "vit-* backbones: the image embedding, mean (of the patch tokens) or cls (a [CLS] token)"),
    "positions": (str, "vit-* backbones: position embeddings, sincos (fixed 2-D sine-cosine) or learned"),
    "projection-dim": (int, "output size of the projection head"),
    "temperature": (float, "temperature of the contrastive objective"),
    "max-epochs": (int, "training epochs (also spelled --epochs)"),
    "max-steps": (int, "stop after this many optimiser steps, before the epochs' end"),
    "max-minutes": (float, "stop after this much training time (the last checkpoint is kept; not bit-exact)"),
    "batch-size": (int, "batch size per process"),
    "grad-cache-chunk": (int, ("GradCache: rows (views) per backbone pass, for batches larger than memory holds; the "
                               "whole batch's gradients with BatchNorm over chunks of this many rows; one process; "
                               "simclr, moco, nnclr, barlowtwins, vicreg")),
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
    "stream-order": (str, ("epoch order when streaming shards:DIR or stream:PATH: shards (shards shuffled, then rows within each; "
                           "sequential reads) or global (the in-memory order; random reads)")),
    "batch-sampler": (str, ("shuffle, or spread: G-SimCLR batches that keep each pseudo-class (denoising "
                            "autoencoder + k-means) spread out; options in extra.gsimclr")),
    "seed": (int, "random seed"),
    "checkpoint-every-steps": (int, "also write checkpoints/last.ckpt every N optimiser steps"),
    "out": (str, "run directory (default runs/<method>-<data>-<time>)"),
}
FLAGS = {
    "resume": "continue the run in --out from its last checkpoint",
    "skip-unreadable": ("leave out image files that cannot be decoded (counted and named in summary.json, and "
                        "in a warning) instead of stopping with an error"),
    "deterministic": "use deterministic algorithms (slower)",
    "sync-batchnorm": "BatchNorm statistics over the global batch under DDP (default: as the method's recipe)",
    "tsne": "t-SNE (instead of PCA) for the report's 2-D map",
}
# Not a FitConfig field (never saved with the run, so a later --resume does not inherit it).
TRUST_CHECKPOINT_HELP = ("with --resume: read a last.ckpt that carries code (a pickle holding more than tensors and "
                         "plain values); this RUNS that code, so use it only for a file whose maker you trust; "
                         "without it such a file is refused")




def _default(option: str):
    return getattr(FitConfig(), "epochs" if option == "max-epochs" else option.replace("-", "_"))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The image options. Absent options are left out of the namespace (SUPPRESS)."""
    suppress = argparse.SUPPRESS
    parser.add_argument("--print-config", action="store_true", default=suppress,
                        help="print the resolved configuration and exit")
    for name, (kind, help_text) in FIT_OPTIONS.items():
        names = ["--max-epochs", "--epochs"] if name == "max-epochs" else [f"--{name}"]
        dest = "epochs" if name == "max-epochs" else name.replace("-", "_")
        parser.add_argument(*names, dest=dest, type=kind, default=suppress,
                            help=f"{help_text} (default: {_default(name)})")
    for name, help_text in FLAGS.items():
        parser.add_argument(f"--{name}", action="store_true", default=suppress, help=help_text)
    parser.add_argument("--no-sync-batchnorm", dest="sync_batchnorm", action="store_false", default=suppress,
                        help="per-process BatchNorm statistics under DDP, even where the method's recipe is global")
    parser.add_argument("--channels-last", action="store_true", default=suppress,
                        help="channels-last weights and views (default: on for one process, off under DDP)")
    parser.add_argument("--no-channels-last", dest="channels_last", action="store_false", default=suppress,
                        help="contiguous (NCHW) weights and views instead of channels-last")
    parser.add_argument("--trust-checkpoint", action="store_true", default=suppress, help=TRUST_CHECKPOINT_HELP)
    parser.add_argument("--no-report", dest="report", action="store_false", default=suppress, help="skip the report")
    parser.add_argument("--no-baselines", dest="baselines", action="store_false", default=suppress,
                        help="skip scoring the untrained encoder and raw pixels (faster sweeps)")


NOT_CONFIG = ("command", "config", "print_config", "given_options", "modality", "config_file_values",
              "trust_checkpoint")


def _config_file_keys() -> tuple[str, ...]:
    """FitConfig fields with no command-line option (``extra``, ``probe_every``, ...): a --config
    file may set them."""
    from contrastkit.modalities.image.config import field_names

    options = {"epochs" if n == "max-epochs" else n.replace("-", "_") for n in (*FIT_OPTIONS, *FLAGS)}
    return tuple(n for n in field_names() if n not in options and n not in ("channels_last", "report", "baselines"))


CONFIG_FILE_KEYS = _config_file_keys()


def resolve_fit_config(args: argparse.Namespace) -> FitConfig:
    """defaults < the run's saved config (with --resume) < the options given (a --config file's
    values count as given: the common command turns them into options)."""
    given = {k: v for k, v in vars(args).items() if k not in NOT_CONFIG}
    values: dict = {}
    if given.get("resume"):
        out = given.get("out")
        saved = Path(out or "") / "config.yaml"
        if out is None or not saved.is_file():
            raise ConfigError(f"--resume needs --out pointing to a run directory with config.yaml; "
                              f"'{saved}' does not exist.")
        values.update(load_yaml(saved))
    values.update(getattr(args, "config_file_values", {}))
    values.update(given)
    return from_mapping({k.replace("-", "_"): v for k, v in values.items()}, origin="the options")


def command(args: argparse.Namespace) -> int:
    config = resolve_fit_config(args)
    if getattr(args, "print_config", False):
        print(to_yaml(config), end="")
        return 0
    from contrastkit.cli import quiet_lightning
    from contrastkit.modalities.image.training.run import fit
    from contrastkit.report import format_comparison_table

    quiet_lightning()  # after Lightning's import, which sets its own loggers' levels

    summary = fit(config, trust_checkpoint=getattr(args, "trust_checkpoint", False))
    if summary:
        print(format_comparison_table(summary))
        print(f"\nRun directory: {summary['out']} (report.md, summary.json, checkpoints/)")
    return 0
