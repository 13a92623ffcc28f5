"""contrastkit beside LightlySSL 1.6 on "CIFAR-10 small": speed, memory, data wait, overhead, kNN.

Data (issue 9): images 0-799 of each class of ``cifar10-test`` pretrain (8,000, labels ignored),
images 800-999 of each class are the kNN queries (2,000); weighted kNN, cosine, k = 200,
t = 0.1, bank = the 8,000 with their labels. Backbone for both libraries: contrastkit's CIFAR
ResNet-18 (3x3 stem, no max-pool) at width 0.125 (8-16-32-64 channels), initialised from the
same seed, so the two runs differ only in what the libraries put around it. Batch 256, SGD
(lr 0.06, momentum 0.9, weight decay 5e-4 on weights of dimension > 1), one warm-up epoch then
cosine decay, per step, for both. SimCLR: NT-Xent, T = 0.5, projection 64-64-128 with BN.
BYOL: projection 64-128-128, predictor 128-128-128, EMA rate 0.99 -> 1 on a per-step cosine.
Augmentations: SimCLR's without blur (crop 0.08-1, flip, jitter 0.4/0.4/0.4/0.1 p 0.8, gray
0.2), BYOL's asymmetric ones without blur (solarise p 0.2 on view 2).

contrastkit runs as ``contrastkit fit`` does (Lightning, ``SSLModule``, the uint8 in-memory
batches and batched kornia views). LightlySSL runs as its examples do (a LightningModule with
its heads and losses, ``LightlyDataset`` over the JPEG files with ``SimCLRTransform`` /
``BYOLTransform`` in ``--lightly-workers`` DataLoader workers). LightlySSL's BYOL example
uses ``0.5 (-cos + -cos)``; contrastkit's loss is ``(2 - 2 cos) + (2 - 2 cos)``, four times its
gradient, so the LightlySSL loss is scaled by 4 here: the same optimiser then takes the same steps.

Memory format (``--memory-format``): ``library-default`` trains each library as it trains by
default, contrastkit channels-last and LightlySSL NCHW, so its ratios measure the layout as well as
the libraries; ``nchw`` trains contrastkit NCHW too, the equal-format setting.

Each (library, method) trains in its own subprocess, in alternating order (SimCLR: contrastkit,
lightly; BYOL: lightly, contrastkit). Reported per run:

    images/s        training images / wall time of the training epochs
    peak PSS, USS   main process / its children (DataLoader workers) / both, sampled every
                    ``--memory-interval`` s from the parent (``PeakMemory``)
    data wait       share of epoch time between the end of one step and the start of the next
    overhead share  1 - floor / (epoch time / steps), floor = backbone forward + backward on
                    2 x 256 images measured in the same process after training, in the memory
                    format the run trained in
    kNN top-1       after the same epochs

Why not RSS: a forked worker shares its parent's pages, and each process's RSS (``ru_maxrss``)
counts them in full, so RSS added up over a parent and its workers counts shared pages more than
once. Earlier figures did that; ``ru_maxrss`` stays in the JSON only, for comparison.

Must run where both libraries import (the anchor environment, ``$CONTRASTKIT_ANCHOR_ENV``;
``make anchors`` builds it, benchmarks/README.md)::

    flock .heavy.lock -c 'OMP_NUM_THREADS=2 "$CONTRASTKIT_ANCHOR_ENV/bin/python" \\
        benchmarks/image_side_by_side.py --epochs 3 --memory-format nchw'

The issue's full protocol is ``--epochs 10`` (about 4 x 10 minutes on 2 cores).
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

PRETRAIN_PER_CLASS = 800
STEPS_PER_FLOOR = 3


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


# -- memory -------------------------------------------------------------------------------------

def pss_uss_kib(pid: int) -> tuple[int, int] | None:
    """(PSS, USS) of one process in KiB, from ``/proc/<pid>/smaps_rollup``; None once it has exited.

    PSS counts each resident page divided by the number of processes that map it, so PSS adds up
    over processes with no page counted twice. USS (``Private_Clean + Private_Dirty``) counts the
    pages no other process maps: what ending the process would free."""
    fields: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/smaps_rollup") as file:
            for line in file:
                key, _, value = line.partition(":")
                if key in ("Pss", "Private_Clean", "Private_Dirty"):
                    fields[key] = int(value.split()[0])  # "   1234 kB"
    except (FileNotFoundError, ProcessLookupError):
        return None
    if len(fields) < 3:  # a zombie's rollup is empty
        return None
    return fields["Pss"], fields["Private_Clean"] + fields["Private_Dirty"]


def descendants(pid: int) -> list[int]:
    """The live processes below ``pid``, by the parent id in each ``/proc/<pid>/stat``."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                with open(f"/proc/{entry.name}/stat") as file:
                    stat = file.read()
            except OSError:  # it exited while we looked
                continue
            parent = int(stat.rpartition(")")[2].split()[1])  # after "pid (comm) state"; comm may hold ")"
            children.setdefault(parent, []).append(int(entry.name))
    found, frontier = [], [pid]
    while frontier:
        frontier = [child for parent in frontier for child in children.get(parent, [])]
        found += frontier
    return found


