"""The configuration of a `contrastkit fit` run: one flat dataclass, settable from a YAML file
(`--config`) and from command-line options (which win), printable as YAML (`--print-config`).

Names follow the command-line options (`batch_size` <-> `--batch-size`). Validation happens once, in
:func:`validate`, so that every later layer can trust the values.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from contrastkit.core.errors import ConfigError, closest_names


@dataclass
class FitConfig:
    # what to train
    method: str = "simclr"
    objective: str | None = None  # None: the method's own objective (simclr: infonce)
    data: str = "digits"
    image_size: int | None = None  # None: the data's native size
    holdout: float = 0.2  # share of labelled samples kept out of pretraining, for evaluation
    # Seed of the data's fixed draws (the held-out split, the evaluation samples, the probes' label
    # subsets); None: --seed. Runs that compare training seeds pass one value, so every seed is
    # scored on the same held-out images and its baselines (raw pixels) do not move with it.
    split_seed: int | None = None
    limit: int | None = None  # use only the first N samples (quick trials)
    # Leave out image files that cannot be decoded (listed in summary.json) instead of stopping.
    skip_unreadable: bool = False
    # model
    backbone: str = "auto"  # auto: small-cnn for images <= 16 px, resnet18 otherwise
    width: float = 1.0  # channel multiplier of the backbone
    # A vision transformer's architecture (vit-* backbones, and the ViT a masked method sizes itself);
    # None: the ViT's default (patches giving at most 8 a side up to 64 px, mean pooling, sine-cosine positions).
    patch_size: int | None = None
    pooling: str | None = None  # mean | cls
    positions: str | None = None  # sincos | learned
    projection_dim: int = 128
    projection_hidden_dim: int | None = None  # None: the backbone's output width
    temperature: float | None = None  # None: the method's paper value (SimCLR 0.5, MoCo v2 0.2)
    # optimisation
    epochs: int = 30
    max_steps: int | None = None  # stop after this many optimiser steps (before the epochs' end)
    max_minutes: float | None = None  # stop after this much training time (checkpointed; not bit-exact)
    batch_size: int = 256  # per process
    optimizer: str = "sgd"  # sgd | lars | adamw
    lr: float | None = None  # base rate for a global batch of 256; None: the optimiser's default
    weight_decay: float = 5e-4
    momentum: float = 0.9
    warmup_epochs: float = 1.0
    nan_policy: str = "stop"  # stop | skip
    # devices (Lightning)
    accelerator: str = "cpu"
    devices: int = 1
    strategy: str = "auto"
    num_nodes: int = 1
    precision: str = "32-true"
    num_workers: int = 0
    # BatchNorm statistics over the global batch under DDP: None follows the method's recipe
    # (methods/parts.GLOBAL_BATCHNORM_RECIPES) when more than one process trains; True/False force it.
    sync_batchnorm: bool | None = None
    stream_order: str = "shards"  # epoch order when streaming shards:DIR: shards (block) | global
    batch_sampler: str = "shuffle"  # shuffle | spread (G-SimCLR: pseudo-classes spread over batches)
    # Channels-last weights and views. None (auto): on for one process, where it measured 1.4x (SimCLR)
    # and 1.6x (BYOL) the images/s of NCHW on the 2-core CPU with the same numbers (benchmarks/image_speed.py,
    # docs/benchmarks.md); off under multi-process training, where it has not been measured. True/False
    # force it.
    channels_last: bool | None = None
    # GradCache: rows (views) per backbone pass, for batches larger than memory holds (one process;
    # the methods of GRAD_CACHE_METHODS). None: the whole batch in one pass.
    grad_cache_chunk: int | None = None
    # bookkeeping
    seed: int = 0
    deterministic: bool = False
    out: str | None = None  # None: runs/<method>-<data>-<time>
    resume: bool = False
    checkpoint_every_steps: int | None = None  # also checkpoint every N optimiser steps (the epoch's end always)
    probe_every: int = 1  # epochs between online kNN probes (0: never)
    report: bool = True
    baselines: bool = True  # also score the untrained encoder and raw pixels (skip for sweeps)
    tsne: bool = False
    # Options of the parts, YAML only: {views: {...SimCLRViews options}, objective: {...}, <method>: {...}}
    extra: dict[str, Any] = field(default_factory=dict)


CHOICES = {
    "optimizer": ("sgd", "lars", "adamw"),
    "nan_policy": ("stop", "skip"),
    "accelerator": ("cpu", "gpu", "cuda", "mps", "auto"),
    "stream_order": ("shards", "global"),
    "batch_sampler": ("shuffle", "spread"),
}

DEFAULT_LR = {"sgd": 0.06, "lars": 0.3, "adamw": 1e-3}

# Methods whose loss couples the batch's rows and depends on the backbone only through its
# embeddings, so GradCache (contrastkit.nn.gradcache) trains them in chunks with the whole batch's
# gradients (moco: with --objective infonce; its own InfoNCE is per query). The others' losses are
# per sample (byol, simsiam, directpred, jepa, dino: plain chunks would do) or couple the batch in
# ways not wired to it (swav's Sinkhorn codes over multi-crop, mmcr's and tico's batch statistics,
# vicregl's local features).
GRAD_CACHE_METHODS = ("simclr", "moco", "nnclr", "barlowtwins", "vicreg")


def field_names() -> list[str]:
    return [f.name for f in fields(FitConfig)]


def from_mapping(values: dict[str, Any], origin: str) -> FitConfig:
    """Build a config from a mapping (a YAML file's content), rejecting unknown keys by name."""
    known = set(field_names())
    for key in values:
        if key.replace("-", "_") not in known:
            close = closest_names(key.replace("-", "_"), known)
            hint = f" Did you mean: {', '.join(close)}?" if close else ""
            raise ConfigError(
                f"Unknown option '{key}' in {origin}.{hint} "
                f"Valid options: {', '.join(sorted(known))}."
            )
    return validate(FitConfig(**{k.replace("-", "_"): v for k, v in values.items()}))


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"Config file '{path}' does not exist. Pass an existing YAML file to --config.")
    try:
        content = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"Config file '{path}' is not valid YAML ({exc}). Fix the file or drop --config.") from None
    if not isinstance(content, dict):
        raise ConfigError(f"Config file '{path}' must hold a mapping of option: value, not {type(content).__name__}.")
    return content


