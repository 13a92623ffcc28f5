"""Pieces every method builder needs: what the data looks like, and the backbone choice."""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch
from torch import nn

from contrastkit import objectives
from contrastkit.nn.distributed import GatheredObjective
from contrastkit.modalities.image.encoders import build_encoder
from contrastkit.modalities.image.encoders.vit import SIZES as VIT_SIZES
from contrastkit.modalities.image.encoders.vit import VisionTransformer, scaled_dim
from contrastkit.core.errors import ConfigError, with_known_options


@dataclass(frozen=True)
class DataInfo:
    """What a method needs to know about its data (saved in checkpoints, so `embed` can rebuild it)."""

    channels: int
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    num_samples: int


def backbone_name(name: str, image_size: int) -> str:
    """`auto` picks the small CNN for tiny images (sklearn digits) and a ResNet-18 otherwise."""
    if name != "auto":
        return name
    return "small-cnn" if image_size <= 16 else "resnet18"


def built_backbone_name(method: nn.Module, name: str, image_size: int) -> str:
    """What a run's summary calls the backbone ``method`` was built with: a ViT with its size (the masked-token
    methods build one for ``--backbone auto``, which for the other methods is a CNN), else :func:`backbone_name`."""
    from contrastkit.engine.init_weights import encoder_of

    backbone = encoder_of(method)[1]  # MAE's backbone, JEPA's and MSN's (online) encoder
    if name == "auto" and isinstance(backbone, VisionTransformer):
        size = backbone.size_options()
        return (f"vit (dim {size['dim']}, depth {size['depth']}, heads {size['heads']}, "
                f"patch {backbone.patch_size})")
    return backbone_name(name, image_size)


# The ViT's architecture options of FitConfig (--patch-size, --pooling, --positions); None: the ViT's default.
VIT_OPTIONS = ("patch_size", "pooling", "positions")


def vit_options(config) -> dict:
    """The ViT options ``config`` sets (a FitConfig, or None: none)."""
    return {name: getattr(config, name) for name in VIT_OPTIONS if getattr(config, name, None) is not None}


def build_backbone(name: str, data: DataInfo, width: float, config=None) -> nn.Module:
    """The backbone ``name`` (``auto`` resolved); ``config``'s ViT options (:func:`vit_options`) go to a
    vision transformer, and are refused for any other backbone (an option that does not apply is an error)."""
    name = backbone_name(name, data.image_size)
    options = vit_options(config)
    if options and name not in VIT_SIZES:
        flags = ", ".join("--" + option.replace("_", "-") for option in options)
        raise ConfigError(f"{flags} set a vision transformer's architecture, and --backbone {name} is not one; use "
                          f"--backbone {' | '.join(VIT_SIZES)}, or drop {flags}.")
    return build_encoder(name, in_channels=data.channels, image_size=data.image_size, width=width, **options)


VIT_SIZING = ("dim", "depth", "heads")


def build_vit_backbone(config, data: DataInfo, options: dict, method: str) -> VisionTransformer:
    """The ViT of a masked-token method (``jepa``, ``msn``, ``mae``): they encode visible patches only.

    ``--backbone auto`` builds one sized by the method's options ``dim`` (default ``96 * --width``,
    rounded to a multiple of 4 x heads), ``depth`` and ``heads``; ``--backbone vit-NAME`` a registered
    size scaled by ``--width``. Either takes ``options["patch_size"]`` (None: the ViT's default).
    Other backbones are refused: masking drops tokens, which a CNN does not have. ``--patch-size``,
    ``--pooling`` and ``--positions`` (:func:`vit_options`) apply; ``--patch-size`` replaces the method's
    own ``patch_size`` (both given and different: an error).
    """
    given = vit_options(config)
    method_patch = (config.extra.get(method) or {}).get("patch_size")
    if "patch_size" in given and method_patch is not None and method_patch != given["patch_size"]:
        raise ConfigError(f"--patch-size {given['patch_size']} and extra.{method}.patch_size {method_patch} disagree; "
                          f"give one of them.")
    patch_size = given.pop("patch_size", options.get("patch_size"))
    if config.backbone == "auto":
        heads = options["heads"]
        dim = options["dim"] or scaled_dim(96, heads, config.width)
        return VisionTransformer(data.channels, data.image_size, dim, options["depth"], heads, patch_size=patch_size,
                                 **given)
    if config.backbone not in VIT_SIZES:
        raise ConfigError(f"{method} masks image patches and needs a vision transformer, not --backbone "
                          f"{config.backbone}; use one of {', '.join(VIT_SIZES)}, or leave --backbone out and "
                          f"size it with extra.{method} (dim, depth, heads, patch_size) and --width.")
    sized = sorted(set(config.extra.get(method) or {}) & set(VIT_SIZING))
    if sized:
        raise ConfigError(f"--backbone {config.backbone} sets the ViT's size; drop extra.{method}.{', '.join(sized)} "
                          f"(or leave --backbone out to size the ViT with them).")
    return build_encoder(config.backbone, in_channels=data.channels, image_size=data.image_size,
                         width=config.width, patch_size=patch_size, **given)