class PeakMemory:
    """Peak PSS and USS, in KiB, of a process tree sampled from outside it: of the root (``main``),
    of its descendants added up at one instant (``children``), of both at one instant (``total``),
    and of each descendant (``pid N``). Peaks of sums at one instant, not sums of per-process peaks:
    DataLoader workers that are not persistent are new processes every epoch. A peak between two
    samples is missed, so each figure is a lower bound (a close one at 0.5 s against minutes)."""

    def __init__(self, root: int):
        self.root, self.samples = root, 0
        self.peaks: dict[str, tuple[int, int]] = {}

    def sample(self) -> None:
        now = {pid: m for pid in [self.root, *descendants(self.root)] if (m := pss_uss_kib(pid)) is not None}
        if self.root not in now:
            return
        self.samples += 1
        main = now.pop(self.root)
        children = (sum(m[0] for m in now.values()), sum(m[1] for m in now.values()))
        values = {"main": main, "children": children, "total": (main[0] + children[0], main[1] + children[1]),
                  **{f"pid {pid}": m for pid, m in now.items()}}
        for name, (pss, uss) in values.items():
            old = self.peaks.get(name, (0, 0))
            self.peaks[name] = (max(old[0], pss), max(old[1], uss))

    def report(self) -> dict:
        return {"memory_samples": self.samples,
                "peak_pss_uss_mib": {name: [kib / 1024 for kib in peaks] for name, peaks in self.peaks.items()}}


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


def floor_seconds(backbone: torch.nn.Module, batch_size: int, channels_last: bool) -> float:
    """Median backbone forward + backward on 2 x batch_size random views."""
    backbone.train()
    x = torch.randn(2 * batch_size, 3, 32, 32)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    times = []
    for _ in range(STEPS_PER_FLOOR + 1):
        started = time.perf_counter()
        backbone.zero_grad(set_to_none=True)
        backbone(x).sum().backward()
        times.append(time.perf_counter() - started)
    return statistics.median(times[1:])


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


def optimizer_and_schedule(model, steps_per_epoch: int, epochs: int, lr: float = 0.06):
    """contrastkit fit's SGD (lr for a batch of 256, the batches here), one warm-up epoch, cosine."""
    from contrastkit.engine.optim import build_optimizer, warmup_cosine

    optimizer = build_optimizer("sgd", model, lr, 5e-4, 0.9)
    total, warmup = steps_per_epoch * epochs, steps_per_epoch * min(1, epochs)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: warmup_cosine(step, warmup, total))
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}


def trainer(epochs: int, callbacks):
    import lightning as L

    return L.Trainer(max_epochs=epochs, accelerator="cpu", devices=1, logger=False, callbacks=callbacks,
                     enable_checkpointing=False, enable_model_summary=False, enable_progress_bar=False,
                     num_sanity_val_steps=0, use_distributed_sampler=False)