def to_yaml(config: FitConfig) -> str:
    return yaml.safe_dump(dataclasses.asdict(config), sort_keys=False)


def validate(config: FitConfig) -> FitConfig:
    """Check types and ranges; raise ConfigError naming the option and what to do."""
    for name, choices in CHOICES.items():
        value = getattr(config, name)
        if value not in choices:
            raise ConfigError(
                f"--{name.replace('_', '-')} '{value}' is not valid; choose one of: {', '.join(choices)}."
            )
    positive = ["epochs", "batch_size", "devices", "num_nodes", "projection_dim"]
    for name in positive:
        value = getattr(config, name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be a positive integer, got {value!r}.")
    for name in ["max_steps", "checkpoint_every_steps"]:
        value = getattr(config, name)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            raise ConfigError(f"--{name.replace('_', '-')} must be a positive integer, got {value!r}.")
    if config.max_minutes is not None and not config.max_minutes > 0:
        raise ConfigError(f"--max-minutes must be positive, got {config.max_minutes!r}.")
    for name in ["temperature", "width"]:
        value = getattr(config, name)
        if value is None and name == "temperature":
            continue
        if not isinstance(value, int | float) or value <= 0:
            raise ConfigError(f"--{name} must be a positive number, got {value!r}.")
    if config.channels_last is not None and not isinstance(config.channels_last, bool):
        raise ConfigError(f"channels_last must be true, false or null (on for one process), got {config.channels_last!r}.")
    if config.sync_batchnorm is not None and not isinstance(config.sync_batchnorm, bool):
        raise ConfigError(f"sync_batchnorm must be true, false or null (the method's recipe), "
                          f"got {config.sync_batchnorm!r}.")
    check_grad_cache(config)
    check_vit_options(config)
    if config.lr is not None and (not isinstance(config.lr, int | float) or config.lr <= 0):
        raise ConfigError(f"--lr must be a positive number, got {config.lr!r}.")
    if not 0.0 <= config.holdout < 1.0:
        raise ConfigError(f"--holdout must be in [0, 1), got {config.holdout!r}.")
    if config.image_size is not None and config.image_size < 4:
        raise ConfigError(f"--image-size must be at least 4 pixels, got {config.image_size!r}.")
    if config.limit is not None and config.limit < 2:
        raise ConfigError(f"--limit must be at least 2 samples, got {config.limit!r}.")
    if config.warmup_epochs < 0 or config.warmup_epochs > config.epochs:
        raise ConfigError(
            f"--warmup-epochs must be between 0 and --epochs ({config.epochs}), got {config.warmup_epochs!r}."
        )
    return config


def check_vit_options(config: FitConfig) -> None:
    """``--patch-size`` (a positive integer), ``--pooling`` and ``--positions`` (the ViT's choices); whether
    the backbone is a ViT is checked where it is built (``methods.parts.build_backbone``)."""
    from contrastkit.modalities.image.encoders.vit import POOLINGS, POSITIONS

    size = config.patch_size
    if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size < 1):
        raise ConfigError(f"--patch-size must be a positive integer (a divisor of the image side), got {size!r}.")
    for name, choices in (("pooling", POOLINGS), ("positions", POSITIONS)):
        value = getattr(config, name)
        if value is not None and value not in choices:
            raise ConfigError(f"--{name} '{value}' is not valid for a ViT; choose one of: {', '.join(choices)}.")


def check_grad_cache(config: FitConfig) -> None:
    """``--grad-cache-chunk``: a positive number of rows, a method that couples the batch, one process."""
    chunk = config.grad_cache_chunk
    if chunk is None:
        return
    if not isinstance(chunk, int) or isinstance(chunk, bool) or chunk < 1:
        raise ConfigError(f"--grad-cache-chunk must be a positive number of rows, got {chunk!r}.")
    if config.method not in GRAD_CACHE_METHODS:
        raise ConfigError(f"--grad-cache-chunk does not apply to {config.method}: GradCache is for losses that couple "
                          f"the batch's rows, as {', '.join(GRAD_CACHE_METHODS)} do. Drop --grad-cache-chunk.")
    processes = config.devices * config.num_nodes
    if processes != 1:
        raise ConfigError(f"--grad-cache-chunk trains in one process: it recomputes each chunk in the backward pass, "
                          f"which DDP does not allow ({processes} processes were asked for). Use --devices 1 "
                          f"--num-nodes 1, or drop --grad-cache-chunk.")


def base_lr(config: FitConfig) -> float:
    return config.lr if config.lr is not None else DEFAULT_LR[config.optimizer]


def scaled_lr(config: FitConfig, global_batch_size: int) -> float:
    """The linear scaling rule (Goyal et al. 2017), as SimCLR uses it: lr = base_lr * global_batch / 256.
    AdamW's rate is not scaled."""
    if config.optimizer == "adamw":
        return base_lr(config)
    return base_lr(config) * global_batch_size / 256
