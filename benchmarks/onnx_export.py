"""ONNX export against PyTorch: agreement on 1,000 real samples per encoder kind, and speed.

    OMP_NUM_THREADS=1 python benchmarks/onnx_export.py

- image: a ResNet-18 (width 0.5, CIFAR stem) trained for a few SimCLR steps on cifar10-test and
  exported with ``contrastkit export --format onnx``; 1,000 CIFAR-10 images (uint8, 32x32);
- text: all-MiniLM-L6-v2 exported with ``contrastkit export --text-model minilm --format onnx``;
  the first 1,000 lines of SciFact's unlabelled corpus sentences (``sentences.txt.gz``).

Agreement is each sample's cosine between the two embeddings (the export is refused below 0.9999).
Speed is samples per second over the 1,000 samples in batches of 64 after one warm-up batch, with
one thread on each side (torch.set_num_threads(1); onnxruntime intra-op threads 1); text timings
include tokenization on both sides.
"""

from __future__ import annotations

import argparse
import gzip
import itertools
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from contrastkit.cli import main as contrastkit_main
from contrastkit.core.paths import data_root
from contrastkit.onnx_export import row_cosines

SAMPLES = 1000
BATCH = 64


def timed_per_second(function, count: int, repeats: int = 3) -> float:
    """Samples per second of the fastest of ``repeats`` calls (a shared machine's noise is one-sided)."""
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        best = min(best, time.perf_counter() - started)
    return count / best


def image_row(work: Path) -> tuple:
    from contrastkit.modalities.image.export import load_exported
    from contrastkit.modalities.image.onnx import OnnxImageEncoder
    from contrastkit.modalities.image.sources import open_image_source

    run = work / "image-run"
    assert contrastkit_main(["fit", "--method", "simclr", "--modality", "image", "--data", "cifar10-test",
                             "--limit", "2000", "--holdout", "0", "--backbone", "resnet18", "--width", "0.5",
                             "--max-steps", "3", "--batch-size", "64", "--no-report", "--no-baselines",
                             "--out", str(run)]) == 0
    folder = work / "image-export"
    assert contrastkit_main(["export", "--checkpoint", str(run / "checkpoints" / "last.ckpt"), "--format", "onnx",
                             "--out", str(folder)]) == 0
    images = open_image_source("cifar10-test").images[-SAMPLES:]  # the last 1,000: outside the 2,000 trained on
    encoder, onnx = load_exported(folder), OnnxImageEncoder(folder, threads=1)

    def with_torch():
        with torch.inference_mode():
            return torch.cat([encoder(images[i:i + BATCH]) for i in range(0, SAMPLES, BATCH)]).numpy()

    array = images.numpy()
    expected, actual = with_torch(), onnx.embed(array, batch_size=BATCH)
    return ("image: resnet18 (w 0.5), 32x32 CIFAR-10", expected, actual,
            timed_per_second(with_torch, SAMPLES), timed_per_second(lambda: onnx.embed(array, BATCH), SAMPLES))


def text_row(work: Path) -> tuple:
    from contrastkit.modalities.text.encoders import load_text_encoder
    from contrastkit.modalities.text.onnx import OnnxTextEncoder

    folder = work / "text-export"
    assert contrastkit_main(["export", "--text-model", "minilm", "--format", "onnx", "--out", str(folder)]) == 0
    with gzip.open(data_root() / "scifact" / "sentences.txt.gz", "rt") as handle:
        sentences = [line.strip() for line in itertools.islice(handle, SAMPLES)]
    encoder, onnx = load_text_encoder("minilm"), OnnxTextEncoder(folder, threads=1)
    expected = encoder.encode(sentences, batch_size=BATCH).numpy()
    actual = onnx.encode(sentences, batch_size=BATCH)
    return ("text: all-MiniLM-L6-v2, SciFact sentences", expected, actual,
            timed_per_second(lambda: encoder.encode(sentences, batch_size=BATCH), SAMPLES),
            timed_per_second(lambda: onnx.encode(sentences, batch_size=BATCH), SAMPLES))


def main() -> None:
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
    torch.set_num_threads(1)
    print(f"{SAMPLES} samples per encoder, batches of {BATCH}, one thread per runtime\n")
    print("| encoder | min cosine | mean cosine | max abs difference | PyTorch (samples/s) | onnxruntime (samples/s) | speed-up |")
    print("|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as work:
        for row in (image_row(Path(work)), text_row(Path(work))):
            name, expected, actual, torch_speed, onnx_speed = row
            cosines = row_cosines(expected, actual)
            print(f"| {name} | {cosines.min():.7f} | {cosines.mean():.7f} | {np.abs(expected - actual).max():.2e} "
                  f"| {torch_speed:.0f} | {onnx_speed:.0f} | {onnx_speed / torch_speed:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