# -- contrastkit --------------------------------------------------------------------------------

def run_contrastkit(method: str, split, args) -> tuple[dict, torch.nn.Module]:
    from contrastkit.modalities.image.config import FitConfig
    from contrastkit.modalities.image.methods import METHODS
    from contrastkit.modalities.image.methods.parts import DataInfo
    from contrastkit.modalities.image.training.data import InMemoryImages
    from contrastkit.modalities.image.training.module import SSLModule

    config = FitConfig(method=method, backbone="resnet18", width=args.width, batch_size=args.batch_size,
                       epochs=args.epochs, seed=args.seed, warmup_epochs=min(1.0, args.epochs),
                       channels_last=False if args.memory_format == "nchw" else None,
                       extra=json.loads(args.contrastkit_extra))
    data = DataInfo(channels=3, image_size=32, mean=split["mean"], std=split["std"], num_samples=len(split["train"]))
    torch.manual_seed(args.seed)  # the backbone is built first: the same weights as make_backbone(seed)
    model = METHODS.build(method, config=config, data=data)
    module = SSLModule(model, config, data)
    module.batch_images = lambda batch: len(batch["image"])
    source = SimpleNamespace(images=split["train"], labels=split["train_labels"])
    timer = timer_callback()
    trainer(args.epochs, [timer]).fit(module, datamodule=InMemoryImages(source, args.batch_size, args.seed))
    return vars_of(timer), model.backbone


# -- LightlySSL ---------------------------------------------------------------------------------