def build_objective(name: str, temperature: float, num_samples: int, options: dict | None = None) -> nn.Module:
    """The catalogue objective ``name``, wrapped for data-parallel training.

    ``temperature`` and the training set's size (per-sample state such as individual temperatures)
    are passed when the objective's constructor takes them; ``options`` (the YAML ``extra.objective``
    mapping) are passed as they are. The wrapper is the identity in a single process; under DDP it
    gathers the embeddings (with gradient) and computes each rank's own anchors when it can.
    """
    factory = objectives.OBJECTIVES.factory(name)
    accepted = inspect.signature(factory).parameters
    offered = {"temperature": temperature, "num_samples": num_samples, "dataset_size": num_samples}
    kwargs = {key: value for key, value in offered.items() if key in accepted}
    kwargs.update(options or {})
    objective = factory(**kwargs)
    return GatheredObjective(objective, local_loss=hasattr(objective, "loss_terms"))


def objective_inputs(objective: nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The batch fields an objective's forward asks for by name (``indices`` for per-sample state,
    ``labels`` for supervised variants); nothing else is passed."""
    if isinstance(objective, GatheredObjective):
        objective = objective.objective
    # Named in forward's signature, or declared as per-sample inputs (the distributed protocol's list).
    wanted = set(inspect.signature(objective.forward).parameters) | set(getattr(objective, "per_sample_inputs", ()))
    if "labels" in wanted and bool((batch["label"] < 0).any()):
        raise ConfigError(
            f"The objective {type(objective).__name__} is supervised (it takes labels), but this data has "
            f"unlabeled samples. Use labelled data (class subfolders, IDX labels, or y in the .npz), or a "
            f"self-supervised objective such as infonce."
        )
    available = {"indices": batch["index"], "labels": batch["label"]}
    return {name: value for name, value in available.items() if name in wanted}


def method_options(config, method: str, defaults: dict) -> dict:
    """The method's options: ``defaults`` updated with the YAML mapping ``extra: {method: {...}}``.

    Unknown option names raise ConfigError with the closest valid ones; values are checked by the
    method's builder.
    """
    given = config.extra.get(method) or {}
    if not isinstance(given, dict):
        raise ConfigError(
            f"extra.{method} must be a mapping of option: value (e.g. extra: {{{method}: "
            f"{{{next(iter(defaults))}: ...}}}}), got {type(given).__name__}."
        )
    return with_known_options(defaults, given, f"extra.{method}")


def require_flags(options: dict, method: str, *names: str) -> None:
    """Raise ConfigError unless each named option of ``extra.{method}`` is true or false."""
    for name in names:
        if not isinstance(options[name], bool):
            raise ConfigError(f"extra.{method}.{name} must be true or false, got {options[name]!r}.")


# Methods whose recipes compute BatchNorm statistics over the global batch (all devices) when they
# train data-parallel, and where that is stated. Per-device statistics would let a method find a
# positive pair through batch-level cues (SimCLR, Sec. B.1) and would make a run's result depend on
# how the batch is split. Methods not listed have no BatchNorm (JEPA: LayerNorm) or do not call for it.
GLOBAL_BATCHNORM_RECIPES: dict[str, str] = {
    "simclr": "SimCLR (Chen et al. 2020, App. B.1): global BN, mean and variance aggregated over all devices",
    "byol": "BYOL (Grill et al. 2020): BatchNorm with cross-replica statistics in the official code",
    "directpred": "DirectPred (Tian et al. 2021) trains with BYOL's recipe, cross-replica BatchNorm",
    "simsiam": "SimSiam (Chen & He 2021): SyncBN over the model in the official distributed code",
    "moco": "MoCo v3 (Chen, Xie & He 2021) uses SyncBN; it stands in for MoCo v2's shuffling BN, "
            "which guards the same leak of per-device statistics and is not implemented here",
    "barlowtwins": "Barlow Twins (Zbontar et al. 2021): SyncBatchNorm over the model in the official code",
    "vicreg": "VICReg (Bardes et al. 2022): SyncBatchNorm over the model in the official code",
    "vicregl": "VICRegL (Bardes et al. 2022): SyncBatchNorm over the model in the official code",
    "swav": "SwAV (Caron et al. 2020): SyncBatchNorm over the model by default in the official code (--sync_bn)",
    "dino": "DINO (Caron et al. 2021): the official code converts a student and teacher with BatchNorm to SyncBatchNorm",
    "spark": "SparK (Tian et al. 2023): sbn=True in the official pretraining arguments, sparse SyncBatchNorm over "
             "the visible positions of all devices in the encoder and the densifying norms, SyncBatchNorm in the decoder",
}


def recipe_uses_global_batchnorm(method: str) -> bool:
    """Whether ``method``'s recipe normalises BatchNorm over the global batch under data parallelism."""
    return method in GLOBAL_BATCHNORM_RECIPES


def method_temperature(config, paper_default: float) -> float:
    """``--temperature`` when the user set it, else the method's paper default."""
    return paper_default if config.temperature is None else config.temperature
