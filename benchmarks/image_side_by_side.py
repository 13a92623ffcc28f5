"""contrastkit beside LightlySSL 1.6 on "CIFAR-10 small": speed, memory, data wait, overhead, kNN,
at equal settings and repeated (issues 9 and 30).

Data (issue 9): images 0-799 of each class of ``cifar10-test`` pretrain (8,000, labels ignored),
images 800-999 of each class are the kNN queries (2,000); weighted kNN, cosine, k = 200,
t = 0.1, bank = the 8,000 with their labels. Backbone for both libraries: contrastkit's CIFAR
ResNet-18 (3x3 stem, no max-pool) at width 0.125 (8-16-32-64 channels), initialised from the
same seed, so the two runs differ only in what the libraries put around it. Batch 256, SGD
(lr 0.06, momentum 0.9, weight decay 5e-4 on weights of dimension > 1), one warm-up epoch then
cosine decay, per step, for both. The method settings are contrastkit's defaults, passed to both
libraries explicitly and printed with the table (``method_settings``):

- SimCLR: NT-Xent, T = 0.5, projection 64-64-128 with BN.
- BYOL: projection 64-128-128, predictor 128-128-128, EMA rate 0.99 -> 1 on a per-step cosine.
  LightlySSL's example loss ``0.5 (-cos + -cos)`` is scaled by 4 to contrastkit's
  ``(2 - 2 cos) + (2 - 2 cos)``, so the same optimiser takes the same steps.
- MoCo v2: query encoder on view 1, EMA key encoder (rate 0.99, constant) on view 2, InfoNCE at
  T = 0.2 over [key, queue], queue min(4096, N / 2) keys (4,000 here), projection 64-64-128 with
  ReLU and no BN, not symmetric. LightlySSL: ``MoCoProjectionHead``, ``NTXentLoss`` with
  ``memory_bank_size=(queue, 128)``, ``update_momentum`` before each step's forward (the same
  sequence of key encoders as contrastkit's update after each optimiser step). One difference
  stays: LightlySSL's bank starts full of random unit vectors, contrastkit's queue starts empty
  and is full after queue / batch steps (16 of the 93 steps of 3 epochs).

Views: SimCLR's without blur (crop 0.08-1, flip, jitter 0.4/0.4/0.4/0.1 p 0.8, gray 0.2) for
SimCLR and MoCo, BYOL's asymmetric ones without blur (solarise p 0.2 on view 2) for BYOL.
contrastkit runs as ``contrastkit fit`` does (Lightning, ``SSLModule``, the uint8 in-memory
batches and batched kornia views). LightlySSL runs as its examples do (``image_side_by_side_lightly.py``:
its heads, losses and momentum utilities in a LightningModule, ``LightlyDataset`` over the JPEG
files with its transforms in ``--lightly-workers`` DataLoader workers).

Memory format (``--formats``, one row each), an equal setting for both libraries:

- ``both-nchw``: both NCHW (contrastkit ``channels_last=False``, ``--no-channels-last``).
- ``both-channels-last``: contrastkit ``channels_last=True``; LightlySSL's module (backbone and
  heads) ``.to(memory_format=torch.channels_last)`` and each batch of views converted likewise
  inside its training step.
- ``library-default``: each library as it trains by default, contrastkit channels-last and
  LightlySSL NCHW: a *different setting*, whose ratio measures the layout as well as the libraries.
Every run checks at its first training forward that the backbone's first convolution's weight and
input are in the format asked (channels-last- or NCHW-contiguous), and fails if not.

Repeats (``--repeats N``): repeat r runs every (format, method) with seed ``--seed + r`` in both
libraries, contrastkit first when r is even and LightlySSL first when r is odd; each run in its own
subprocess. A repeat's two runs form a pair, whose images/s ratio the table reports as median and
min–max over repeats. Each run appends one JSON row to ``--out``; a rerun with the same settings
skips the runs already there (more ``--repeats`` adds repeats), and ``--table-only`` prints the
tables from the file (``image_side_by_side_table.py``). Reported per run:

    images/s        training images / wall time of the training epochs
    peak PSS, USS   main process / its children (DataLoader workers) / both, sampled every
                    ``--memory-interval`` s from the parent (not RSS: ``process_memory.py``)
    data wait       share of epoch time between the end of one step and the start of the next
    overhead share  1 - floor / (epoch time / steps); the floor is the backbone's own work on one
                    step's batch, measured in the same process after training, in the memory
                    format the run trained in: forward + backward of the views that train it
                    (SimCLR, BYOL: 2 x 256; MoCo: 256) plus the no-grad forward of the views a
                    momentum encoder embeds (BYOL: 2 x 256; MoCo: 256)
    kNN top-1       after the same epochs

Must run where both libraries import (the anchor environment, ``$CONTRASTKIT_ANCHOR_ENV``;
``make anchors`` builds it, benchmarks/README.md)::

    flock .heavy.lock -c 'OMP_NUM_THREADS=2 "$CONTRASTKIT_ANCHOR_ENV/bin/python" \\
        benchmarks/image_side_by_side.py --epochs 3 --repeats 3 --methods simclr byol moco \\
        --formats both-nchw both-channels-last'

A smoke test (seconds per run): ``--epochs 1 --train-per-class 20 --batch-size 64 --repeats 2``.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from contrastkit.core.paths import data_root
from image_side_by_side_lightly import head_parameters, lightly_module, lightly_transform
from image_side_by_side_table import load_rows, print_tables, run_key, settings_id
from process_memory import PeakMemory  # noqa: F401 (also imported from here by rank_image_methods.py)

PRETRAIN_PER_CLASS = 800
STEPS_PER_FLOOR = 3
METHODS = ("simclr", "byol", "moco")
FORMATS = ("both-nchw", "both-channels-last", "library-default")
LIBRARIES = ("contrastkit", "lightly")
# Batches of views per step: (trained by the backbone: forward + backward, embedded by a momentum
# encoder of the same architecture: forward only). The floor is this work and nothing else.
BACKBONE_WORK = {"simclr": (2, 0), "byol": (2, 2), "moco": (1, 1)}


# -- data --------------------------------------------------------------------------------------

def cifar_small(data: str, per_class: int = PRETRAIN_PER_CLASS):
    """(train images uint8 (8000, 3, 32, 32), train labels, query images (2000, ...), query labels,
    train files): images 0-799 of each class pretrain, 800-999 are queries."""
    from contrastkit.modalities.image.sources import open_image_source
    from contrastkit.modalities.image.sources.image_folder import list_image_files

    source = open_image_source(data)
    files, _, _ = list_image_files(Path(data))
    labels = source.labels.numpy()
    rank_in_class = np.concatenate([np.arange((labels == c).sum()) for c in np.unique(labels)])
    train = np.flatnonzero(rank_in_class < per_class)
    query = np.flatnonzero(rank_in_class >= PRETRAIN_PER_CLASS)  # always images 800-999
    return (source.images[train], source.labels[train], source.images[query], source.labels[query],
            [files[i] for i in train])


def prepare(data: str, workdir: Path, per_class: int) -> None:
    """The split as one .pt file, and a folder of links to the training JPEGs for LightlySSL."""
    from contrastkit.modalities.image.sources.image_source import ImageSource

    train, train_labels, query, query_labels, files = cifar_small(data, per_class)
    mean, std = ImageSource(train, train_labels, name="cifar-small").channel_mean_std()
    torch.save({"train": train, "train_labels": train_labels, "query": query, "query_labels": query_labels,
                "mean": mean, "std": std}, workdir / "split.pt")
    folder = workdir / "train-jpeg"
    for file in files:
        link = folder / file.parent.name / file.name
        link.parent.mkdir(parents=True, exist_ok=True)
        if not link.exists():
            link.symlink_to(file.resolve())


# -- timing -------------------------------------------------------------------------------------

def timer_callback():
    import lightning as L

    class StepTimer(L.Callback):
        """Wall time of the training epochs, of the steps, and of the waits for data between them."""

        def __init__(self):
            self.epoch_seconds = self.step_seconds = self.wait_seconds = 0.0
            self.steps = self.images = 0

        def on_train_epoch_start(self, trainer, module):
            self.epoch_started = self.last_end = time.perf_counter()

        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            now = time.perf_counter()
            self.wait_seconds += now - self.last_end
            self.step_started = now

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            now = time.perf_counter()
            self.step_seconds += now - self.step_started
            self.last_end = now
            self.steps += 1
            self.images += module.batch_images(batch)

        def on_train_epoch_end(self, trainer, module):
            self.epoch_seconds += time.perf_counter() - self.epoch_started

    return StepTimer()


def floor_seconds(backbone: torch.nn.Module, batch_size: int, channels_last: bool, method: str = "simclr") -> float:
    """Median time of the backbone's own work in one step of ``method`` (``BACKBONE_WORK``) on
    random views: forward + backward of the trained views, then the no-grad forward of the views
    a momentum encoder embeds (the same architecture, so the same module stands in for it)."""
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    backbone.to(memory_format=memory_format).train()
    trained, embedded = BACKBONE_WORK[method]
    x = torch.randn(trained * batch_size, 3, 32, 32).contiguous(memory_format=memory_format)
    y = torch.randn(embedded * batch_size, 3, 32, 32).contiguous(memory_format=memory_format) if embedded else None
    times = []
    for _ in range(STEPS_PER_FLOOR + 1):
        started = time.perf_counter()
        backbone.zero_grad(set_to_none=True)
        backbone(x).sum().backward()
        if y is not None:
            with torch.no_grad():
                backbone(y)
        times.append(time.perf_counter() - started)
    return statistics.median(times[1:])


def watch_first_conv(backbone: torch.nn.Module) -> dict:
    """Fills the returned dict, at the backbone's first forward, with the memory format of its
    first convolution's weight and input; the hook then removes itself."""
    conv = next(m for m in backbone.modules() if isinstance(m, torch.nn.Conv2d))
    seen: dict = {}

    def record(module, inputs):
        x = inputs[0]
        seen.update(weight_channels_last=module.weight.is_contiguous(memory_format=torch.channels_last),
                    input_channels_last=x.is_contiguous(memory_format=torch.channels_last),
                    weight_nchw=module.weight.is_contiguous(), input_nchw=x.is_contiguous())
        handle.remove()

    handle = conv.register_forward_pre_hook(record)
    return seen


