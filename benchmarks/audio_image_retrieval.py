"""Spoken digit <-> handwritten digit retrieval with two towers (issue 24): does self-supervised
pretraining of the towers help most when pairs are scarce?

    OMP_NUM_THREADS=1 python benchmarks/audio_image_retrieval.py --seeds 0 1 2

The setting of the audio-sheet-music retrieval paper, scaled to the data here: one tower embeds a
spoken digit (FSDD, 8 kHz), the other an image of a digit (MNIST test images), and a clip and an image
are relevant to each other when they show the same digit. For each seed:

1. **Pretraining, no labels** (once, under ``--pretrain-seed`` 0, shared by every seed: the
   machine's budget; ``--pretrain-seed -1`` pretrains per seed). The audio tower: ``simclr`` on
   log-mel views of FSDD's training side of the repetition split (repetitions 5-49; the test
   part, repetitions 0-4, is never trained on), ``contrastkit fit``'s audio defaults,
   ``--audio-epochs`` epochs. The image tower: ``contrastkit fit --method simclr --data
   mnist-test --backbone small-cnn`` (its own 80/20 held-out split, split seed 0),
   ``--image-epochs`` epochs. The *random* towers are the same architectures freshly built under
   each seed.
2. **Pairs.** For n in ``--pairs-per-digit`` (10 and 100): n training clips and n training images
   of each digit, drawn with the seed and paired at random within the digit (a clip and an image
   of the same digit are one pair; nothing else links them).
3. **Two-tower training** (``contrastkit.modalities.pairs``: CLIP's loss, learned temperature from
   0.07, linear heads into 128 dimensions; every tower weight trains): ``--steps`` steps of
   ``--batch-size`` pairs, AdamW at ``--lr`` (encoders and heads), warm-up then cosine. The same
   settings for every row, fixed before any score was seen.
4. **Retrieval**, both ways, between the 300 test clips (each embedded alone, at its own length)
   and the image run's 2,000 held-out images:
   R@1 (the first result shows the query's digit) and MRR over the whole other side
   (:func:`~contrastkit.modalities.pairs.retrieval.label_retrieval`). Chance: R@1 = 10 %.

Nothing is chosen on these figures, so the test parts are scored directly (once). Prints one
table: mean, min-max over seeds; one JSON line per (seed, budget, init) in ``--out``/results.jsonl.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from contrastkit.core.seeding import seeded
from contrastkit.engine.run_folder import read_split
from contrastkit.modalities.audio.cli import CROP_SECONDS, DEFAULTS, build_method, settings_of
from contrastkit.modalities.audio.sources import fsdd_split, open_audio_folder
from contrastkit.modalities.audio.tower import ClipInput
from contrastkit.modalities.audio.training import train_audio
from contrastkit.modalities.image.methods import build_method as build_image_method
from contrastkit.modalities.image.sources import open_image_source
from contrastkit.modalities.image.training.restore import load_method
from contrastkit.modalities.pairs.pairs import Pairs
from contrastkit.modalities.pairs.retrieval import label_retrieval
from contrastkit.modalities.pairs.towers import EmbeddingTower, TensorInput
from contrastkit.modalities.pairs.train import TrainOptions, encode_side, train_two_tower
from contrastkit.modalities.pairs.two_tower import TwoTowerOptions, build_two_tower

DIRECTIONS = {"first_to_second": "audio -> image", "second_to_first": "image -> audio"}


def audio_options(seed: int, epochs: int) -> dict:
    return {**DEFAULTS, "method": "simclr", "data": "fsdd", "seed": seed, "max_epochs": epochs,
            "crop_seconds": CROP_SECONDS["simclr"], "eval_split": "test"}


def random_audio(sample_rate: int, seed: int) -> torch.nn.Module:
    """The audio SimCLR method freshly built under ``seed`` (its weights are a function of the seed)."""
    return build_method(audio_options(seed, 0), sample_rate).eval()


def pretrained_audio(clips, train: np.ndarray, seed: int, epochs: int, folder: Path) -> torch.nn.Module:
    """The audio SimCLR method of ``seed`` trained ``epochs`` epochs on the clips at ``train``; the
    weights are kept in the run folder and reused when present."""
    options = audio_options(seed, epochs)
    method = build_method(options, clips.sample_rate)
    run = folder / f"audio-simclr-seed{seed}-e{epochs}"
    weights = run / "pretrained.pt"
    if weights.is_file():
        method.load_state_dict(torch.load(weights, weights_only=True))
    else:
        train_audio(method, clips, train, settings_of(options, len(train)), run)
        torch.save(method.state_dict(), weights)
    return method.eval()


def pretrained_images(seed: int, epochs: int, folder: Path):
    """(method, its FitConfig, its DataInfo, training rows, held-out rows) of the MNIST SimCLR run of
    ``seed``; the run is made once and reused."""
    run = folder / f"mnist-simclr-seed{seed}-e{epochs}"
    if not (run / "split.json").is_file():
        subprocess.run([str(Path(sys.executable).with_name("contrastkit")), "fit", "--modality", "image",
                        "--method", "simclr", "--data", "mnist-test", "--max-epochs", str(epochs), "--seed", str(seed),
                        "--backbone", "small-cnn",
                        "--out", str(run), "--no-report", "--no-baselines"], check=True)
    method, config, data = load_method(run / "checkpoints" / "last.ckpt")
    rows = np.load(run / "rows.npy")
    train, holdout = read_split(run)
    return method.eval(), config, data, rows[train], rows[holdout]


def random_images(config, data, seed: int) -> torch.nn.Module:
    """The image run's architecture freshly built under ``seed``."""
    with seeded(seed):
        return build_image_method(config.method, config, data).eval()