def run_lightly(method: str, split, args, workdir: Path) -> tuple[dict, torch.nn.Module]:
    import lightning as L
    from lightly.data import LightlyDataset
    from lightly.loss import NegativeCosineSimilarity, NTXentLoss
    from lightly.models.modules import BYOLPredictionHead, BYOLProjectionHead, SimCLRProjectionHead
    from lightly.models.utils import deactivate_requires_grad, update_momentum
    from lightly.transforms import BYOLTransform, BYOLView1Transform, BYOLView2Transform, SimCLRTransform
    from lightly.utils.scheduler import cosine_schedule

    normalize = {"mean": list(split["mean"]), "std": list(split["std"])}
    steps_per_epoch = len(split["train"]) // args.batch_size
    backbone = make_backbone(args.seed, args.width)
    dim = backbone.output_dim

    class LightlySimCLR(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.backbone = backbone
            self.projection_head = SimCLRProjectionHead(dim, dim, 128)
            self.criterion = NTXentLoss(temperature=0.5)

        def training_step(self, batch, batch_idx):
            (x0, x1) = batch[0]
            z0 = self.projection_head(self.backbone(x0))
            z1 = self.projection_head(self.backbone(x1))
            loss = self.criterion(z0, z1)
            self.log("train_loss_ssl", loss)
            return loss

        def configure_optimizers(self):
            return optimizer_and_schedule(self, steps_per_epoch, args.epochs)

    class LightlyBYOL(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.backbone = backbone
            self.projection_head = BYOLProjectionHead(dim, 2 * dim, 128)
            self.prediction_head = BYOLPredictionHead(128, 2 * dim, 128)
            self.backbone_momentum = copy.deepcopy(self.backbone)
            self.projection_head_momentum = copy.deepcopy(self.projection_head)
            deactivate_requires_grad(self.backbone_momentum)
            deactivate_requires_grad(self.projection_head_momentum)
            self.criterion = NegativeCosineSimilarity()

        def forward(self, x):
            return self.prediction_head(self.projection_head(self.backbone(x)))

        def forward_momentum(self, x):
            return self.projection_head_momentum(self.backbone_momentum(x)).detach()

        def training_step(self, batch, batch_idx):
            momentum = cosine_schedule(self.global_step, steps_per_epoch * args.epochs, 0.99, 1.0)
            update_momentum(self.backbone, self.backbone_momentum, m=momentum)
            update_momentum(self.projection_head, self.projection_head_momentum, m=momentum)
            (x0, x1) = batch[0]
            p0, p1 = self.forward(x0), self.forward(x1)
            z0, z1 = self.forward_momentum(x0), self.forward_momentum(x1)
            loss = 2.0 * (self.criterion(p0, z1) + self.criterion(p1, z0))  # = contrastkit's scale, see docstring
            self.log("train_loss_ssl", loss)
            return loss

        def configure_optimizers(self):
            return optimizer_and_schedule(self, steps_per_epoch, args.epochs)

    if method == "simclr":
        transform = SimCLRTransform(input_size=32, cj_strength=0.5, gaussian_blur=0.0, normalize=normalize)
        module = LightlySimCLR()
    else:
        transform = BYOLTransform(
            view_1_transform=BYOLView1Transform(input_size=32, gaussian_blur=0.0, normalize=normalize),
            view_2_transform=BYOLView2Transform(input_size=32, gaussian_blur=0.0, normalize=normalize),
        )
        module = LightlyBYOL()
    module.batch_images = lambda batch: len(batch[1])
    dataset = LightlyDataset(str(workdir / "train-jpeg"), transform=transform)
    loader = torch.utils.data.DataLoader(dataset, batch_size=args.batch_size, shuffle=True, drop_last=True,
                                         num_workers=args.lightly_workers)  # as LightlySSL's examples
    timer = timer_callback()
    torch.manual_seed(args.seed)
    trainer(args.epochs, [timer]).fit(module, train_dataloaders=loader)
    return vars_of(timer), backbone


def vars_of(timer) -> dict:
    return {k: getattr(timer, k) for k in ("epoch_seconds", "step_seconds", "wait_seconds", "steps", "images")}


# -- orchestration ------------------------------------------------------------------------------

def worker(args) -> None:
    import gc

    workdir = Path(args.workdir)
    split = torch.load(workdir / "split.pt", weights_only=False)
    if args.library == "contrastkit":
        timing, backbone = run_contrastkit(args.method, split, args)
    else:
        timing, backbone = run_lightly(args.method, split, args, workdir)
    gc.collect()
    kib = 1024
    result = {
        "library": args.library, "method": args.method, "epochs": args.epochs,
        "memory_format": args.memory_format, **timing,
        "images_per_s": timing["images"] / timing["epoch_seconds"],
        "data_wait_share": timing["wait_seconds"] / timing["epoch_seconds"],
        # ru_maxrss, for comparison with figures measured before PSS / USS (they over-count shared pages).
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / kib,
        # Workers exit at the end of every epoch (no persistent workers), so they are reaped by now.
        "worker_peak_rss_mib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / kib,
        # The floor in the memory format the run trained in (contrastkit: channels-last by default).
        "floor_s": floor_seconds(copy.deepcopy(backbone), args.batch_size,
                                 channels_last=args.library == "contrastkit" and args.memory_format != "nchw"),
    }
    result["step_s"] = timing["epoch_seconds"] / timing["steps"]
    result["overhead_share"] = 1 - result["floor_s"] / result["step_s"]
    result["knn_top1"] = knn_top1(backbone, split)
    (workdir / f"{args.library}-{args.method}.json").write_text(json.dumps(result, indent=1))


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


ORDER = [("simclr", "contrastkit"), ("simclr", "lightly"), ("byol", "lightly"), ("byol", "contrastkit")]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="../shared/data/cifar10-test")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--width", type=float, default=0.125)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--methods", nargs="+", default=["simclr", "byol"])
    parser.add_argument("--lightly-workers", type=int, default=2)
    parser.add_argument("--train-per-class", type=int, default=PRETRAIN_PER_CLASS,
                        help="pretraining images per class (the protocol: 800; smaller for a smoke test)")
    parser.add_argument("--contrastkit-extra", default="{}", help="FitConfig.extra as JSON (e.g. views options)")
    parser.add_argument("--memory-format", choices=["library-default", "nchw"], default="library-default",
                        help="library-default: each library's own (contrastkit channels-last, LightlySSL NCHW); "
                             "nchw: both NCHW")
    parser.add_argument("--memory-interval", type=float, default=0.5,
                        help="seconds between PSS / USS samples of each run's processes")
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--library", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--method", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return worker(args)
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="side-by-side-"))
    workdir.mkdir(parents=True, exist_ok=True)
    if not Path("/proc/self/smaps_rollup").exists():
        sys.exit("PSS / USS are read from /proc/<pid>/smaps_rollup (Linux 4.14 or later); this system has none.")
    try:
        import lightly
    except ImportError:
        sys.exit("LightlySSL does not import here: run with the anchor environment's Python, "
                 '"$CONTRASTKIT_ANCHOR_ENV/bin/python" (make anchors builds it; benchmarks/README.md).')
    prepare(args.data, workdir, args.train_per_class)
    print(f"torch {torch.__version__}, lightly {lightly.__version__}, OMP_NUM_THREADS="
          f"{os.environ.get('OMP_NUM_THREADS')}, epochs {args.epochs}, memory format {args.memory_format}, "
          f"workdir {workdir}", flush=True)
    results = {}
    given = list(argv if argv is not None else sys.argv[1:])
    passed = [a for i, a in enumerate(given) if a != "--workdir" and (i == 0 or given[i - 1] != "--workdir")]
    for method, library in ORDER:
        if method not in args.methods:
            continue
        command = [sys.executable, __file__, "--worker", "--library", library, "--method", method,
                   "--workdir", str(workdir), "--epochs", str(args.epochs), "--batch-size", str(args.batch_size),
                   "--width", str(args.width), "--seed", str(args.seed), "--lightly-workers",
                   str(args.lightly_workers), "--contrastkit-extra", args.contrastkit_extra,
                   "--memory-format", args.memory_format]
        started = time.perf_counter()
        memory = run_measured(command, args.memory_interval)
        results[(method, library)] = {**json.loads((workdir / f"{library}-{method}.json").read_text()), **memory}
        print(f"{library} {method}: {time.perf_counter() - started:.0f} s", results[(method, library)], flush=True)
    print_table(results, args)
    print("\nCommand: OMP_NUM_THREADS=" + str(os.environ.get("OMP_NUM_THREADS")) + " " + sys.executable
          + " benchmarks/image_side_by_side.py " + " ".join(shlex.quote(a) for a in passed))


