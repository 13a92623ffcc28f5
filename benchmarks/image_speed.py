"""The floor of a training step, and what each compute-path option does to a contrastkit step.

The floor is the backbone's forward + backward alone on the same batch (the 2B views of a batch,
computed once beforehand; no augmentation, no head, no loss, no optimiser): what a step cannot go
below. For each method and variant the script times, as medians over ``--steps`` steps after
``--warmup`` untimed ones:

    floor    backbone(views).sum().backward(), plus for a momentum method (BYOL, MoCo, DINO, ...)
             its target backbone's forward over the same views under no_grad, which every such
             method pays (issue 30's definition)
    views    method.views.two_views(uint8 batch)              (augmentation alone)
    step     zero_grad; method.training_loss(batch); backward; optimizer.step(); EMA update
    (MoCo, not symmetric, passes one view through each network: its floor is on B views, not 2B)
    overhead share = 1 - floor / step

and the parts of a step a profile names: ``target fwd`` (the target backbone's forward alone, in
the floor), ``ema`` (``after_optimizer_step``: the EMA update, one fused ``torch._foreach_lerp_``,
and MoCo's enqueue), ``optimizer`` (``optimizer.step()``) and ``rest`` = step - floor - views - ema
- optimizer: heads, predictor, loss and autograd bookkeeping outside the backbone.

Variants (each switchable in contrastkit, measured here before anything is on by default):

    base            contiguous (NCHW) tensors, eager
    channels_last   model and views in channels-last memory format (FitConfig.channels_last)
    compile         torch.compile(backbone) (inductor, C++ on CPU); compile time reported apart
    compile_step    torch.compile of the whole training_loss (views + model + loss)
    bf16            forward passes under CPU bfloat16 autocast (FitConfig.precision "bf16-mixed";
                    changes the numerics, so never a default: reported for what it would buy)

and, for the kNN probe, the time to embed the 8,000-image bank under ``torch.inference_mode``
(what the probe does) against ``torch.no_grad`` and against plain autograd-enabled eval.

Usage (under the heavy lock; about 5 minutes on 2 cores)::

    OMP_NUM_THREADS=2 python benchmarks/image_speed.py --variants base channels_last compile

Prints a markdown table and the command that made it.
"""

from __future__ import annotations

import argparse
import contextlib
import shlex
import statistics
import sys
import time

import torch

from contrastkit.modalities.image.config import FitConfig
from contrastkit.modalities.image.methods import build_method
from contrastkit.modalities.image.methods.parts import DataInfo
from contrastkit.modalities.image.sources import open_image_source
from contrastkit.engine.optim import build_optimizer

VARIANTS = ("base", "channels_last", "compile", "compile_step", "bf16")


def median_seconds(fn, steps: int, warmup: int) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(steps):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def build(method: str, data: DataInfo, width: float, batch_size: int, channels_last: bool, seed: int = 0):
    torch.manual_seed(seed)
    config = FitConfig(method=method, backbone="resnet18", width=width, batch_size=batch_size,
                       channels_last=channels_last)
    model = build_method(method, config=config, data=data)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        model.views.channels_last = True
    return model


def measure(method: str, variant: str, images: torch.Tensor, data: DataInfo, args) -> dict:
    channels_last = variant == "channels_last"
    model = build(method, data, args.width, args.batch_size, channels_last)
    model.train()
    optimizer = build_optimizer("sgd", model, 0.06, 5e-4, 0.9)
    batch = {"image": images, "index": torch.arange(len(images)), "label": torch.zeros(len(images), dtype=torch.long)}
    if channels_last:
        batch["image"] = images.contiguous(memory_format=torch.channels_last)
    compile_seconds = 0.0
    backbone = model.backbone
    loss_fn = model.training_loss
    if variant == "compile":
        backbone = torch.compile(model.backbone)
        model.backbone = backbone
    if variant == "compile_step":
        loss_fn = torch.compile(model.training_loss)

    with torch.no_grad():
        view_a, view_b = model.views.two_views(batch["image"])
    # MoCo (not symmetric) passes one view through each network: its floor is the backbone on B
    # images and the key encoder on B; the other methods pass both views through each.
    one_view_each = method == "moco" and not getattr(model, "symmetric", True)
    views = (view_a if one_view_each else torch.cat([view_a, view_b])).detach()

    precision = (torch.autocast("cpu", dtype=torch.bfloat16) if variant == "bf16"
                 else contextlib.nullcontext())

    def floor():
        model.zero_grad(set_to_none=True)
        with precision:
            out = backbone(views).sum()
        out.backward()

    def augment():
        with torch.no_grad():
            model.views.two_views(batch["image"])

    step_count = [0]

    def step():
        optimizer.zero_grad(set_to_none=True)
        with precision:
            loss, _ = loss_fn(batch)
        loss.backward()
        optimizer.step()
        step_count[0] += 1
        hook = getattr(model, "after_optimizer_step", None)
        if hook is not None:
            hook(step_count[0], 1000)

    target = momentum_backbone(model)

    def target_forward():
        with torch.no_grad(), precision:
            target(views)

    hook = getattr(model, "after_optimizer_step", None)

    def ema():
        hook(step_count[0], 1000)

    def optimizer_step():
        optimizer.step()

    if variant.startswith("compile"):
        started = time.perf_counter()
        (floor if variant == "compile" else step)()
        compile_seconds = time.perf_counter() - started
    online_s = median_seconds(floor, args.steps, args.warmup)
    target_s = median_seconds(target_forward, args.steps, 1) if target is not None else 0.0
    floor_s = online_s + target_s
    views_s = median_seconds(augment, args.steps, 1)
    step_s = median_seconds(step, args.steps, args.warmup)
    ema_s = median_seconds(ema, args.steps, 1) if hook is not None else 0.0
    optimizer_s = median_seconds(optimizer_step, args.steps, 1)
    return {"method": method, "variant": variant, "floor_s": floor_s, "target_s": target_s, "views_s": views_s,
            "step_s": step_s, "ema_s": ema_s, "optimizer_s": optimizer_s,
            "rest_s": step_s - floor_s - views_s - ema_s - optimizer_s,
            "overhead": 1 - floor_s / step_s, "images_per_s": len(images) / step_s,
            "compile_s": compile_seconds}