def check_format(seen: dict, channels_last: bool, library: str) -> None:
    """Fail unless the first training forward ran in the format asked."""
    if not seen:
        raise RuntimeError(f"{library}: the backbone's first convolution never ran")
    if channels_last:
        ok = seen["weight_channels_last"] and seen["input_channels_last"]
    else:
        ok = seen["weight_nchw"] and seen["input_nchw"] and not seen["input_channels_last"]
    if not ok:
        raise RuntimeError(f"{library}: asked for {'channels-last' if channels_last else 'NCHW'}, the first "
                           f"convolution saw {seen}")


def knn_top1(backbone, split) -> float:
    from contrastkit.evaluation.knn import weighted_knn_accuracy
    from contrastkit.modalities.image.views.image import EvalView

    view = EvalView(split["mean"], split["std"])
    backbone.eval()

    def embed(images):
        with torch.inference_mode():
            return torch.cat([backbone(view(images[i : i + 512])) for i in range(0, len(images), 512)]).numpy()

    return 100 * weighted_knn_accuracy(embed(split["train"]), split["train_labels"].numpy(),
                                       embed(split["query"]), split["query_labels"].numpy(), k=200, temperature=0.1)


def make_backbone(seed: int, width: float):
    from contrastkit.modalities.image.encoders.resnet import resnet18

    torch.manual_seed(seed)
    return resnet18(3, 32, width=width)


