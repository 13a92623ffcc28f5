"""Segmentation of Kvasir-SEG polyps with few masks (issue 23): scratch vs SimCLR vs global vs global + local.

    OMP_NUM_THREADS=1 python benchmarks/segmentation_kvasir.py --out runs/segmentation-kvasir

Chaitanya et al. (NeurIPS 2020) claim that the local contrastive stage adds most when labels are few.
What runs, at 128 pixels, one ResNet-18 (``--width``) for every start:

1. pretraining on the 380 unlabelled train images (their masks unused): ``simclr`` (τ 0.5),
   ``gcl-global`` (the paper's G^R, τ 0.1), and ``gcl-local`` started from that global run with ``--init``
   (encoder frozen, 2 decoder blocks, regions of an 8 x 8 grid); AdamW, ``--pretrain-epochs`` epochs of
   batch 32, once per seed of ``--seeds`` (seed 0's runs in ``--out/NAME``, seed s's in
   ``--out/NAME-seed{s}``; ``--pretrain-seed 0`` instead uses seed 0's runs for every seed). Runs
   already in ``--out`` are reused;
2. the choice: for each start (scratch and the three runs of seed 0), the fine-tuning rate among
   ``--lrs`` with the best Dice on the 60-image development carve of train, from 38 masks of the other
   320, seed 0;
3. the score, once: for each start, budget (``--budgets``, masks from all 380 train images, fixed per
   seed and shared by every start) and seed, fine-tune encoder + decoder (pretrained with the same
   seed) at the chosen rate for ``--steps`` steps and score Dice and IoU on the 120 validation images
   (``contrastkit segment --split val``'s protocol).

``--reuse RESULTS.json`` takes the choice and every validation entry whose starting weights are the
same (the same pretraining seed; scratch always) from an earlier run of the same settings instead of
fine-tuning them again: fine-tuning is seeded, so they are the figures a rerun would give.
``--starts`` runs some starts only (pretraining what they need: gcl-local its global run too), e.g.
``--starts gcl-local`` after a change that touched only the local stage.

Prints the choice table (development Dice) and the result table (validation Dice, mean ± std over
seeds), and writes both to ``--out``/results.json. ``--split dev`` stops after the choice (no
validation image is scored).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

import contrastkit
from contrastkit.core.paths import data_root
from contrastkit.modalities.image.segmentation.data import KVASIR, read_kvasir
from contrastkit.modalities.image.segmentation.finetune import FineTuning, segment

IMAGE_SIZE = 128
STARTS = ("scratch", "simclr", "gcl-global", "gcl-local")


def pretrain(out: Path, width: float, epochs: int, seed: int = 0, starts: tuple[str, ...] = STARTS) -> dict[str, Path]:
    images = str(data_root() / KVASIR / "train" / "images")
    common = dict(data=images, image_size=IMAGE_SIZE, backbone="resnet18", width=width, epochs=epochs,
                  batch_size=32, optimizer="adamw", lr=1e-3, warmup_epochs=min(1, epochs), seed=seed,
                  no_report=True, no_baselines=True)
    suffix = "" if seed == 0 else f"-seed{seed}"
    # gcl-local starts from the global run of its seed: that one is trained too
    needed = [name for name in ("simclr", "gcl-global", "gcl-local")
              if name in starts or (name == "gcl-global" and "gcl-local" in starts)]
    runs = {name: out / f"{name}{suffix}" for name in needed}
    for name, run in runs.items():
        if (run / "summary.json").is_file():
            continue
        started = time.time()
        extra = {"init": str(runs["gcl-global"])} if name == "gcl-local" else {}
        contrastkit.fit(method=name, out=str(run), **common, **extra)
        print(f"pretrained {name} (seed {seed}) in {time.time() - started:.0f} s", flush=True)
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/segmentation-kvasir")
    parser.add_argument("--width", type=float, default=0.25, help="ResNet-18 width of every start")
    parser.add_argument("--pretrain-epochs", type=int, default=10)
    parser.add_argument("--steps", type=int, default=100, help="fine-tuning steps (batch 8)")
    parser.add_argument("--lrs", type=float, nargs="+", default=[1e-3, 3e-4], help="fine-tuning rates to choose from")
    parser.add_argument("--budgets", type=int, nargs="+", default=[4, 38, 380])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--split", choices=("dev", "val"), default="val",
                        help="dev: only the choice on the development carve; val: then score the validation images")
    parser.add_argument("--pretrain-seed", type=int, default=None,
                        help="pretrain once with this seed for every fine-tuning seed (default: each seed its own)")
    parser.add_argument("--reuse", default=None, help="an earlier results.json of the same settings (see above)")
    parser.add_argument("--starts", nargs="+", choices=STARTS, default=list(STARTS),
                        help="the starts to fine-tune and score (default: all); the others are not run")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    pretrain_seeds = {s: s if args.pretrain_seed is None else args.pretrain_seed for s in args.seeds}
    starts = tuple(start for start in STARTS if start in args.starts)
    runs = {p: pretrain(out, args.width, args.pretrain_epochs, p, starts) for p in sorted({0, *pretrain_seeds.values()})}
    train, val = read_kvasir("train", IMAGE_SIZE), read_kvasir("val", IMAGE_SIZE)
    earlier = json.loads(Path(args.reuse).read_text()) if args.reuse else {}

    def fine_tune(start: str, masks: int, seed: int, split: str, lr: float, pretrain_seed: int = 0) -> dict:
        settings = FineTuning(steps=args.steps, lr=lr, width=args.width)
        run = None if start == "scratch" else runs[pretrain_seed][start]
        return segment(masks, seed=seed, run=run, split=split, settings=settings, image_size=IMAGE_SIZE,
                       train_set=train, scored_set=val)

    def reusable(start: str, masks: int, seed: int) -> dict | None:
        entry = earlier.get("validation", {}).get(f"{start}/{masks}/{seed}")
        same_start = entry is not None and (start == "scratch"
                                            or entry.get("pretrain_seed", 0) == pretrain_seeds[seed])
        return entry if same_start else None

    choice: dict[str, dict[float, float]] = {}
    for start in starts:
        if earlier.get("choice", {}).get(start):
            choice[start] = {float(lr): d for lr, d in earlier["choice"][start].items()}
        else:
            choice[start] = {lr: fine_tune(start, 38, 0, "dev", lr)["dice"] for lr in args.lrs}
        print(f"dev {start}: " + ", ".join(f"lr {lr:g} Dice {d:.3f}" for lr, d in choice[start].items()), flush=True)
    chosen = {start: max(scores, key=scores.get) for start, scores in choice.items()}
    print("\nChoice on the development carve (Dice x100, 38 masks of the other 320, seed 0)\n")
    print("| start | " + " | ".join(f"lr {lr:g}" for lr in args.lrs) + " | chosen |")
    print("|---|" + "---|" * (len(args.lrs) + 1))
    for start in starts:
        print(f"| {start} | " + " | ".join(f"{100 * choice[start][lr]:.1f}" for lr in args.lrs)
              + f" | {chosen[start]:g} |")
    results = {"settings": vars(args), "choice": {s: {str(k): v for k, v in c.items()} for s, c in choice.items()},
               "chosen_lr": chosen, "validation": {}}
    if args.split == "val":
        for start in starts:
            for masks in args.budgets:
                for seed in args.seeds:
                    result = reusable(start, masks, seed) or {
                        **fine_tune(start, masks, seed, "val", chosen[start], pretrain_seeds[seed]),
                        "pretrain_seed": None if start == "scratch" else pretrain_seeds[seed]}
                    results["validation"][f"{start}/{masks}/{seed}"] = result
                    print(f"val {start} masks {masks} seed {seed}: Dice {result['dice']:.3f}", flush=True)
        print(f"\nValidation Dice x100 (120 images, mean ± std over seeds {args.seeds}; IoU in results.json)\n")
        print("| start | " + " | ".join(f"{m} masks" for m in args.budgets) + " |")
        print("|---|" + "---|" * len(args.budgets))
        for start in starts:
            cells = []
            for masks in args.budgets:
                dice = [100 * results["validation"][f"{start}/{masks}/{s}"]["dice"] for s in args.seeds]
                cells.append(f"{np.mean(dice):.1f} ± {np.std(dice):.1f}")
            print(f"| {start} | " + " | ".join(cells) + " |")
    (out / "results.json").write_text(json.dumps(results, indent=2, default=str))


if __name__ == "__main__":
    main()
