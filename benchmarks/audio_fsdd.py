"""Audio on the Free Spoken Digit Dataset (issue 24): digit and speaker accuracy from 10 labels per class.

    OMP_NUM_THREADS=1 python benchmarks/audio_fsdd.py                       # development parts
    OMP_NUM_THREADS=1 python benchmarks/audio_fsdd.py --part test --epochs 3 --seeds 0 1

For each split of FSDD (``repetition``: the official split, repetitions 0-4 scored; ``speaker``:
speaker theo scored, no speaker on both sides) and each seed, every method pretrains on the
unlabelled clips of the training side (``contrastkit fit``'s training, in a temporary run folder; HuBERT
fits its k-means MFCC targets on those clips first, as ``contrastkit fit`` does),
then a logistic-regression probe (standardised features, C = 1, fixed beforehand: nothing is chosen
on the scored part) learns from 10 labelled clips per class of the training side (drawn with the
seed) and is scored on the scored part. Beside the methods:

- ``mfcc + logreg``: 20 MFCCs (librosa, the log-mel front end's settings), their mean and standard
  deviation over time (40 numbers), the same probe;
- ``untrained <method>``: the method's encoder at its initial weights (same seed), the same probe;
- ``supervised``: the SimCLR/BYOL spectrogram encoder + a linear layer trained from scratch with
  cross-entropy on the same 100 labelled clips (Adam 1e-3, 200 full-batch epochs, no view).

Speaker accuracy (6 speakers, 10 labelled clips each) is scored on the repetition split only (the
speaker split scores a speaker no model has heard). ``--part dev`` (default) scores the development
part carved from the training side instead of the test part. Prints one table: mean +- std over seeds.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from contrastkit.core.seeding import seeded
from contrastkit.engine.auxiliary import fit_auxiliary
from contrastkit.evaluation.linear import make_probe_pipeline
from contrastkit.evaluation.splits import few_labels_per_class
from contrastkit.modalities.audio.cli import CROP_SECONDS, DEFAULTS, build_method, settings_of
from contrastkit.modalities.audio.encoders import SpectrogramEncoder, masked_mean
from contrastkit.modalities.audio.frontends import LogMelSpectrogram
from contrastkit.modalities.audio.sources import fsdd_split, open_audio_folder
from contrastkit.modalities.audio.training import embed_clips, train_audio

LABELS_PER_CLASS = 10


def probe_accuracy(features: np.ndarray, targets: np.ndarray, labelled: np.ndarray, scored: np.ndarray) -> float:
    classifier = make_probe_pipeline(C=1.0).fit(features[labelled], targets[labelled])
    return 100.0 * float(np.mean(classifier.predict(features[scored]) == targets[scored]))


def mfcc_features(clips) -> np.ndarray:
    import librosa

    frontend = LogMelSpectrogram(clips.sample_rate)
    rows = []
    for i in range(len(clips)):
        mfcc = librosa.feature.mfcc(y=clips.clip(i), sr=clips.sample_rate, n_mfcc=20, n_fft=frontend.n_fft,
                                    hop_length=frontend.hop_length, win_length=frontend.win_length, n_mels=40)
        rows.append(np.concatenate([mfcc.mean(axis=1), mfcc.std(axis=1)]))
    return np.stack(rows).astype(np.float32)


def supervised_accuracy(clips, targets: np.ndarray, labelled: np.ndarray, scored: np.ndarray, seed: int,
                        epochs: int = 200) -> float:
    """The spectrogram encoder + a linear layer, from scratch on the labelled clips only."""
    classes = np.unique(targets[labelled])
    index = {c: i for i, c in enumerate(classes)}
    frontend = LogMelSpectrogram(clips.sample_rate)
    with seeded(seed):
        encoder = SpectrogramEncoder(DEFAULTS["n_mels"], DEFAULTS["width"], DEFAULTS["depth"])
        head = torch.nn.Linear(encoder.output_dim, len(classes))

        def inputs(rows: np.ndarray):
            waves, lengths = clips.batch(rows)
            waves, lengths = torch.from_numpy(waves), torch.from_numpy(lengths)
            return frontend(waves), frontend.frames(lengths)

        spectrogram, frames = inputs(labelled)
        y = torch.tensor([index[c] for c in targets[labelled]])

        def loss_of(rows: torch.Tensor) -> torch.Tensor:
            logits = head(masked_mean(encoder(spectrogram[rows], frames[rows]), frames[rows]))
            return torch.nn.functional.cross_entropy(logits, y[rows])

        fit_auxiliary([*encoder.parameters(), *head.parameters()], loss_of, len(labelled), epochs=epochs, lr=1e-3)
    with torch.no_grad():
        spectrogram, frames = inputs(scored)
        predicted = head(masked_mean(encoder(spectrogram, frames), frames)).argmax(dim=1).numpy()
    return 100.0 * float(np.mean(classes[predicted] == targets[scored]))


def pretrain(method_name: str, clips, train: np.ndarray, seed: int, epochs: int, folder: Path):
    options = {**DEFAULTS, "method": method_name, "data": "fsdd", "seed": seed, "max_epochs": epochs,
               "crop_seconds": CROP_SECONDS[method_name]}
    untrained = build_method(options, clips.sample_rate)
    method = build_method(options, clips.sample_rate)  # the same initial weights (seeded by --seed)
    started = time.perf_counter()
    train_audio(method, clips, train, settings_of(options, len(train)), folder / f"{method_name}-{seed}")
    return untrained, method, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--part", choices=("dev", "test"), default="dev")
    parser.add_argument("--methods", nargs="+", default=["simclr", "byol", "cpc", "wav2vec2", "hubert", "mae"])
    parser.add_argument("--splits", nargs="+", default=["repetition", "speaker"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    clips = open_audio_folder("fsdd")
    mfcc = mfcc_features(clips)
    results: dict[tuple[str, str, str], list[float]] = {}

    def record(split: str, row: str, what: str, value: float) -> None:
        results.setdefault((split, row, what), []).append(value)

    with tempfile.TemporaryDirectory() as scratch:
        for split in args.splits:
            train, scored = fsdd_split(clips, split, args.part)
            speakers = np.unique(clips.speakers, return_inverse=True)[1]
            tasks = [("digit", clips.labels)] + ([("speaker", speakers)] if split == "repetition" else [])
            for seed in args.seeds:
                labelled = {task: few_labels_per_class(targets, train, LABELS_PER_CLASS, seed=seed)
                            for task, targets in tasks}
                for task, targets in tasks:
                    record(split, "mfcc + logreg", task, probe_accuracy(mfcc, targets, labelled[task], scored))
                    record(split, "supervised from scratch", task,
                           supervised_accuracy(clips, targets, labelled[task], scored, seed))
                    print(f"done: {split} seed {seed} {task}: mfcc {results[split, 'mfcc + logreg', task][-1]:.1f}, "
                          f"supervised {results[split, 'supervised from scratch', task][-1]:.1f}", flush=True)
                for name in args.methods:
                    untrained, method, seconds = pretrain(name, clips, train, seed, args.epochs, Path(scratch))
                    record(split, name, "seconds", seconds)
                    for row, model in ((name, method), (f"untrained {name}", untrained)):
                        features = embed_clips(model, clips)
                        for task, targets in tasks:
                            record(split, row, task, probe_accuracy(features, targets, labelled[task], scored))
                    print(f"done: {split} seed {seed} {name} ({seconds:.0f} s): " + ", ".join(
                        f"{row} {task} {results[split, row, task][-1]:.1f}" for row in (name, f"untrained {name}")
                        for task, _ in tasks), flush=True)

    def cell(values: list[float] | None) -> str:
        return "-" if not values else f"{np.mean(values):.1f} ± {np.std(values):.1f}"

    print(f"\nFSDD, {args.part} part, {LABELS_PER_CLASS} labels per class, seeds {args.seeds}, {args.epochs} epochs")
    print("| split | model | digit acc. (%) | speaker acc. (%) | pretraining s |")
    print("|---|---|---|---|---|")
    for (split, row, what) in sorted({k[:2] + ("",) for k in results}):
        del what
        print(f"| {split} | {row} | {cell(results.get((split, row, 'digit')))} | "
              f"{cell(results.get((split, row, 'speaker')))} | {cell(results.get((split, row, 'seconds')))} |")


if __name__ == "__main__":
    main()