def optimizer_and_schedule(model, steps_per_epoch: int, epochs: int, lr: float = 0.06, optimizer: str = "sgd"):
    """contrastkit fit's optimiser (SGD by default, lr for a batch of 256, the batches here; weight decay 5e-4
    on weights of dimension > 1), one warm-up epoch, cosine."""
    from contrastkit.engine.optim import build_optimizer, warmup_cosine

    optimizer = build_optimizer(optimizer, model, lr, 5e-4, 0.9)
    total, warmup = steps_per_epoch * epochs, steps_per_epoch * min(1, epochs)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: warmup_cosine(step, warmup, total))
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}


def trainer(epochs: int, callbacks):
    import lightning as L

    return L.Trainer(max_epochs=epochs, accelerator="cpu", devices=1, logger=False, callbacks=callbacks,
                     enable_checkpointing=False, enable_model_summary=False, enable_progress_bar=False,
                     num_sanity_val_steps=0, use_distributed_sampler=False)


def trains_channels_last(library: str, memory_format: str) -> bool:
    return memory_format == "both-channels-last" or (memory_format == "library-default" and library == "contrastkit")


def method_settings(method: str, num_train: int, batch_size: int, epochs: int, width: float) -> dict:
    """The values both libraries run ``method`` with: contrastkit's defaults for this data (its
    method docstrings), given to contrastkit explicitly as well, so that both sides read them here."""
    dim = make_backbone(0, width).output_dim
    total_steps = (num_train // batch_size) * epochs
    if method == "simclr":
        return {"temperature": 0.5, "projection_hidden": dim, "projection_dim": 128, "projection_batch_norm": True}
    if method == "byol":
        return {"momentum": 0.99, "momentum_schedule": "cosine to 1 per step", "total_steps": total_steps,
                "projection_hidden": 2 * dim, "projection_dim": 128, "predictor_hidden": 2 * dim}
    return {"temperature": 0.2, "momentum": 0.99, "momentum_schedule": "constant",
            "queue_size": min(4096, max(1, num_train // 2)), "projection_hidden": dim, "projection_dim": 128,
            "projection_batch_norm": False, "symmetric": False}


# -- contrastkit --------------------------------------------------------------------------------

def run_contrastkit(method: str, split, args, settings: dict, channels_last: bool):
    from contrastkit.modalities.image.config import FitConfig
    from contrastkit.modalities.image.methods import build_method
    from contrastkit.modalities.image.methods.parts import DataInfo
    from contrastkit.modalities.image.training.data import InMemoryImages
    from contrastkit.modalities.image.training.module import SSLModule

    extra = json.loads(args.contrastkit_extra)
    if method == "byol":
        extra["byol"] = {"momentum": settings["momentum"], "predictor_hidden_dim": settings["predictor_hidden"],
                         **extra.get("byol", {})}
    if method == "moco":
        extra["moco"] = {"momentum": settings["momentum"], "queue_size": settings["queue_size"],
                         "symmetric": settings["symmetric"], **extra.get("moco", {})}
    config = FitConfig(method=method, backbone="resnet18", width=args.width, batch_size=args.batch_size,
                       epochs=args.epochs, seed=args.seed, warmup_epochs=min(1.0, args.epochs),
                       temperature=settings.get("temperature"), projection_dim=settings["projection_dim"],
                       projection_hidden_dim=settings["projection_hidden"], channels_last=channels_last, extra=extra)
    data = DataInfo(channels=3, image_size=32, mean=split["mean"], std=split["std"], num_samples=len(split["train"]))
    torch.manual_seed(args.seed)  # the backbone is built first: the same weights as make_backbone(seed)
    model = build_method(method, config, data)
    built = {"byol": lambda: {"momentum": model.base_momentum},
             "moco": lambda: {"momentum": model.momentum, "queue_size": model.queue.size, "symmetric": model.symmetric},
             }.get(method, dict)()
    if any(settings[key] != value for key, value in built.items()):
        raise RuntimeError(f"contrastkit built {method} with {built}, not the settings {settings}")
    seen = watch_first_conv(model.backbone)
    module = SSLModule(model, config, data)
    module.batch_images = lambda batch: len(batch["image"])
    source = SimpleNamespace(images=split["train"], labels=split["train_labels"])
    timer = timer_callback()
    trainer(args.epochs, [timer]).fit(module, datamodule=InMemoryImages(source, args.batch_size, args.seed))
    return vars_of(timer), model.backbone, seen, head_parameters(model, model.backbone)


# -- LightlySSL ---------------------------------------------------------------------------------

def run_lightly(method: str, split, args, workdir: Path, settings: dict, channels_last: bool):
    from lightly.data import LightlyDataset

    steps_per_epoch = len(split["train"]) // args.batch_size
    backbone = make_backbone(args.seed, args.width)
    module = lightly_module(method, backbone, settings,
                            lambda model: optimizer_and_schedule(model, steps_per_epoch, args.epochs), channels_last)
    seen = watch_first_conv(module.backbone)  # after the momentum copies: they must not copy the hook
    module.batch_images = lambda batch: len(batch[1])
    normalize = {"mean": list(split["mean"]), "std": list(split["std"])}
    dataset = LightlyDataset(str(workdir / "train-jpeg"), transform=lightly_transform(method, normalize))
    loader = torch.utils.data.DataLoader(dataset, batch_size=args.batch_size, shuffle=True, drop_last=True,
                                         num_workers=args.lightly_workers)  # as LightlySSL's examples
    timer = timer_callback()
    torch.manual_seed(args.seed)
    trainer(args.epochs, [timer]).fit(module, train_dataloaders=loader)
    return vars_of(timer), backbone, seen, head_parameters(module, backbone)


def vars_of(timer) -> dict:
    return {k: getattr(timer, k) for k in ("epoch_seconds", "step_seconds", "wait_seconds", "steps", "images")}


# -- one run (a subprocess) ---------------------------------------------------------------------

def worker(args) -> None:
    import gc

    workdir, memory_format = Path(args.workdir), args.formats[0]
    split = torch.load(workdir / "split.pt", weights_only=False)
    settings = json.loads(args.method_settings)
    channels_last = trains_channels_last(args.library, memory_format)
    if args.library == "contrastkit":
        timing, backbone, seen, heads = run_contrastkit(args.method, split, args, settings, channels_last)
    else:
        timing, backbone, seen, heads = run_lightly(args.method, split, args, workdir, settings, channels_last)
    check_format(seen, channels_last, args.library)
    gc.collect()
    kib = 1024
    result = {
        "library": args.library, "method": args.method, "memory_format": memory_format, "seed": args.seed,
        "channels_last": channels_last, "format_check": seen, "threads": torch.get_num_threads(),
        "head_parameters": heads, **timing,
        "images_per_s": timing["images"] / timing["epoch_seconds"],
        "data_wait_share": timing["wait_seconds"] / timing["epoch_seconds"],
        # ru_maxrss, for comparison with figures measured before PSS / USS (they over-count shared pages).
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / kib,
        # Workers exit at the end of every epoch (no persistent workers), so they are reaped by now.
        "worker_peak_rss_mib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / kib,
        "floor_s": floor_seconds(copy.deepcopy(backbone), args.batch_size, channels_last, args.method),
    }
    result["step_s"] = timing["epoch_seconds"] / timing["steps"]
    result["overhead_share"] = 1 - result["floor_s"] / result["step_s"]
    result["knn_top1"] = knn_top1(backbone, split)
    Path(args.result).write_text(json.dumps(result, indent=1))


def run_measured(command: list[str], interval: float) -> dict:
    """Run one worker, sampling its process tree's PSS / USS every ``interval`` seconds from here."""
    process = subprocess.Popen(command)
    memory = PeakMemory(process.pid)
    while process.poll() is None:
        memory.sample()
        time.sleep(interval)
    if process.returncode:
        raise subprocess.CalledProcessError(process.returncode, command)
    return memory.report()


# -- the protocol -------------------------------------------------------------------------------

def plan(repeats: int, formats: list[str], methods: list[str]) -> list[tuple[int, str, str, int, str]]:
    """(repeat, format, method, order, library) in running order: repeats outermost, so that a
    drift of the machine's speed spreads over every configuration; contrastkit first in even
    repeats, LightlySSL first in odd ones."""
    runs = []
    for repeat in range(repeats):
        libraries = LIBRARIES if repeat % 2 == 0 else LIBRARIES[::-1]
        for memory_format in formats:
            for method in methods:
                runs += [(repeat, memory_format, method, order, library) for order, library in enumerate(libraries)]
    return runs


def run_settings(args, lightly_version: str) -> dict:
    """What must be equal for two runs' figures to be compared (the key of a settings group)."""
    return {"data": Path(args.data).name, "train_per_class": args.train_per_class, "epochs": args.epochs,
            "batch_size": args.batch_size, "width": args.width, "base_seed": args.seed,
            "lightly_workers": args.lightly_workers, "contrastkit_extra": args.contrastkit_extra,
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"), "torch": torch.__version__,
            "lightly": lightly_version}


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(data_root() / "cifar10-test"))
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--width", type=float, default=0.125)
    parser.add_argument("--seed", type=int, default=0, help="seed of repeat 0; repeat r uses seed + r")
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument("--formats", "--memory-format", dest="formats", nargs="+", choices=[*FORMATS, "nchw"],
                        default=["both-nchw", "both-channels-last"],
                        help="both-nchw, both-channels-last (equal settings), library-default (contrastkit "
                             "channels-last, LightlySSL NCHW: a different setting); nchw = both-nchw")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each (format, method, library)")
    parser.add_argument("--out", default="runs/image_side_by_side.jsonl",
                        help="JSON lines, one row per run; runs already there (same settings) are skipped")
    parser.add_argument("--table-only", action="store_true", help="print the tables from --out and stop")
    parser.add_argument("--lightly-workers", type=int, default=2)
    parser.add_argument("--train-per-class", type=int, default=PRETRAIN_PER_CLASS,
                        help="pretraining images per class (the protocol: 800; smaller for a smoke test)")
    parser.add_argument("--contrastkit-extra", default="{}", help="FitConfig.extra as JSON (e.g. views options)")
    parser.add_argument("--memory-interval", type=float, default=0.5,
                        help="seconds between PSS / USS samples of each run's processes")
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--library", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--method", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--method-settings", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--result", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.formats = list(dict.fromkeys("both-nchw" if f == "nchw" else f for f in args.formats))
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.worker:
        return worker(args)
    out = Path(args.out)
    if args.table_only:
        return print_tables(load_rows(out))
    if not Path("/proc/self/smaps_rollup").exists():
        sys.exit("PSS / USS are read from /proc/<pid>/smaps_rollup (Linux 4.14 or later); this system has none.")
    try:
        import lightly
    except ImportError:
        sys.exit("LightlySSL does not import here: run with the anchor environment's Python, "
                 '"$CONTRASTKIT_ANCHOR_ENV/bin/python" (make anchors builds it; benchmarks/README.md).')
    settings = run_settings(args, lightly.__version__)
    done = {run_key(row) for row in load_rows(out)}
    todo = [run for run in plan(args.repeats, args.formats, args.methods)
            if (settings_id(settings), run[2], run[1], run[0], run[4]) not in done]
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="side-by-side-"))
    workdir.mkdir(parents=True, exist_ok=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    print(f"torch {torch.__version__}, lightly {lightly.__version__}, OMP_NUM_THREADS="
          f"{os.environ.get('OMP_NUM_THREADS')}, epochs {args.epochs}, formats {' '.join(args.formats)}, "
          f"{args.repeats} repeats: {len(todo)} runs to do, the others already in {out}; workdir {workdir}", flush=True)
    if todo:
        prepare(args.data, workdir, args.train_per_class)
        num_train = 10 * args.train_per_class
    for number, (repeat, memory_format, method, order, library) in enumerate(todo, 1):
        seed = args.seed + repeat
        chosen = method_settings(method, num_train, args.batch_size, args.epochs, args.width)
        result = workdir / f"{library}-{method}-{memory_format}-{repeat}.json"
        command = [sys.executable, __file__, "--worker", "--library", library, "--method", method,
                   "--workdir", str(workdir), "--epochs", str(args.epochs), "--batch-size", str(args.batch_size),
                   "--width", str(args.width), "--seed", str(seed), "--lightly-workers", str(args.lightly_workers),
                   "--contrastkit-extra", args.contrastkit_extra, "--formats", memory_format,
                   "--method-settings", json.dumps(chosen), "--result", str(result)]
        started = time.perf_counter()
        memory = run_measured(command, args.memory_interval)
        row = {"settings": settings, "repeat": repeat, "order": order, "method_settings": chosen,
               **json.loads(result.read_text()), **memory, "wall_s": time.perf_counter() - started}
        with out.open("a") as file:  # one line per finished run: a killed benchmark resumes after it
            file.write(json.dumps(row) + "\n")
        print(f"[{number}/{len(todo)}] repeat {repeat} {memory_format} {method} {library}: {row['wall_s']:.0f} s, "
              f"{row['images_per_s']:.1f} images/s, overhead {row['overhead_share']:.1%}, kNN {row['knn_top1']:.2f}, "
              f"first conv {row['format_check']}", flush=True)
    print_tables(load_rows(out), only_settings=settings)
    given = list(argv if argv is not None else sys.argv[1:])
    passed = [a for i, a in enumerate(given) if a != "--workdir" and (i == 0 or given[i - 1] != "--workdir")]
    print("\nCommand: OMP_NUM_THREADS=" + str(os.environ.get("OMP_NUM_THREADS")) + " " + sys.executable
          + " benchmarks/image_side_by_side.py " + " ".join(shlex.quote(a) for a in passed))


if __name__ == "__main__":
    main()
