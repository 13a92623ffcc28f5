"""The ranking protocol (issue 20): every image method of contrastkit, and LightlySSL's run of the
same method where it has one, on one data set, backbone and epoch count, beside the untrained
encoder and raw pixels. Supersedes ``bench_methods.py`` (2 epochs on 1,600 images: too short to rank).

Data: ``cifar10-test`` (10,000 CIFAR-10 images under ``$CONTRASTKIT_DATA``) split as ``contrastkit
fit`` splits it: a stratified 20 %, drawn with ``--split-seed 0`` for every training seed, is held out
of pretraining; weighted
kNN (cosine, k = 200, t = 0.1) with the 8,000 pretraining images and their labels as the bank, the
2,000 held-out images as queries; a linear probe fitted on 10 labelled pretraining images per class,
scored on the held-out ones. The held-out part is development data (it compares methods and fixed
the epoch count); no test split is scored, so no figure here is a test accuracy.

Training: CIFAR ResNet-18 at width 0.125, batch 256, the method's defaults otherwise (``contrastkit
fit``'s SGD at the protocol's lr 0.12, one warm-up epoch then cosine), through ``training.run.fit`` (the code path of
``contrastkit fit``) without the online probe. JEPA, MSN and MAE have their own ViT and AdamW (at fit's
default rate), as JEPA in ``bench_methods.py``, the ViT as wide as makes its parameter count that of the
CNN rows' backbone (``matched_vit_dim``: dim 60 at width 0.125). gcl-local is trained as the paper does,
from a gcl-global run of the same seed and settings (``--init``; ``FIRST_STAGE``), its speed columns those
of the local stage. Rows: every image method of the registry, and the multi-crop methods with options:
``swav+local6`` and ``dino+local6`` are SwAV and DINO with six local crops (``extra: {swav: {local_crops:
6}}``; any ``NAME+localN`` of swav, dino, obow can be asked for with ``--methods``).

LightlySSL rows run in ``$CONTRASTKIT_ANCHOR_ENV/bin/python`` (LightlySSL 1.6 with its own torch
build: the table's header names the builds) on the same split, initial backbone weights, optimiser
and schedule (``image_side_by_side``'s), threads and memory format, with LightlySSL's heads, losses,
transforms and ``LightlyDataset`` over the JPEG files in DataLoader workers, one backbone pass per
view, as its examples do; sizes, loss settings and augmentations are contrastkit's for the method
(where LightlySSL's named head has another layer count, its ``ProjectionHead`` blocks build
contrastkit's, as its CIFAR-10 benchmark does). Kept differences: its memory banks start as random
vectors; BYOL's loss is scaled by 4 (image_side_by_side.py); MMCR is ``MMCRLoss(lmda=0)`` on the
normalised online projections as both arguments (the paper's CIFAR recipe, contrastkit's: no
momentum network; LightlySSL's example has one and does not normalise); DINO's MLP has contrastkit's two
layers (LightlySSL's ``DINOProjectionHead`` three), its last layer LightlySSL's; SwaV's prototypes are
LightlySSL's (a Linear with a bias); MSN trains LightlySSL's own ViT (``lightly_vit``: torchvision's, with a
[CLS] token) at the size of contrastkit's, with fit's AdamW, and its prototypes are trained
(``lightly_msn_parts``: LightlySSL's example leaves them at their initial values). VICRegL's views are built from
LightlySSL's grid crop and view transforms, its ``VICRegLTransform`` having one colour recipe for both views
(``lightly_vicregl_parts``). MAE and I-JEPA train LightlySSL's ViTs at that size too (``lightly_vit``), MAE with
its torchvision ``MAEDecoder`` and each target patch normalised (``norm_pix_loss``, contrastkit's default; LightlySSL's
example regresses raw pixels: ``lightly_mae_parts``), I-JEPA with its ``IJEPAPredictor`` and mask collator, whose
indices its ``IJEPABackbone`` reads one token off (kept: ``lightly_ijepa_parts``). LightlySSL has no DirectPred, OBoW
or SparK: contrastkit rows only.
contrastkit's methods pass views as the method's docstring says: one pass per view for SimSiam,
Barlow Twins, VICReg and TiCo; one pass over both views for SimCLR, MoCo, BYOL and NNCLR, over all k
views for MMCR (the paper's code); one per crop size for SwAV, DINO and OBoW. So BatchNorm's batch
differs from LightlySSL's for the second group and the third.

Per run: kNN top-1; linear top-1 with 10 labels per class; images/s = training images / wall time
of the training epochs, data loading included (summary.json's ``samples_per_second``, inside the
steps only, is stored as ``step_images_per_s``); peak RSS of the run's own process (each run is a
subprocess) and peak PSS of its process tree, workers included (``PeakMemory``, sampled); seconds.

Store: each finished (library, method, seed) run is one JSON line of ``--store`` with its settings,
results, versions and git commit (default: ``benchmarks/results/rank_image_methods.jsonl``, committed); runs
stored with the same settings are skipped, so the table grows over several sessions. ``--table`` prints it from the store: median (min-max) over seeds, ranked by
median kNN top-1; a row whose seeds' kNN range overlaps that of the row above ties with it.

Epoch count and rate: 25 epochs at lr 0.12 (LightlySSL's CIFAR-10 rate at batch 256), fixed by the
second pilot before any ranked run. The issue asks for an epoch count at which SimCLR's kNN top-1 beats
raw pixels' by at least 5 points (pilot: ``--pilot 25``, SimCLR, seed 0, one cosine schedule over 25
epochs, fit's online probe every epoch on 5,000 pretraining images as the bank and the 2,000 held-out
queries; raw pixels on the same rows: 34.20 %). At fit's lr 0.06 it never did (at best + 3.10, flat
from epoch 10; after 25 epochs on this table's protocol SimCLR 38.00 vs raw pixels 34.75). At lr 0.12
it passes + 5 at epoch 11 and stays above (+ 5.05 to + 6.40); after 25 epochs on this table's
protocol SimCLR 40.90 vs raw pixels 34.75 (+ 6.15), linear with 10 labels per class 32.80 / 24.05.
About 26 s per SimCLR epoch at one thread (docs/benchmarks.md has both curves).

Usage, from the repository root (the table of docs/benchmarks.md: hours on a 2-core machine)::

    export CONTRASTKIT_DATA=<data folder> CONTRASTKIT_ANCHOR_ENV=<anchor environment>
    python benchmarks/rank_image_methods.py                      # every method, both libraries, seeds 0 1
    python benchmarks/rank_image_methods.py --jobs 2 --threads 1  # the same, two runs at a time (2 cores)
    python benchmarks/rank_image_methods.py --table              # the table from the store; trains nothing
    python benchmarks/rank_image_methods.py --epochs 1 --methods simclr byol --seeds 0   # a smoke test
    python benchmarks/rank_image_methods.py --pilot 25 --lr 0.12  # the epoch-count pilot
"""

from __future__ import annotations

import argparse
import copy
import functools
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from contrastkit.modalities.image.config import DEFAULT_LR
from image_side_by_side import PeakMemory, make_backbone, optimizer_and_schedule, timer_callback, trainer, vars_of

EPOCHS = 25  # fixed by the second pilot (lr 0.12): raw pixels + 5 from epoch 11 on (module docstring)
LR = 0.12  # SGD rate for a batch of 256 (LightlySSL's CIFAR-10 rate), fixed with EPOCHS
HOLDOUT = 0.2  # contrastkit fit's default
# One held-out split, evaluation sample and probe label draw for every training seed (fit's
# --split-seed): seeds then differ only in training, and the baselines' raw pixels do not move.
SPLIT_SEED = 0
FEW_LABELS = "linear_top1_10_per_class"
LIGHTLY_METHODS = ("simclr", "moco", "byol", "simsiam", "barlowtwins", "vicreg", "tico", "mmcr", "nnclr", "swav",
                   "swav+local6", "dino", "dino+local6", "msn", "vicregl", "mae", "jepa")