def print_table(results: dict, args) -> None:
    print(f"\nMemory format: {args.memory_format}; PSS / USS sampled every {args.memory_interval} s.")
    print(f"\n| method | library | images/s | peak PSS MiB (main / children / total) | peak USS MiB "
          f"(main / children / total) | data wait | overhead share | step s | floor s | "
          f"kNN top-1 after {args.epochs} ep. |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for (method, library), r in results.items():
        pss, uss = (" / ".join(f"{r['peak_pss_uss_mib'][part][i]:.0f}" for part in ("main", "children", "total"))
                    for i in (0, 1))
        print(f"| {method} | {library} | {r['images_per_s']:.1f} | {pss} | {uss} | {r['data_wait_share']:.1%} | "
              f"{r['overhead_share']:.1%} | {r['step_s']:.2f} | {r['floor_s']:.2f} | {r['knn_top1']:.2f} |")
    for method in args.methods:
        ours, theirs = results.get((method, "contrastkit")), results.get((method, "lightly"))
        if ours and theirs:
            print(f"{method}: contrastkit / LightlySSL images/s = {ours['images_per_s'] / theirs['images_per_s']:.2f}x; "
                  f"kNN difference {ours['knn_top1'] - theirs['knn_top1']:+.2f} points")


if __name__ == "__main__":
    main()