def momentum_backbone(model: torch.nn.Module) -> torch.nn.Module | None:
    """The method's momentum copy of its backbone (``target_backbone``, ``key_backbone``, ...): a
    child other than ``backbone`` whose name ends in ``backbone`` and that the optimiser never sees."""
    for name, module in model.named_children():
        if (name != "backbone" and name.endswith("backbone") and any(True for _ in module.parameters())
                and not any(p.requires_grad for p in module.parameters())):
            return module
    return None


def embed_bank_seconds(images: torch.Tensor, data: DataInfo, args) -> dict:
    model = build("simclr", data, args.width, args.batch_size, channels_last=False).eval()

    def embed(context):
        with context():
            for i in range(0, len(images), 512):
                model.embed(images[i : i + 512])

    timings = {}
    for name, context in (("inference_mode", torch.inference_mode), ("no_grad", torch.no_grad),
                          ("autograd", torch.enable_grad)):
        timings[name] = median_seconds(lambda c=context: embed(c), 3, 1)
    return timings


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="../shared/data/cifar10-test")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--width", type=float, default=0.125)
    parser.add_argument("--methods", nargs="+", default=["simclr", "byol"])
    parser.add_argument("--variants", nargs="+", default=["base", "channels_last", "compile"], choices=VARIANTS)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--bank", type=int, default=8000, help="images embedded in the kNN-bank timing (0: skip)")
    args = parser.parse_args(argv)
    source = open_image_source(args.data)
    images = source.images[torch.randperm(len(source), generator=torch.Generator().manual_seed(0))]
    batch = images[: args.batch_size].clone()
    mean, std = source.channel_mean_std()
    data = DataInfo(channels=source.channels, image_size=source.image_size[0], mean=mean, std=std,
                    num_samples=len(source))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; batch {args.batch_size} "
          f"(2 x {args.batch_size} views), ResNet-18 width {args.width}", flush=True)
    rows = []
    for method in args.methods:
        for variant in args.variants:
            try:
                row = measure(method, variant, batch, data, args)
            except Exception as error:  # noqa: BLE001 - e.g. inductor without a working C++ toolchain
                print(f"{method} {variant} failed: {type(error).__name__}: {error}", flush=True)
                continue
            rows.append(row)
            print(row, flush=True)
    print("\n| method | variant | floor s (target fwd) | views s | ema s | optimizer s | rest s | step s | images/s "
          "| overhead share | compile s |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['method']} | {r['variant']} | {r['floor_s']:.3f} ({r['target_s']:.3f}) | {r['views_s']:.3f} | "
              f"{r['ema_s']:.4f} | {r['optimizer_s']:.3f} | {r['rest_s']:.3f} | {r['step_s']:.3f} | "
              f"{r['images_per_s']:.0f} | {r['overhead']:.1%} | {r['compile_s']:.0f} |")
    if args.bank:
        timings = embed_bank_seconds(images[: args.bank], data, args)
        print(f"\nEmbedding a {args.bank}-image kNN bank (eval mode): "
              + ", ".join(f"{k} {v:.2f} s" for k, v in timings.items()))
    print("\nCommand: OMP_NUM_THREADS=" + str(torch.get_num_threads()) + " python "
          + " ".join(shlex.quote(a) for a in sys.argv))


if __name__ == "__main__":
    main()
