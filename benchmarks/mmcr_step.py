"""Where an MMCR step's time goes, at one thread (issue 20: the ranking table's MMCR rows, contrastkit 42 and
LightlySSL 63 images/s, were measured beside other runs and with LightlySSL's views made in two DataLoader
worker processes, so they do not say which library's step is faster).

One batch of 256 CIFAR-10 images (the ranking protocol's data, split, backbone, head and k = 8), one thread,
NCHW, in one process; each part timed ``--repeats`` times, the parts alternating, median (min-max) seconds:

- ``views, batched``: contrastkit's ``SimCLRViews`` over the k x 256 copies (its MMCR's one pipeline call);
- ``views, PIL per image``: LightlySSL's ``MMCRTransform(k=8)`` at the ranking row's settings over the 256
  PIL images, what its DataLoader workers do (needs ``$CONTRASTKIT_ANCHOR_ENV``'s LightlySSL);
- ``network, one pass``: forward and backward of backbone, head and loss over the 2,048 views as one batch
  (contrastkit's MMCR, the paper's code);
- ``network, one pass per view``: the same over 8 batches of 256 (LightlySSL's example).

Usage (from the repository root)::

    CONTRASTKIT_DATA=<data folder> "$CONTRASTKIT_ANCHOR_ENV/bin/python" benchmarks/mmcr_step.py --repeats 3
"""

from __future__ import annotations

import argparse
import time

import torch

from contrastkit.modalities.image.config import FitConfig
from contrastkit.modalities.image.methods import build_method
from contrastkit.modalities.image.training.run_data import open_run_data
from image_side_by_side_table import spread

BATCH = 256


def seconds(work) -> float:
    started = time.perf_counter()
    work()
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--data", default="cifar10-test")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    config = FitConfig(method="mmcr", data=args.data, width=0.125, backbone="resnet18", holdout=0.2, split_seed=0,
                       batch_size=BATCH, channels_last=False, probe_every=0, report=False, baselines=False)
    run_data = open_run_data(config)
    torch.manual_seed(0)
    method = build_method("mmcr", config, run_data.info)
    method.train()
    images = run_data.read(run_data.eval_rows[:BATCH])  # uint8 (B, 3, 32, 32)
    k = method.num_views

    def batched_views():
        with torch.no_grad():
            method.views(images.repeat(k, 1, 1, 1))

    views = method.views(images.repeat(k, 1, 1, 1)).detach()

    def network(chunks: int):
        def step():
            method.zero_grad(set_to_none=True)
            z = torch.cat([method.projection(method.backbone(part)) for part in views.chunk(chunks)])
            method.objective(z.view(k, BATCH, -1).transpose(0, 1)).backward()
        return step

    parts = {"views, batched (contrastkit)": batched_views, "network, one pass (contrastkit)": network(1),
             "network, one pass per view (LightlySSL's example)": network(k)}
    try:
        from lightly.transforms import MMCRTransform
        from PIL import Image

        mean, std = run_data.info.mean, run_data.info.std
        transform = MMCRTransform(k=k, input_size=32, cj_strength=0.5, cj_bright=0.8, cj_contrast=0.8, cj_sat=0.8,
                                  cj_hue=0.2, gaussian_blur=0.0, normalize={"mean": list(mean), "std": list(std)})
        pil = [Image.fromarray(image.permute(1, 2, 0).numpy()) for image in images]
        parts["views, PIL per image (LightlySSL's DataLoader workers' work)"] = lambda: [transform(p) for p in pil]
    except ImportError:
        print("LightlySSL not installed: its views are not timed (run in $CONTRASTKIT_ANCHOR_ENV)")
    timings = {name: [] for name in parts}
    for _ in range(args.repeats):
        for name, work in parts.items():
            timings[name].append(seconds(work))
    print(f"\nMMCR step parts, {BATCH} images x {k} views, 1 thread, torch {torch.__version__}; "
          f"{args.repeats} repeats, parts alternating: median (min-max) s\n\n| part | s |\n|---|---:|")
    for name, values in timings.items():
        print(f"| {name} | {spread(values, '{:.2f}')} |")


if __name__ == "__main__":
    main()