# Rows that are a method with options: NAME+localN is NAME with extra {NAME: {local_crops: N}} (multi-crop).
LOCAL_CROP_METHODS = ("swav", "dino", "obow")
DEFAULT_VARIANTS = ("swav+local6", "dino+local6")  # in the table beside the methods' own rows (issue 21)
TRANSFORMER_METHODS = ("jepa", "msn", "mae")  # their own ViT (matched_vit_dim) and AdamW, as bench_methods.py
# A two-stage method's row: its first stage trained first (same seed and settings), the row's run started from
# that run's encoder (``--init``), as the paper trains it; its speed and time columns are the second stage's.
FIRST_STAGE = {"gcl-local": "gcl-global"}
# LightlySSL rows embedded by their EMA target encoder, as contrastkit's method embeds (MSN, I-JEPA: the papers').
EVALUATES_TARGET = ("msn", "jepa")
# The untrained ViT: the masked-token methods' encoder (matched_vit_dim) at its initial weights, their rows' baseline.
BASELINE, BASELINE_ROWS = "baseline", ("untrained encoder", "raw pixels", "untrained ViT")
DEFAULT_DIR = Path("runs") / "rank_image_methods"
# Committed, unlike the run folders: each machine is fresh, and the full table takes several sessions.
STORE = Path("benchmarks") / "results" / "rank_image_methods.jsonl"


# -- settings and store ---------------------------------------------------------------------------

def row_method(row: str) -> tuple[str, dict]:
    """(method, its YAML ``extra``) of a table row: ``swav`` -> ("swav", {}); ``swav+local6`` -> ("swav",
    {"swav": {"local_crops": 6}})."""
    method, plus, option = row.partition("+")
    if not plus:
        return method, {}
    if method not in LOCAL_CROP_METHODS or not option.startswith("local") or not option[5:].isdigit():
        raise ValueError(f"unknown row {row!r}: a method with options is NAME+localN, NAME one of "
                         f"{', '.join(LOCAL_CROP_METHODS)} (e.g. swav+local6)")
    return method, {method: {"local_crops": int(option[5:])}}


def matched_vit_dim(args) -> int:
    """The width of the masked-token methods' own ViT (depth 4, 3 heads, 4-pixel patches, as their defaults; a
    multiple of 12) whose parameter count is closest to that of the CNN rows' backbone (``--backbone`` at ``--width``)
    on CIFAR's 3 x 32 x 32 images, so that their rows rank an encoder of the same size. At width 0.125: dim 60,
    178,980 parameters against the ResNet-18's 175,752 (the ViT that ``--width 0.125`` alone sizes has dim 12 and
    8,148). A rule fixed before any run at this size."""
    return _matched_vit_dim(args.backbone, args.width)


@functools.cache  # every stored run's settings name it: built once per (backbone, width), not per row
def _matched_vit_dim(backbone: str, width: float) -> int:
    from contrastkit.modalities.image.encoders.vit import VisionTransformer
    from contrastkit.modalities.image.methods.parts import DataInfo, build_backbone

    def count(module: torch.nn.Module) -> int:
        return sum(p.numel() for p in module.parameters())

    cnn = count(build_backbone(backbone, DataInfo(3, 32, (0.5,) * 3, (0.5,) * 3, 1), width))
    return min(range(12, 385, 12), key=lambda dim: abs(count(VisionTransformer(3, 32, dim, 4, 3, patch_size=4)) - cnn))


def fit_options(row: str, args) -> dict:
    """The FitConfig of a contrastkit run, less its seed and output folder."""
    method, extra = row_method(row)
    model = ({"optimizer": "adamw"} if method in TRANSFORMER_METHODS
             else {"backbone": args.backbone, "lr": args.lr})
    if method in TRANSFORMER_METHODS:
        extra = {method: {"dim": matched_vit_dim(args)}}
    return dict(method=method, data=args.data, epochs=args.epochs, batch_size=args.batch_size, width=args.width,
                holdout=HOLDOUT, split_seed=SPLIT_SEED, channels_last=args.memory_format == "channels-last",
                probe_every=0, report=False,
                baselines=False, **model, **({"extra": extra} if extra else {}))


def run_settings(library: str, method: str, args) -> dict:
    """What a stored run must match to be this run (its seed apart)."""
    settings = {"data": args.data, "holdout": HOLDOUT, "split_seed": SPLIT_SEED, "backbone": args.backbone, "width": args.width}
    if library == BASELINE:
        return settings | ({"vit_dim": matched_vit_dim(args)} if method == "untrained ViT" else {})
    settings |= {"epochs": args.epochs, "batch_size": args.batch_size, "memory_format": args.memory_format,
                 "threads": args.threads}
    if method in FIRST_STAGE:
        settings["first_stage"] = FIRST_STAGE[method]
    if library == "contrastkit":
        return settings | {"fit": fit_options(method, args)}
    optimizer, lr = lightly_optimizer(method, args)
    return settings | {"lightly_workers": args.lightly_workers} | (
        {"vit_dim": matched_vit_dim(args), "optimizer": optimizer, "lr": lr} if method in TRANSFORMER_METHODS else {})


def lightly_optimizer(method: str, args) -> tuple[str, float]:
    """(optimiser, base rate) of a LightlySSL row: the masked-token rows' fit AdamW at its default rate, as their
    contrastkit rows; the protocol's SGD otherwise."""
    return ("adamw", DEFAULT_LR["adamw"]) if method in TRANSFORMER_METHODS else ("sgd", args.lr)


def row_key(library: str, method: str, seed: int, settings: dict) -> str:
    return json.dumps([library, method, seed, settings], sort_keys=True)