def draw_pairs(clips, clip_rows: np.ndarray, images, image_rows: np.ndarray, image_labels: np.ndarray,
               per_digit: int, seed: int) -> Pairs:
    """``per_digit`` clips and images of each digit, paired at random within the digit."""
    rng = np.random.default_rng(seed)
    first, second, ids = [], [], []
    clip_digits = np.array([int(clips.class_names[label]) for label in clips.labels[clip_rows]])
    for digit in range(10):
        chosen_clips = rng.choice(clip_rows[clip_digits == digit], per_digit, replace=False)
        chosen_images = rng.choice(image_rows[image_labels[image_rows] == digit], per_digit, replace=False)
        for clip, image in zip(chosen_clips, chosen_images, strict=True):
            first.append(clips.clip(int(clip)))
            second.append(images[int(image)])
            ids.append(f"{digit}-{clip}-{image}")
    return Pairs(first, second, ids, "clip", "image", source="fsdd x mnist-test")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--pairs-per-digit", nargs="+", type=int, default=[10, 100])
    parser.add_argument("--audio-epochs", type=int, default=10)
    parser.add_argument("--image-epochs", type=int, default=5)
    parser.add_argument("--pretrain-seed", type=int, default=0,
                        help="the seed of both pretraining runs, shared by every seed (-1: each seed pretrains its own)")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--out", type=Path, default=Path("runs/audio-image-retrieval"))
    parser.add_argument("--table-only", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)
    store = args.out / "results.jsonl"
    done = {(r["seed"], r["per_digit"], r["init"]) for r in map(json.loads, store.read_text().splitlines())} \
        if store.is_file() else set()
    if not args.table_only:
        clips = open_audio_folder("fsdd")
        clip_train, clip_test = fsdd_split(clips, "repetition", "test")
        source = open_image_source("mnist-test")
        images, image_labels = source.images.numpy(), source.labels.numpy()
        test_digits = [int(clips.class_names[label]) for label in clips.labels[clip_test]]
        for seed in args.seeds:
            pretrain_seed = seed if args.pretrain_seed < 0 else args.pretrain_seed
            started = time.perf_counter()
            audio = {"pretrained": pretrained_audio(clips, clip_train, pretrain_seed, args.audio_epochs, args.out),
                     "random": random_audio(clips.sample_rate, seed)}
            audio_seconds = time.perf_counter() - started
            started = time.perf_counter()
            pretrained_image, config, data, image_train, image_test = pretrained_images(
                pretrain_seed, args.image_epochs, args.out)
            image = {"pretrained": pretrained_image, "random": random_images(config, data, seed)}
            image_seconds = time.perf_counter() - started
            print(f"seed {seed}: pretraining audio {audio_seconds:.0f} s, images {image_seconds:.0f} s", flush=True)
            for per_digit in args.pairs_per_digit:
                pairs = draw_pairs(clips, clip_train, images, image_train, image_labels, per_digit, seed)
                for init in ("pretrained", "random"):
                    if (seed, per_digit, init) in done:
                        continue
                    audio_method = build_copy(audio[init])
                    image_method = build_copy(image[init])
                    with seeded(seed):
                        model = build_two_tower(EmbeddingTower(audio_method), EmbeddingTower(image_method),
                                                TwoTowerOptions(embedding_dim=128, temperature=0.07))
                    clip_input, image_input = ClipInput(), TensorInput(dtype=None)
                    options = TrainOptions(max_steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                                           head_lr=args.lr, seed=seed)
                    started = time.perf_counter()
                    train_two_tower(model, pairs, clip_input, image_input, options, progress_bar=False)
                    seconds = time.perf_counter() - started
                    # One clip at a time: in a padded batch a clip's last frames see the padding.
                    first = encode_side(model, [clips.clip(int(i)) for i in clip_test], clip_input, "a", batch_size=1)
                    second = encode_side(model, [images[int(i)] for i in image_test], image_input, "b")
                    result = label_retrieval(first, second, test_digits, image_labels[image_test].tolist())
                    row = {"seed": seed, "per_digit": per_digit, "init": init, "train_seconds": seconds,
                           **{f"{DIRECTIONS[d]} {m}": 100 * result[d][m] for d in DIRECTIONS for m in ("r@1", "mrr")}}
                    with store.open("a") as handle:
                        handle.write(json.dumps(row) + "\n")
                    print(json.dumps(row), flush=True)
    print_table([json.loads(line) for line in store.read_text().splitlines()])


def build_copy(method: torch.nn.Module) -> torch.nn.Module:
    """A copy to train, so that every budget starts from the same weights."""
    import copy

    return copy.deepcopy(method).train()


def print_table(rows: list[dict]) -> None:
    metrics = [f"{d} {m}" for d in DIRECTIONS.values() for m in ("r@1", "mrr")]
    print("\n| pairs per digit | towers | seeds | " + " | ".join(metrics) + " |")
    print("|---|---|---|" + "---|" * len(metrics))
    for per_digit in sorted({r["per_digit"] for r in rows}):
        for init in ("pretrained", "random"):
            chosen = [r for r in rows if r["per_digit"] == per_digit and r["init"] == init]
            if not chosen:
                continue
            cells = []
            for metric in metrics:
                values = np.array([r[metric] for r in chosen])
                cells.append(f"{np.mean(values):.1f} ({values.min():.1f}-{values.max():.1f})")
            print(f"| {per_digit} | {init} | {len(chosen)} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
