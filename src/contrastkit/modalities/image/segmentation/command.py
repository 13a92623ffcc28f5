"""``contrastkit segment``: fine-tune a segmentation model on a budget of masks and print its Dice.

    contrastkit segment --masks 38 --seed 0                      # from scratch, scored on the dev carve
    contrastkit segment --run runs/gcl-local --masks 38 --seed 0 # from a pretraining run
    contrastkit segment --run runs/gcl-local --masks 38 --split val   # once, after the choices

Light at import (argparse only): the command line starts without torch.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

SCRATCH_BACKBONE = "resnet18"


def add_segment_parser(commands) -> None:
    segment = commands.add_parser(
        "segment", help="fine-tune a U-Net over an image encoder on a few Kvasir-SEG masks; Dice and IoU")
    segment.add_argument("--run", help="a pretraining run folder of an image method whose encoder has stage features "
                                       "(resnet18/50); a gcl-local run also gives its decoder blocks. Default: scratch")
    segment.add_argument("--masks", type=int, required=True,
                         help="training masks to fine-tune on, drawn once per --seed and shared by every method")
    segment.add_argument("--seed", type=int, default=0, help="seed of the masks drawn, the initialisation and the views")
    segment.add_argument("--split", choices=("dev", "val"), default="dev",
                         help="dev (default): masks from train minus a fixed 60-image carve, scored on the carve; "
                              "val: masks from all 380 train images, scored on the 120 validation images (once, "
                              "after choosing on dev)")
    segment.add_argument("--data", help="a Kvasir-SEG folder (default: $CONTRASTKIT_DATA/segmentation/kvasir-seg)")
    segment.add_argument("--image-size", type=int, default=128, help="side length of images and masks (default 128)")
    segment.add_argument("--steps", type=int, default=300, help="optimiser steps of fine-tuning (default 300)")
    segment.add_argument("--batch-size", type=int, default=8, help="pairs per step (default 8; fewer masks: all)")
    segment.add_argument("--lr", type=float, default=1e-3, help="Adam's learning rate (default 1e-3)")
    segment.add_argument("--backbone", default=SCRATCH_BACKBONE, help="scratch only: the encoder (default resnet18)")
    segment.add_argument("--width", type=float, default=1.0, help="scratch only: its width multiplier (default 1)")
    segment.add_argument("--out", help="also write the result as JSON to this file")


def run_segment(args: argparse.Namespace) -> int:
    from contrastkit.core.errors import ConfigError
    from contrastkit.modalities.image.segmentation.finetune import FineTuning, segment

    if args.steps < 1 or args.batch_size < 1 or not args.lr > 0:
        raise ConfigError(f"--steps and --batch-size must be positive and --lr above 0; got {args.steps}, "
                          f"{args.batch_size}, {args.lr}.")
    if args.run and (args.backbone != SCRATCH_BACKBONE or args.width != 1.0):
        raise ConfigError("--backbone and --width size the scratch encoder; a --run brings its own. Drop them.")
    if args.split == "val":
        print("scoring the 120 validation images: make the choices on --split dev first", file=sys.stderr)
    settings = FineTuning(steps=args.steps, batch_size=args.batch_size, lr=args.lr, backbone=args.backbone,
                          width=args.width)
    result = segment(args.masks, seed=args.seed, run=args.run, split=args.split, settings=settings,
                     image_size=args.image_size, data=args.data)
    text = json.dumps({k: v for k, v in result.items() if k != "training_rows"}, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2))
    return 0