def read_store(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def git_state() -> dict:
    """HEAD, and whether src/ or benchmarks/ (its stored results apart) differ from it (tracked files only)."""
    def git(*command: str) -> str:
        return subprocess.run(["git", *command], capture_output=True, text=True).stdout.strip()

    # The committed stores (this table's among them) change with every run: they are results, not code.
    return {"commit": git("rev-parse", "--short", "HEAD"),
            "dirty": bool(git("status", "--porcelain", "--untracked-files=no", "--", "src", "benchmarks",
                              ":(exclude)benchmarks/results"))}


# -- workers: one subprocess per run ---------------------------------------------------------------

def worker(args) -> None:
    library, method, seed = args.job
    torch.set_num_threads(args.threads)
    versions = {"torch": torch.__version__, "python": platform.python_version(), "git": git_state()}
    if library == BASELINE:
        rows = baseline_rows(seed, args)
    else:
        rows = {method: (train_contrastkit if library == "contrastkit" else train_lightly)(method, seed, args)}
        if library == "lightly":
            versions["lightly"] = sys.modules["lightly"].__version__  # imported by train_lightly
        rows[method]["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    Path(args.result).write_text(json.dumps({"rows": rows, "versions": versions}))


def scores(embeddings: np.ndarray, labels: np.ndarray, n_train: int) -> dict:
    """fit's held-out figures (``evaluate_embeddings`` less its all-label probe, minutes on raw pixels):
    the first n_train rows are the kNN bank and the probe's pool, the others are scored."""
    from contrastkit.evaluation.arrays import as_float32_matrix, as_label_vector
    from contrastkit.evaluation.knn import weighted_knn_accuracy
    from contrastkit.evaluation.linear import linear_probe_accuracy
    from contrastkit.evaluation.splits import few_labels_per_class

    x, y = as_float32_matrix(embeddings, "embeddings"), as_label_vector(labels, "labels", length=len(labels))
    train, test = np.arange(n_train), np.arange(n_train, len(y))
    few = few_labels_per_class(y, train, 10, SPLIT_SEED)
    return {"knn_top1": weighted_knn_accuracy(x[train], y[train], x[test], y[test], 200, 0.1),
            FEW_LABELS: linear_probe_accuracy(x[few], y[few], x[test], y[test], SPLIT_SEED)}


def baseline_rows(seed: int, args) -> dict:
    """fit's baselines: the untrained encoder (the SimCLR model at its initial weights) and raw pixels; and the
    untrained ViT of the masked-token rows (JEPA's model at its initial weights, its target encoder embedding)."""
    import lightning as L

    from contrastkit.modalities.image.config import FitConfig
    from contrastkit.modalities.image.methods import build_method
    from contrastkit.modalities.image.training.callbacks import embed_images
    from contrastkit.modalities.image.training.run import raw_pixels
    from contrastkit.modalities.image.training.run_data import open_run_data

    config = FitConfig(**fit_options("simclr", args), seed=seed)
    L.seed_everything(seed, workers=True, verbose=False)  # fit's order: seed, data, method
    run_data = open_run_data(config)
    method = build_method("simclr", config, run_data.info)
    images, labels = run_data.read(run_data.eval_rows), run_data.labels[run_data.eval_rows]
    untrained = embed_images(method, images, torch.device("cpu")).numpy()
    # Its config before the seed: matched_vit_dim builds candidate ViTs, drawing random numbers the first time in a
    # process, which between the seed and the model would change its weights with the cache's state. The same data
    # and split as SimCLR's config, so its DataInfo; opening the data draws no random number.
    vit_config = FitConfig(**fit_options("jepa", args), seed=seed)
    L.seed_everything(seed, workers=True, verbose=False)
    vit_method = build_method("jepa", vit_config, run_data.info)
    untrained_vit = embed_images(vit_method, images, torch.device("cpu")).numpy()
    return {"untrained encoder": scores(untrained, labels, run_data.eval_train),
            "raw pixels": scores(raw_pixels(images, run_data.info), labels, run_data.eval_train),
            "untrained ViT": scores(untrained_vit, labels, run_data.eval_train)}


def train_contrastkit(method: str, seed: int, args) -> dict:
    from contrastkit.core.init_source import starting_from
    from contrastkit.modalities.image.config import FitConfig
    from contrastkit.modalities.image.training.run import fit

    out = Path(args.out_dir) / "runs" / f"contrastkit-{method}-seed{seed}"
    shutil.rmtree(out, ignore_errors=True)
    first_stage = None
    if method in FIRST_STAGE:
        first_stage = out.with_name(f"{out.name}-{FIRST_STAGE[method]}")
        shutil.rmtree(first_stage, ignore_errors=True)
        fit(FitConfig(**fit_options(FIRST_STAGE[method], args), seed=seed, out=str(first_stage)))
    with starting_from(None if first_stage is None else str(first_stage)):
        summary = fit(FitConfig(**fit_options(method, args), seed=seed, out=str(out)))
    images = summary["samples_per_second"] * summary["train_seconds"]
    return {key: summary[key] for key in ("knn_top1", "linear_top1", FEW_LABELS)} | {
        "images_per_s": images / summary["seconds"], "step_images_per_s": summary["samples_per_second"],
        "train_seconds": summary["seconds"], "collapsed": bool(summary["collapse"]["collapsed"])}


def split_folder(args) -> Path:
    return Path(args.out_dir) / "splits" / f"{Path(args.data).name}-split{SPLIT_SEED}"


def prepare_split(args) -> None:
    """fit's split for ``--split-seed SPLIT_SEED`` as one .pt file (images in evaluation order, labels, the pretraining
    part's size, mean and std), and a folder of links to the pretraining JPEGs, for LightlySSL."""
    from contrastkit.core.paths import data_root
    from contrastkit.modalities.image.sources import BUILTIN_SOURCES, open_image_source
    from contrastkit.modalities.image.sources.image_folder import list_image_files
    from contrastkit.modalities.image.training.run_data import split_rows

    folder = split_folder(args)
    if (folder / "split.pt").exists():
        return
    source = open_image_source(args.data)
    labels = source.labels.numpy()
    train, holdout = split_rows(labels, np.arange(len(source)), HOLDOUT, SPLIT_SEED)
    mean, std = source.subset(train).channel_mean_std()
    files, _, _ = list_image_files(data_root() / args.data if args.data in BUILTIN_SOURCES else Path(args.data))
    for row in train:  # the folder's sorted files are the source's rows (image_side_by_side.cifar_small)
        link = folder / "train-jpeg" / files[row].parent.name / files[row].name
        link.parent.mkdir(parents=True, exist_ok=True)
        if not link.exists():
            link.symlink_to(files[row].resolve())
    order = torch.from_numpy(np.concatenate([train, holdout]))
    torch.save({"images": source.images[order], "labels": labels[order.numpy()], "n_train": len(train),
                "mean": list(mean), "std": list(std)}, folder / "split.pt")


def train_lightly(method: str, seed: int, args) -> dict:
    import lightning as L
    from lightly.data import LightlyDataset

    folder = split_folder(args)
    split = torch.load(folder / "split.pt", weights_only=False)
    n_train, fmt = split["n_train"], torch.channels_last if args.memory_format == "channels-last" else None
    steps_per_epoch = n_train // args.batch_size
    # The masked-token rows: LightlySSL's ViT at the contrastkit rows' size, and their optimiser (fit's AdamW).
    backbone = (lightly_vit(seed, matched_vit_dim(args), method) if method in TRANSFORMER_METHODS
                else make_backbone(seed, args.width))
    optimizer, lr = lightly_optimizer(method, args)
    parts, loss, transform = lightly_parts(method, backbone, steps_per_epoch * args.epochs, n_train,
                                           {"mean": split["mean"], "std": split["std"]})
    collate = parts.pop("collate_fn", None)  # I-JEPA's masks are drawn in the DataLoader, as its example draws them

    class LightlyRun(L.LightningModule):
        """A LightlySSL method as its examples write one: backbone, heads, the loss in training_step."""

        def __init__(self):
            super().__init__()
            self.backbone = backbone
            for name, part in parts.items():
                setattr(self, name, part)

        def training_step(self, batch, batch_idx):
            views = [v.contiguous(memory_format=fmt) if fmt and torch.is_tensor(v) else v for v in batch[0]]
            value = loss(self, views, self.global_step)
            self.log("train_loss_ssl", value)
            return value

        def configure_optimizers(self):
            return optimizer_and_schedule(self, steps_per_epoch, args.epochs, lr, optimizer)

    module = LightlyRun().to(memory_format=fmt) if fmt else LightlyRun()
    module.batch_images = lambda batch: len(batch[1])
    loader = torch.utils.data.DataLoader(LightlyDataset(str(folder / "train-jpeg"), transform=transform),
                                         batch_size=args.batch_size, shuffle=True, drop_last=True,
                                         num_workers=args.lightly_workers, collate_fn=collate)  # as its examples
    timer = timer_callback()
    torch.manual_seed(seed)
    trainer(args.epochs, [timer]).fit(module, train_dataloaders=loader)
    timing = vars_of(timer)
    encoder = module.target_backbone if method in EVALUATES_TARGET else backbone  # as contrastkit's method embeds
    return scores(lightly_embeddings(encoder, method, split), split["labels"], n_train) | {
        "images_per_s": timing["images"] / timing["epoch_seconds"],
        "step_images_per_s": timing["images"] / timing["step_seconds"], "train_seconds": timing["epoch_seconds"]}


def lightly_embeddings(encoder, method: str, split: dict) -> np.ndarray:
    """A LightlySSL row's embeddings of the split's images (eval view): the encoder's output, or for I-JEPA, whose
    ``IJEPABackbone`` returns every token, the mean of its patch tokens (as the paper and contrastkit's JEPA)."""
    from contrastkit.modalities.image.views.image import EvalView

    view, images = EvalView(split["mean"], split["std"]), split["images"]
    encoder.eval()
    with torch.inference_mode():
        embeddings = [encoder(view(images[i : i + 512])) for i in range(0, len(images), 512)]
    return torch.cat([e[:, 1:].mean(dim=1) if method == "jepa" else e for e in embeddings]).numpy()


def lightly_vit(seed: int, dim: int, method: str):
    """LightlySSL's ViT for the row's method, over torchvision's ``VisionTransformer`` as its examples build it, at
    the contrastkit rows' size: 32-pixel images, 4-pixel patches, depth 4, 3 heads, width ``dim``, MLP 4 x ``dim``.
    MSN and MAE: ``MaskedVisionTransformerTorchvision`` (its MSN example's; its MAE example now takes timm's ViT,
    which does not import here, and before that took this torchvision one), with fixed sine-cosine positions (its
    default), as contrastkit's ViT; I-JEPA: ``IJEPABackbone``, torchvision's learned positions. Its own architecture
    otherwise: torchvision's blocks and a [CLS] token (MSN's and MAE's embedding), where contrastkit's ViT takes
    the mean of its tokens."""
    import torchvision
    from lightly.models.modules import MaskedVisionTransformerTorchvision
    from lightly.models.modules.ijepa import IJEPABackbone

    torch.manual_seed(seed)
    vit = torchvision.models.VisionTransformer(image_size=32, patch_size=4, num_layers=4, num_heads=3, hidden_dim=dim,
                                               mlp_dim=4 * dim)
    vit.heads = torch.nn.Identity()  # its ImageNet classifier (61,000 weights at dim 60): unused, as in the examples
    backbone = IJEPABackbone.from_vit(vit) if method == "jepa" else MaskedVisionTransformerTorchvision(vit=vit)
    backbone.output_dim = dim
    return backbone


def lightly_parts(row: str, backbone, total_steps: int, n_train: int, normalize: dict):
    """(modules, loss(model, views, step), transform): LightlySSL's parts for the row's method at
    contrastkit's sizes and settings for it (module docstring)."""
    import torch.nn.functional as F
    from lightly import loss as losses
    from lightly.models.modules import heads
    from lightly.models.modules.nn_memory_bank import NNMemoryBankModule
    from lightly.models.utils import deactivate_requires_grad, update_momentum
    from lightly.transforms import (BYOLTransform, BYOLView1Transform, BYOLView2Transform, MMCRTransform,
                                    SimCLRTransform)
    from lightly.utils.scheduler import cosine_schedule
    from torch import nn

    method, extra = row_method(row)
    local_crops = extra.get(method, {}).get("local_crops", 0)
    dim, out, bn = backbone.output_dim, 128, nn.BatchNorm1d
    queue = min(4096, max(1, n_train // 2))  # contrastkit's MoCo queue and NNCLR support set
    simclr_views = SimCLRTransform(input_size=32, cj_strength=0.5, gaussian_blur=0.0, normalize=normalize)
    byol_views = BYOLTransform(BYOLView1Transform(input_size=32, gaussian_blur=0.0, normalize=normalize),
                               BYOLView2Transform(input_size=32, gaussian_blur=0.0, normalize=normalize))

    def frozen(module):
        module = copy.deepcopy(module)
        deactivate_requires_grad(module)
        return module

    def follow(m, rate: float) -> None:  # the EMA target (key) network follows the online one
        update_momentum(m.backbone, m.target_backbone, m=rate)
        update_momentum(m.head, m.target_head, m=rate)

    def two_layers(hidden: int, last_norm=None):
        return heads.ProjectionHead([(dim, hidden, bn(hidden), nn.ReLU()), (hidden, out, last_norm, None)])

    if method in ("simclr", "barlowtwins", "vicreg"):
        criterion = {"simclr": losses.NTXentLoss(temperature=0.5), "vicreg": losses.VICRegLoss(),
                     "barlowtwins": losses.BarlowTwinsLoss(lambda_param=5e-3)}[method]
        return ({"head": two_layers(dim if method == "simclr" else 4 * dim)},
                lambda m, views, step: criterion(*(m.head(m.backbone(v)) for v in views)),
                simclr_views if method == "simclr" else byol_views)
    if method in ("moco", "byol", "tico"):
        head = {"moco": heads.MoCoProjectionHead(dim, dim, out), "byol": heads.BYOLProjectionHead(dim, 2 * dim, out),
                "tico": heads.TiCoProjectionHead(dim, 2 * dim, out)}[method]
        parts = {"head": head, "target_backbone": frozen(backbone), "target_head": frozen(head)}
        if method in ("moco", "tico"):  # view 1 online, view 2 through the target (MoCo: the key)
            criterion = (losses.NTXentLoss(temperature=0.2, memory_bank_size=(queue, out)) if method == "moco"
                         else losses.TiCoLoss(beta=0.9, rho=8.0))

            def one_way(m, views, step):
                follow(m, 0.99 if method == "moco" else cosine_schedule(step, total_steps, 0.99, 1.0))
                with torch.no_grad():
                    target = m.target_head(m.target_backbone(views[1]))
                return criterion(m.head(m.backbone(views[0])), target)

            return parts, one_way, simclr_views if method == "moco" else byol_views
        parts["predictor"] = heads.BYOLPredictionHead(out, 2 * dim, out)
        criterion = losses.NegativeCosineSimilarity()

        def byol(m, views, step):
            follow(m, cosine_schedule(step, total_steps, 0.99, 1.0))
            p = [m.predictor(m.head(m.backbone(v))) for v in views]
            with torch.no_grad():
                z = [m.target_head(m.target_backbone(v)) for v in views]
            return 2.0 * (criterion(p[0], z[1]) + criterion(p[1], z[0]))  # x 4 = contrastkit's scale

        return parts, byol, byol_views
    if method in ("simsiam", "nnclr"):
        if method == "simsiam":
            criterion = losses.NegativeCosineSimilarity()
            parts = {"head": two_layers(dim, bn(out, affine=False)),
                     "predictor": heads.SimSiamPredictionHead(out, out // 4, out)}
        else:
            criterion = losses.NTXentLoss(temperature=0.5)
            parts = {"head": two_layers(4 * dim, bn(out)), "predictor": heads.NNCLRPredictionHead(out, 16 * out, out),
                     "support": NNMemoryBankModule(size=(queue, out))}

        def siamese(m, views, step):
            z = [m.head(m.backbone(v)) for v in views]
            p = [m.predictor(zi) for zi in z]
            if method == "simsiam":
                return 0.5 * (criterion(p[0], z[1].detach()) + criterion(p[1], z[0].detach()))
            neighbours = [m.support(z[0].detach(), update=False), m.support(z[1].detach(), update=True)]
            return 0.5 * (criterion(neighbours[0], p[1]) + criterion(neighbours[1], p[0]))

        return parts, siamese, simclr_views
    if method == "mmcr":
        criterion = losses.MMCRLoss(lmda=0.0)

        def mmcr(m, views, step):
            z = torch.stack([F.normalize(m.head(m.backbone(v)), dim=1) for v in views], dim=1)  # (B, k, d)
            return criterion(z, z)

        return ({"head": heads.MMCRProjectionHead(dim, dim, out, num_layers=1, batch_norm=True, use_bias=False)},
                mmcr, MMCRTransform(k=8, input_size=32, cj_strength=0.5, cj_bright=0.8, cj_contrast=0.8,
                                    cj_sat=0.8, cj_hue=0.2, gaussian_blur=0.0, normalize=normalize))
    if method in ("swav", "dino"):
        return lightly_multicrop_parts(method, local_crops, backbone, out, normalize, frozen)
    if method == "msn":
        return lightly_msn_parts(backbone, out, total_steps, normalize, frozen, follow)
    if method == "vicregl":
        return lightly_vicregl_parts(backbone, out, normalize, two_layers(4 * dim))
    if method == "mae":
        return lightly_mae_parts(backbone, normalize)
    if method == "jepa":
        return lightly_ijepa_parts(backbone, total_steps, normalize, frozen)
    raise ValueError(f"no LightlySSL run for {row!r}; there is one for: {', '.join(LIGHTLY_METHODS)}")


def lightly_vicregl_parts(backbone, out: int, normalize: dict, head):
    """LightlySSL's VICRegL as its example trains it (one backbone pass per view; the global branch on the pooled
    last feature map, the local one on each cell of it; ``VICRegLLoss()`` over both views' (global, local)
    features and grids), at contrastkit's sizes and settings (``methods/vicregl.py``): the global head is
    contrastkit's expander (``head``: dim -> 4 dim -> 128, VICReg's row here; LightlySSL's example takes its
    three-layer Barlow Twins head), the local one ``VicRegLLocalProjectionHead`` (dim -> dim -> 128, contrastkit's
    widths), the loss at its defaults (contrastkit's weights 25 / 25 / 1, alpha 0.75, matches (20, 4); its
    matching is LightlySSL's own, which keeps 20 / 4 pairs in feature space too and sorts them by distance:
    docs/benchmarks.md's table of the catalogue against LightlySSL's losses). Views: two global 32-pixel crops
    of area (0.08, 1) with their 4 x 4 grids (the map's size), no local crops (contrastkit builds none), BYOL's asymmetric colour ops at 32 pixels as
    contrastkit's ``LocatedViews`` (jitter (0.4, 0.4, 0.2, 0.1) with p 0.8, grayscale 0.2, no blur, solarisation
    0 / 0.2), built from LightlySSL's ``RandomResizedCropAndFlip`` and ``VICRegLViewTransform``:
    ``VICRegLTransform`` gives every global view the same blur and solarisation."""
    from lightly import loss as losses
    from lightly.models.modules import heads
    from lightly.transforms.image_grid_transform import ImageGridTransform
    from lightly.transforms.random_crop_and_flip_with_grid import RandomResizedCropAndFlip
    from lightly.transforms.vicregl_transform import VICRegLViewTransform

    from contrastkit.modalities.image.views.image import defaults_for

    dim = backbone.output_dim
    parts = {"head": head, "local_head": heads.VicRegLLocalProjectionHead(dim, dim, out)}
    criterion = losses.VICRegLLoss()

    def vicregl_loss(m, views, step):
        view_a, view_b, grid_a, grid_b = views
        features = []
        for view in (view_a, view_b):  # one pass per view, as both libraries' VICRegL
            maps = m.backbone.feature_map(view)  # (B, dim, 4, 4)
            features.append((m.head(maps.mean(dim=(2, 3))), m.local_head(maps.permute(0, 2, 3, 1))))
        return criterion(global_view_features=features, global_view_grids=[grid_a, grid_b])

    low, high = defaults_for(32)["crop_scale"]
    crop = RandomResizedCropAndFlip(crop_size=32, crop_min_scale=low, crop_max_scale=high, hf_prob=0.5, vf_prob=0.0,
                                    grid_size=4)
    transform = ImageGridTransform([(crop, VICRegLViewTransform(
        gaussian_blur_prob=0.0, solarize_prob=solarize, cj_prob=0.8, cj_strength=0.5, cj_bright=0.8, cj_contrast=0.8,
        cj_sat=0.4, cj_hue=0.2, random_gray_scale=0.2, normalize=normalize)) for solarize in (0.0, 0.2)])
    return parts, vicregl_loss, transform


def lightly_msn_parts(backbone, out: int, total_steps: int, normalize: dict, frozen, follow):
    """LightlySSL's MSN as its example trains it, at contrastkit's sizes and settings (``methods/msn.py``):
    ``MSNProjectionHead`` (dim -> 4 dim -> 4 dim -> 128), 1,024 prototypes, ``MSNLoss()`` (tau 0.1, sharpening
    0.25, ME-MAX weight 1, 3 Sinkhorn iterations: contrastkit's defaults), the anchor view with 15 % of its patch
    tokens dropped (``random_token_mask`` over the sequence with its [CLS] token, which is kept: 54 of 64 patches,
    as contrastkit keeps), the target view whole through an EMA copy whose rate rises linearly from 0.99 to 1
    (contrastkit's; the example: 0.996 constant). ``MSNTransform`` at 32 pixels with two random views, no focal
    views, crops of area (0.3, 1), contrastkit's colour jitter and no blur. Two departures from the example, both
    to train what the paper trains: its prototypes are given to the loss as ``prototypes.data``, so that no
    gradient reaches them and they stay at their initial values, where here they are trained (as the paper's and
    contrastkit's); and its mask is drawn over the number of patches, one fewer than the sequence with the [CLS]
    token, so that the last patch is never kept, where here it is drawn over the whole sequence."""
    from lightly import loss as losses
    from lightly.models import utils
    from lightly.models.modules import heads
    from lightly.transforms import MSNTransform
    from torch import nn

    from contrastkit.modalities.image.methods import msn
    from contrastkit.nn.momentum import linear_momentum

    dim = backbone.output_dim
    head = heads.MSNProjectionHead(dim, 4 * dim, out)
    prototypes = nn.Linear(out, msn.DEFAULTS["prototypes"], bias=False).weight  # as the example: (K, out)
    parts = {"head": head, "target_backbone": frozen(backbone), "target_head": frozen(head), "prototypes": prototypes}
    criterion = losses.MSNLoss()

    def msn_loss(m, views, step):
        follow(m, linear_momentum(step, total_steps, msn.DEFAULTS["momentum"]))
        target_view, anchor_view = views
        with torch.no_grad():
            targets = m.target_head(m.target_backbone(images=target_view))
        keep, _ = utils.random_token_mask(size=(len(anchor_view), m.backbone.sequence_length),
                                          mask_ratio=msn.DEFAULTS["mask_ratio"], device=anchor_view.device)
        anchors = m.head(m.backbone(images=anchor_view, idx_keep=keep))
        return criterion(anchors, targets, m.prototypes)

    transform = MSNTransform(random_size=32, random_views=2, focal_views=0, random_crop_scale=(msn.CROP_SCALE_LOW, 1.0),
                             cj_strength=0.5, gaussian_blur=0.0, normalize=normalize)
    return parts, msn_loss, transform


def lightly_untrained_vits(args) -> None:
    """Print LightlySSL's ViTs of the MSN / MAE rows and of the I-JEPA row at their initial weights (each training
    seed's), scored as their trained rows embed them: the LightlySSL rows' own untrained baseline, where the table's
    untrained ViT is contrastkit's. Printed, not stored."""
    torch.set_num_threads(args.threads)
    prepare_split(args)
    split = torch.load(split_folder(args) / "split.pt", weights_only=False)
    print("| LightlySSL ViT at its initial weights | seed | kNN top-1 % | linear, 10 labels/class % |")
    print("|---|---:|---:|---:|")
    for seed in args.seeds:
        for method, name in (("msn", "masked ViT (MSN, MAE), [CLS]"), ("jepa", "IJEPABackbone, mean of patch tokens")):
            encoder = lightly_vit(seed, matched_vit_dim(args), method)
            result = scores(lightly_embeddings(encoder, method, split), split["labels"], split["n_train"])
            print(f"| {name} | {seed} | {100 * result['knn_top1']:.2f} | {100 * result[FEW_LABELS]:.2f} |", flush=True)


def lightly_mae_parts(backbone, normalize: dict):
    """LightlySSL's MAE as its torchvision example trains it (``MAEDecoder``; the encoder ``lightly_vit``'s): 75 % of
    the tokens masked by ``random_token_mask`` over the sequence with its [CLS] token, which is kept (16 of 64
    patches visible, as contrastkit keeps), the encoded visible tokens embedded to the decoder's width and set among
    copies of a learned mask token, the decoder over the whole sequence (fixed sine-cosine positions), its
    predictions at the masked tokens regressed on their patches (``nn.MSELoss``), at contrastkit's sizes and settings
    (``methods/mae.py``): decoder 2 blocks of width 24 (half the encoder's, rounded to a multiple of 4 x 3 heads),
    3 heads, MLP 4 x its width (the example: 1 block of 512, 16 heads). One departure from the example, to train
    contrastkit's and the paper's default: each target patch is normalised by its own mean and standard deviation
    (MAE's ``norm_pix_loss``: contrastkit's ``normalize_patches``), where the example regresses the raw normalised
    pixels. ``MAETransform`` at 32 pixels: a crop of area (0.2, 1) and a flip, contrastkit's."""
    import torch.nn.functional as F
    from lightly.models import utils
    from lightly.models.modules.masked_autoencoder import MAEDecoder
    from lightly.transforms import MAETransform
    from torch import nn

    from contrastkit.modalities.image.encoders.vit import scaled_dim
    from contrastkit.modalities.image.methods import mae
    from contrastkit.objectives.masked_pixels import normalize_patches

    dim, heads, patch = backbone.output_dim, mae.DEFAULTS["heads"], backbone.vit.patch_size
    length = backbone.sequence_length  # the patches and [CLS]
    width = scaled_dim(dim, heads, 0.5)  # contrastkit's decoder_dim default
    parts = {"decoder": MAEDecoder(seq_length=length, num_layers=mae.DEFAULTS["decoder_depth"], num_heads=heads,
                                   embed_input_dim=dim, hidden_dim=width, mlp_dim=4 * width, out_dim=patch**2 * 3),
             "mask_token": nn.Parameter(torch.zeros(1, 1, width))}

    def mae_loss(m, views, step):
        images = views[0]  # MAETransform gives one view
        keep, masked = utils.random_token_mask(size=(len(images), length), mask_ratio=mae.DEFAULTS["mask_ratio"],
                                               device=images.device)
        tokens = utils.repeat_token(m.mask_token, (len(images), length))
        tokens = utils.set_at_index(tokens, keep, m.decoder.embed(m.backbone.encode(images=images, idx_keep=keep)))
        predictions = m.decoder.predict(utils.get_at_index(m.decoder.decode(tokens), masked))
        targets = utils.get_at_index(utils.patchify(images, patch), masked - 1)  # - 1: token 0 is [CLS]
        return F.mse_loss(predictions, normalize_patches(targets))

    return parts, mae_loss, MAETransform(input_size=32, min_scale=mae.CROP_SCALE[0], normalize=normalize)


class IJEPABatches:
    """LightlySSL's I-JEPA mask collator in a DataLoader, its batch given as the runner's: ([images, context masks,
    target masks], labels, file names). A class, not a closure, so that any worker start method can take it."""

    def __init__(self, collator):
        self.collator = collator

    def __call__(self, samples):
        (images, labels, names), context, targets = self.collator(samples)
        return [images, context, targets], labels, names


def lightly_ijepa_parts(backbone, total_steps: int, normalize: dict, frozen):
    """LightlySSL's I-JEPA as its example trains it (``IJEPABackbone``, ``IJEPAPredictor``, ``IJEPAMaskCollator`` in
    the DataLoader, ``IJEPATransform``; the target encoder's tokens layer-normalised, gathered at each target block
    and regressed on the predictor's), at contrastkit's sizes and settings (``methods/jepa.py``): the predictor 2
    blocks of width 24 (half the encoder's, rounded to a multiple of 4 x 3 heads), 3 heads, MLP 4 x its width
    (built as ``IJEPAPredictor.from_vit_encoder`` builds it, from an encoder of those sizes: that method fixes the
    widths at ViT-B's 768); 4 target blocks of scale (0.15, 0.2) and aspect (0.75, 1.5), a context block of scale
    (0.85, 1) without them, at least 4 context patches; the loss the mean squared error (contrastkit's ``l2``; the
    example: smooth L1); the target an EMA of the context encoder at a rate rising linearly from 0.99 to 1 (the
    example: from 0.996); a crop of area (0.3, 1) and no flip (``IJEPATransform`` less its flip: contrastkit's and
    the paper's). Kept as LightlySSL implements it: ``IJEPABackbone.encode`` prepends the [CLS] token before the
    collator's patch indices (0 to 63) select tokens, so index 0 selects [CLS] and index k patch k - 1, for the context
    and the targets alike, while the predictor places each at patch k's position (docs/benchmarks.md)."""
    import torch.nn.functional as F
    import torchvision.transforms as T
    from lightly.data import IJEPAMaskCollator
    from lightly.models import utils
    from lightly.models.modules.ijepa import IJEPAPredictor
    from lightly.transforms.ijepa_transform import IJEPATransform
    from torch import nn
    from torchvision.models.vision_transformer import Encoder

    from contrastkit.modalities.image.encoders.vit import scaled_dim
    from contrastkit.modalities.image.methods import jepa
    from contrastkit.nn.momentum import linear_momentum

    options = jepa.DEFAULTS
    dim, heads, patches = backbone.output_dim, options["heads"], (32 // backbone.patch_size) ** 2
    width = scaled_dim(dim, heads, 0.5)  # contrastkit's predictor_dim default
    predictor = IJEPAPredictor(seq_length=patches, num_layers=1, num_heads=1, hidden_dim=width,
                               predictor_embed_dim=width, num_patches=patches, mlp_dim=dim,  # its in / out width
                               dropout=0.0, attention_dropout=0.0)
    blocks = Encoder(seq_length=patches, num_layers=options["predictor_depth"], num_heads=heads, hidden_dim=width,
                     mlp_dim=4 * width, dropout=0.0, attention_dropout=0.0,
                     norm_layer=functools.partial(nn.LayerNorm, eps=1e-6))  # torchvision's ViT's
    predictor.layers, predictor.ln = blocks.layers, blocks.ln  # as from_vit_encoder
    collator = IJEPAMaskCollator(input_size=32, patch_size=backbone.patch_size, enc_mask_scale=options["context_scale"],
                                 pred_mask_scale=options["target_scale"], aspect_ratio=options["target_aspect"],
                                 nenc=1, npred=options["num_targets"], min_keep=patches // 16)
    parts = {"predictor": predictor, "target_backbone": frozen(backbone), "collate_fn": IJEPABatches(collator)}

    def ijepa_loss(m, views, step):
        images, context, targets = views
        utils.update_momentum(m.backbone, m.target_backbone, m=linear_momentum(step, total_steps, options["momentum"]))
        with torch.no_grad():
            h = m.target_backbone(images)
            h = F.layer_norm(h, (h.size(-1),))
            h = utils.repeat_interleave_batch(utils.apply_masks(h, targets), len(images), repeat=len(context))
        return F.mse_loss(m.predictor(m.backbone(images, context), context, targets), h)

    transform = IJEPATransform(input_size=32, min_scale=0.3, normalize=normalize)  # 0.3: contrastkit's JEPA crop
    transform.transform.transforms = [t for t in transform.transform.transforms
                                      if not isinstance(t, T.RandomHorizontalFlip)]
    return parts, ijepa_loss, transform


def lightly_multicrop_parts(method: str, local_crops: int, backbone, out: int, normalize: dict, frozen):
    """LightlySSL's SwaV and DINO as its examples train them, at contrastkit's sizes, crops and settings:
    SwaV with ``SwaVProjectionHead`` (dim -> dim -> 128), ``SwaVPrototypes`` (512, normalised before each
    step), ``SwaVLoss()`` over the global (high-resolution) and local crops; DINO with
    ``DINOProjectionHead`` (its last layer; its MLP built from ``ProjectionHead`` blocks as contrastkit's:
    dim -> 4 dim -> 128, BatchNorm and GELU, where LightlySSL's has one more hidden layer) to 2048 outputs,
    an EMA teacher at constant momentum 0.99 and ``DINOLoss(output_dim=2048)`` (teacher temperature 0.04
    throughout). Crops: contrastkit's recipe at 32 pixels (``multicrop_recipe``)."""
    import torch.nn.functional as F
    from lightly import loss as losses
    from lightly.models.modules import heads
    from lightly.models.utils import update_momentum
    from lightly.transforms import DINOTransform, SwaVTransform
    from torch import nn

    from contrastkit.modalities.image.methods import dino, swav
    from contrastkit.modalities.image.views.multicrop import multicrop_recipe

    dim = backbone.output_dim
    recipe = multicrop_recipe(32, swav.GLOBAL_SCALE_LOW if method == "swav" else dino.GLOBAL_SCALE_LOW)
    if method == "swav":
        parts = {"head": heads.SwaVProjectionHead(dim, dim, out), "prototypes": heads.SwaVPrototypes(out, 512)}
        criterion = losses.SwaVLoss()

        def swav_loss(m, views, step):
            m.prototypes.normalize()
            scores = [m.prototypes(F.normalize(m.head(m.backbone(v)), dim=1), step) for v in views]
            return criterion(scores[:2], scores[2:])

        transform = SwaVTransform(crop_sizes=(32, recipe["local_crop_size"]), crop_counts=(2, local_crops),
                                  crop_min_scales=(recipe["global_crop_scale"][0], recipe["local_crop_scale"][0]),
                                  crop_max_scales=(1.0, recipe["local_crop_scale"][1]), cj_strength=0.5,
                                  gaussian_blur=0.0, normalize=normalize)
        return parts, swav_loss, transform
    def dino_head():
        head = heads.DINOProjectionHead(dim, 4 * dim, out, 2048, batch_norm=True)
        head.layers = heads.ProjectionHead([(dim, 4 * dim, nn.BatchNorm1d(4 * dim), nn.GELU()),
                                            (4 * dim, out, None, None)]).layers
        return head

    # A weight-normalised layer cannot be deep-copied: the teacher head is built again (as LightlySSL's
    # DINO example builds it) and starts from the student's weights.
    head, teacher_head = dino_head(), dino_head()
    teacher_head.load_state_dict(head.state_dict())
    teacher_head.requires_grad_(False)
    parts = {"head": head, "target_backbone": frozen(backbone), "target_head": teacher_head}
    criterion = losses.DINOLoss(output_dim=2048)

    def dino_loss(m, views, step):
        update_momentum(m.backbone, m.target_backbone, m=0.99)
        update_momentum(m.head, m.target_head, m=0.99)
        with torch.no_grad():
            teacher = [m.target_head(m.target_backbone(v)) for v in views[:2]]
        student = [m.head(m.backbone(v)) for v in views]
        return criterion(teacher, student)

    transform = DINOTransform(global_crop_size=32, global_crop_scale=recipe["global_crop_scale"],
                              local_crop_size=recipe["local_crop_size"], local_crop_scale=recipe["local_crop_scale"],
                              n_local_views=local_crops, cj_strength=1.0, cj_bright=0.4, cj_contrast=0.4, cj_sat=0.2,
                              cj_hue=0.1, gaussian_blur=(0.0, 0.0, 0.0), solarization_prob=0.2, normalize=normalize)
    return parts, dino_loss, transform


# -- orchestration --------------------------------------------------------------------------------

def anchor_python() -> tuple[str | None, str]:
    """(the anchor environment's Python, "") or (None, why LightlySSL rows cannot run)."""
    env = os.environ.get("CONTRASTKIT_ANCHOR_ENV")
    if not env:
        return None, "CONTRASTKIT_ANCHOR_ENV is not set (benchmarks/README.md, 'Anchor environment')"
    python = Path(env) / "bin" / "python"
    check = subprocess.run([str(python), "-c", "import lightly, lightning, contrastkit"], capture_output=True,
                           text=True) if python.exists() else None
    if check is None or check.returncode:
        why = check.stderr.strip().splitlines()[-1:] if check else ["no bin/python (make anchors builds it)"]
        return None, f"LightlySSL does not run in '{env}': {' '.join(why)}"
    return str(python), ""


def run_job(python: str, library: str, method: str, seed: int, args) -> dict | None:
    """One run in a subprocess, its process tree's PSS sampled from here; {row name: record}, or None."""
    result = Path(args.out_dir) / "results" / f"{library}-{method}-seed{seed}.json"
    result.parent.mkdir(parents=True, exist_ok=True)
    result.unlink(missing_ok=True)
    job = json.dumps(vars(args) | {"job": [library, method, seed], "result": str(result)})
    started = time.perf_counter()
    process = subprocess.Popen([python, str(Path(__file__).resolve()), "--worker", job],
                               env={**os.environ, "OMP_NUM_THREADS": str(args.threads)})
    memory = PeakMemory(process.pid)
    while process.poll() is None:
        memory.sample()
        # Every 2 s: reading smaps_rollup of two run trees every 0.5 s took ~20 % of a core from the runs
        # themselves; a run's memory plateaus for minutes, so the peak is still close (a lower bound).
        time.sleep(2.0)
    if process.returncode or not result.exists():
        print(f"FAILED: {library} {method} seed {seed} (exit code {process.returncode}); nothing stored", flush=True)
        return None
    output = json.loads(result.read_text())
    extra = {"run_seconds": time.perf_counter() - started}
    if library != BASELINE:
        extra["peak_pss_mib"] = memory.report()["peak_pss_uss_mib"]["total"][0]
    return {name: {"results": figures | extra, "versions": output["versions"]} for name, figures in output["rows"].items()}


def run_all(args) -> None:
    store = Path(args.store)
    store.parent.mkdir(parents=True, exist_ok=True)
    stored = {row_key(r["library"], r["method"], r["seed"], r["settings"]) for r in read_store(store)}
    lightly_python, reason = anchor_python() if "lightly" in args.libraries else (None, "")
    if "lightly" in args.libraries and lightly_python is None:
        print(f"LightlySSL rows skipped: {reason}.", flush=True)
    # Method by method, both libraries and every seed, so that rows complete in order over sessions.
    jobs = [(BASELINE, "baselines", BASELINE_ROWS, seed) for seed in args.seeds]
    for method in args.methods:
        for seed in args.seeds:
            jobs += [("contrastkit", method, (method,), seed)] if "contrastkit" in args.libraries else []
            jobs += [("lightly", method, (method,), seed)] if lightly_python and method in LIGHTLY_METHODS else []
    pending = []
    for library, job, names, seed in jobs:
        if all(row_key(library, name, seed, run_settings(library, name, args)) in stored for name in names):
            print(f"stored already: {library} {job} seed {seed}", flush=True)
        else:
            pending.append((library, job, seed))
    if any(library == "lightly" for library, _, _ in pending):
        prepare_split(args)  # once, before any run reads it
    appending = threading.Lock()

    def execute(library: str, job: str, seed: int) -> None:
        print(f"running: {library} {job} seed {seed}", flush=True)
        rows = run_job(lightly_python if library == "lightly" else sys.executable, library, job, seed, args) or {}
        for name, row in rows.items():
            record = {"library": library, "method": name, "seed": seed,
                      "settings": run_settings(library, name, args), **row, "concurrent_runs": args.jobs,
                      "finished": time.strftime("%Y-%m-%d %H:%M:%S")}
            with appending, store.open("a") as file:
                file.write(json.dumps(record) + "\n")
            print(f"stored: {library} {name} seed {seed}: {json.dumps(row['results'])}", flush=True)

    # --jobs N keeps N runs going (each its own subprocess at --threads threads); each run's images/s is
    # then measured beside the others', which the table says.
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        for finished in [pool.submit(execute, *job) for job in pending]:
            finished.result()
    print(table(read_store(store), args))


# -- the table ------------------------------------------------------------------------------------

def spread(values: list[float]) -> str:
    """median (min–max) in percent."""
    median, low, high = (f"{100 * v:.1f}" for v in (statistics.median(values), min(values), max(values)))
    return median if len(values) == 1 else f"{median} ({low}–{high})"


def table(records: list[dict], args) -> str:
    """The markdown table of the stored runs that match ``args``' settings, for ``args``' seeds."""
    wanted = [(BASELINE, name) for name in BASELINE_ROWS] + [(library, method) for method in args.methods
                                                             for library in args.libraries
                                                             if library == "contrastkit" or method in LIGHTLY_METHODS]
    groups: dict[tuple[str, str], dict[int, dict]] = {}
    for record in records:  # the last stored run of a (library, method, seed) wins
        key = (record["library"], record["method"])
        if key in wanted and record["seed"] in args.seeds and record["settings"] == run_settings(*key, args):
            groups.setdefault(key, {})[record["seed"]] = record
    rows = sorted(([library, method, list(by_seed.values())] for (library, method), by_seed in groups.items()),
                  key=lambda row: -statistics.median(r["results"]["knn_top1"] for r in row[2]))
    versions, builds = [r["versions"] for *_, records in rows for r in records], {}
    for library, _, records in rows:
        for v in (r["versions"] for r in records):
            builds.setdefault(library, set()).add(", ".join(f"{k} {v[k]}" for k in ("torch", "lightly") if k in v))
    commits = sorted({v["git"]["commit"] + (" with changes to src/ or benchmarks/" if v["git"]["dirty"] else "")
                      for v in versions})
    lines = [f"Data: {args.data}, `contrastkit fit`'s held-out split ({HOLDOUT:.0%} held out, stratified, drawn with "
             f"the seed; kNN bank: the pretraining images; linear probe: 10 labels per class; development data, no "
             f"test split is scored). {args.backbone} width {args.width}, batch {args.batch_size}, {args.epochs} "
             f"epoch(s), memory format {args.memory_format}, {args.threads} threads (LightlySSL: and "
             f"{args.lightly_workers} DataLoader workers). Seeds {', '.join(map(str, args.seeds))}: median (min–max).",
             "Builds: " + "; ".join(f"{library} rows: {' / '.join(sorted(found))}" for library, found in builds.items())
             + (" — not the same torch build" if len({v["torch"] for v in versions}) > 1 else "")
             + f". Commits: {', '.join(commits)}.", "",
             "| rank | method | library | kNN top-1 % | linear, 10 labels/class % | images/s | peak RSS MiB | "
             "peak PSS MiB | training s | seeds | collapse flagged |", "|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    above = None
    for i, (library, method, records) in enumerate(rows):
        results = [r["results"] for r in records]
        knn = [r["knn_top1"] for r in results]
        # a tie: this row's kNN range over the seeds overlaps the range of the row above
        rank = above[0] if above and min(knn) <= max(above[1]) and min(above[1]) <= max(knn) else i + 1
        above = (rank, knn)
        cells = [f"{statistics.median(values):.0f}" if (values := [r[key] for r in results if key in r]) else "–"
                 for key in ("images_per_s", "peak_rss_mib", "peak_pss_mib", "train_seconds")]
        collapsed = " / ".join(sorted({"yes" if r["collapsed"] else "no" for r in results if "collapsed" in r}))
        lines.append(f"| {rank} | {method} | {'–' if library == BASELINE else library} | {spread(knn)} | "
                     f"{spread([r[FEW_LABELS] for r in results])} | {' | '.join(cells)} | "
                     f"{len(results)}/{len(args.seeds)} | {collapsed or '–'} |")
    shared = sorted({r.get("concurrent_runs", 1) for *_, records in rows for r in records} - {1})
    if shared:
        lines += ["", f"images/s and training s: some runs had {' or '.join(map(str, shared))} runs at a time on the "
                      f"machine (--jobs), each at {args.threads} thread(s): the speed columns compare rows only roughly; "
                      f"the speed comparison at equal settings is image_side_by_side.py's."]
    lines += ["", "Rank: by median kNN top-1; a row whose seeds' kNN range overlaps that of the row above has its "
              "rank (a tie). images/s: training images / wall time of the training epochs. Peak RSS: the run's "
              "process; peak PSS: its process tree, DataLoader workers included (sampled). Collapse: fit's check "
              "of the held-out projections.", "Command: python benchmarks/rank_image_methods.py "
              + " ".join(a for a in sys.argv[1:] if a != "--table")]
    return "\n".join(lines)


# -- the pilot that fixed the epoch count -----------------------------------------------------------

def pilot(args) -> None:
    """SimCLR, seed 0, ``--pilot`` epochs with fit's online kNN probe every epoch, beside raw pixels'
    kNN on the probe's bank and queries: the curve, and the first epochs at raw + 5 and raw + 6."""
    import csv

    from contrastkit.evaluation.knn import weighted_knn_accuracy
    from contrastkit.modalities.image.config import FitConfig
    from contrastkit.modalities.image.training.run import fit, raw_pixels
    from contrastkit.modalities.image.training.run_data import open_run_data

    torch.set_num_threads(args.threads)
    out = Path(args.out_dir) / f"pilot-simclr-seed0-{args.pilot}-epochs-lr{args.lr:g}-width{args.width:g}"
    shutil.rmtree(out, ignore_errors=True)
    config = FitConfig(**fit_options("simclr", args) | {"epochs": args.pilot, "probe_every": 1, "baselines": True},
                       seed=0, out=str(out))
    summary, run_data = fit(config), open_run_data(config)
    bank, queries = run_data.probe_rows()
    bank_pixels, query_pixels = (raw_pixels(run_data.read(rows), run_data.info) for rows in (bank, queries))
    raw = 100 * weighted_knn_accuracy(bank_pixels, run_data.labels[bank], query_pixels, run_data.labels[queries],
                                      k=200, temperature=0.1)
    with (out / "metrics.csv").open() as file:
        curve = [(int(r["epoch"]) + 1, 100 * float(r["probe/knn_top1"])) for r in csv.DictReader(file)
                 if r.get("probe/knn_top1")]
    print(f"\nPilot: SimCLR, seed 0, {args.pilot} epochs (one cosine schedule over all of them); online probe: bank "
          f"{len(bank)} pretraining images, {len(queries)} held-out queries; raw pixels on the same: {raw:.2f} %; "
          f"{summary['seconds'] / args.pilot:.1f} s per training epoch.\n\n| epoch | SimCLR kNN % | minus raw pixels |"
          "\n|---:|---:|---:|\n" + "\n".join(f"| {epoch} | {knn:.2f} | {knn - raw:+.2f} |" for epoch, knn in curve))
    for margin in (5, 6):
        first = next((epoch for epoch, knn in curve if knn - raw >= margin), None)
        print(f"first epoch at raw pixels + {margin}: {first or f'none within {args.pilot} epochs'}")
    runs = {"SimCLR": summary, "raw pixels": summary["baselines"]["raw"], "untrained": summary["baselines"]["untrained"]}
    print(f"after {args.pilot} epochs, the table's protocol (bank: all pretraining images): " + "; ".join(
        f"{name} kNN {100 * r['knn_top1']:.2f}, linear 10/class {100 * r[FEW_LABELS]:.2f}" for name, r in runs.items()))
    (out / "pilot.json").write_text(json.dumps({"curve": curve, "raw_probe_knn": raw, "summary": summary}, indent=1))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="+", default=None,
                        help="rows to run: method names, or NAME+localN for a multi-crop method with N local crops "
                             f"(default: every image method of the registry and {', '.join(DEFAULT_VARIANTS)})")
    parser.add_argument("--libraries", nargs="+", choices=["contrastkit", "lightly"], default=["contrastkit", "lightly"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--epochs", type=int, default=EPOCHS)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--width", type=float, default=0.125)
    parser.add_argument("--lr", type=float, default=LR,
                        help=f"SGD rate for a batch of 256, both libraries (default {LR}: LightlySSL's CIFAR-10 "
                             "benchmark rate at batch 256, fixed by the second pilot; fit's own default is 0.06); "
                             "JEPA keeps AdamW's default")
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--data", default="cifar10-test")
    parser.add_argument("--threads", type=int, default=2, help="torch threads of each run (and its OMP_NUM_THREADS)")
    parser.add_argument("--jobs", type=int, default=1,
                        help="runs at a time (e.g. --jobs 2 --threads 1 on 2 cores: more runs per hour, each run's "
                             "images/s then measured beside another's; the table says so)")
    parser.add_argument("--memory-format", choices=["nchw", "channels-last"], default="nchw",
                        help="of both libraries' runs (nchw: LightlySSL's default; contrastkit's own is channels-last)")
    parser.add_argument("--lightly-workers", type=int, default=2, help="DataLoader workers of LightlySSL runs")
    parser.add_argument("--store", default=str(STORE),
                        help="JSON lines of finished runs (default: the committed store, so the table grows over sessions)")
    parser.add_argument("--out-dir", default=str(DEFAULT_DIR), help="run folders, splits, worker results")
    parser.add_argument("--table", action="store_true", help="print the table from the store; train nothing")
    parser.add_argument("--pilot", type=int, default=0, metavar="EPOCHS", help="run the epoch-count pilot")
    parser.add_argument("--untrained-lightly-vits", action="store_true",
                        help="print LightlySSL's ViTs at their initial weights, scored as their rows (anchor env)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)  # a run's settings as JSON, in its subprocess
    args = parser.parse_args(argv)
    if args.worker:
        return worker(argparse.Namespace(**json.loads(args.worker)))
    from contrastkit.modalities.image.methods import image_method_names

    known = image_method_names()
    args.methods = args.methods or known + list(DEFAULT_VARIANTS)
    unknown = []
    for row in args.methods:
        try:
            method, _ = row_method(row)
        except ValueError as error:
            parser.error(str(error))
        if method not in known:
            unknown.append(row)
    if unknown:
        parser.error(f"unknown image method(s) {', '.join(unknown)}; the image methods: {', '.join(known)} "
                     f"(and NAME+localN for {', '.join(LOCAL_CROP_METHODS)})")
    if args.pilot:
        return pilot(args)
    if args.jobs < 1:
        parser.error("--jobs must be at least 1")
    if args.epochs is None or args.epochs < 1:
        parser.error("--epochs must be at least 1 (the protocol's count is 25: the module docstring)")
    if args.table:
        return print(table(read_store(Path(args.store)), args))
    if args.untrained_lightly_vits:
        return lightly_untrained_vits(args)
    run_all(args)


if __name__ == "__main__":
    main()
