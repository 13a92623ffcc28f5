"""contrastkit's text training and encoding beside sentence-transformers', at equal settings (issue 30).

Training: in-batch contrastive fine-tuning of all-MiniLM-L6-v2 on MRPC's paraphrase pairs (train
file, label 1: 2,753 (sentence, paraphrase) pairs), the same in both libraries:

- contrastkit: ``fit_text`` with the ``mnrl`` method (temperature 0.05);
- sentence-transformers: ``SentenceTransformerTrainer`` with ``MultipleNegativesRankingLoss``
  (scale 20 = 1 / 0.05), its default optimiser (AdamW, weight decay 0.01 on weights but not on
  biases and LayerNorm), gradient norm clipped at 1.0;
- the same batches: the trainer is handed contrastkit's epoch order as its batch sampler;
- the same model files, batch size, sequence length (``--max-length``, padding to the longest text
  of the batch in both), float32, learning rate with no warm-up and a linear decay to 0 at
  ``--steps`` (the two schedules are then the same function), dropout on (its masks differ:
  contrastkit draws them per sample from the seed, so a batch gets the same masks in 1 or N
  processes);
- the same torch build, threads (``--threads``) and process layout: each run is a fresh process
  of this script, so its peak resident memory (``ru_maxrss``) is that run's alone.

Reported per library: steps/s between step ``--skip`` and the last step (the first steps pay for
allocations), peak RSS, and STS-B *development* Spearman of the trained encoder, both encoders
scored by the same code (``sts_spearman`` on the saved model folder). No choice is made from these
figures, so no test split is read.

Encoding: sentences/s and documents/s of ``TextEncoder.encode`` against
``SentenceTransformer.encode`` (both batch 64, length-sorted batches, float32, no gradient): the
STS-B development sentences (max 128 tokens) and the first ``--documents`` SciFact abstracts (max 256
tokens); the two libraries' embeddings are compared (largest absolute difference).

Every configuration runs ``--repeats`` times in alternating order (contrastkit first in even
repeats, sentence-transformers first in odd ones); the table gives the median and min-max.

Run it in the text anchor environment (``make text-anchors``: sentence-transformers' trainer needs
``datasets`` and ``accelerate``, which the project does not; the same torch 2.13.0 CPU build)::

    CONTRASTKIT_TEXT_ANCHOR_ENV=$HOME/text-anchors-venv make text-anchors
    $CONTRASTKIT_TEXT_ANCHOR_ENV/bin/python benchmarks/text_vs_sentence_transformers.py \\
        --threads 1 --steps 30 --batch-size 32 --repeats 3
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

LIBRARIES = ("contrastkit", "sentence-transformers")


def mrpc_paraphrases(data: Path) -> list[tuple[str, str]]:
    pairs = []
    with open(data / "mrpc" / "msr_paraphrase_train.txt", encoding="utf-8-sig") as handle:
        for line in handle:
            fields = line.rstrip("\n").split("\t")
            if len(fields) == 5 and fields[0] == "1":
                pairs.append((fields[3], fields[4]))
    return pairs


def clocks() -> tuple[float, float]:
    """(wall seconds, this process's CPU seconds): the CPU time is what the step cost the machine
    when other jobs share it; the wall time, what a user waits."""
    return time.perf_counter(), time.process_time()


def epoch_batches(num_samples: int, batch_size: int, seed: int) -> list[list[int]]:
    """contrastkit's first-epoch batches (SentenceBatchSampler, one process)."""
    from contrastkit.modalities.text.data import SentenceBatchSampler

    sampler = SentenceBatchSampler(num_samples, batch_size, seed, 0, 1)
    return [list(map(int, batch)) for batch in sampler]


def train_contrastkit(pairs, args, folder: Path) -> list[float]:
    from contrastkit.modalities.text.encoders import TextEncoder
    from contrastkit.modalities.text.methods import build_text_method
    from contrastkit.modalities.text.pair_data import PairData
    from contrastkit.modalities.text.train import fit_text

    table = folder / "pairs.jsonl"
    table.write_text("".join(json.dumps({"anchor": a, "positive": p}) + "\n" for a, p in pairs))
    data = PairData.from_file(table)
    method = build_text_method("mnrl", TextEncoder.from_folder("minilm"), temperature=0.05)
    times = []
    # The engine calls the method's after_optimizer_step hook once per step, as the trainer below
    # calls on_step_end: the same point of the step is timed in both libraries.
    method.after_optimizer_step = lambda step, total_steps: times.append(clocks())
    fit_text(method, data, batch_size=args.batch_size, lr=args.lr, max_steps=args.steps, warmup_steps=0,
             seed=args.seed, out_dir=folder / "run", log_every=args.steps, max_length=args.max_length)
    return times, folder / "run" / "encoder"


def train_sentence_transformers(pairs, args, folder: Path):
    from datasets import Dataset
    from sentence_transformers import (SentenceTransformer, SentenceTransformerTrainer,
                                       SentenceTransformerTrainingArguments)
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss
    from transformers import TrainerCallback

    from contrastkit.modalities.text.encoders import minilm_folder

    batches = epoch_batches(len(pairs), args.batch_size, args.seed)

    class GivenBatches:
        def __iter__(self):
            return iter(batches)

        def __len__(self):
            return len(batches)

    class Trainer(SentenceTransformerTrainer):
        def get_batch_sampler(self, dataset, batch_size, drop_last, valid_label_columns=None, generator=None,
                              seed=0):
            return GivenBatches()

    class StepTimes(TrainerCallback):
        def __init__(self):
            self.times = []

        def on_step_end(self, train_args, state, control, **kwargs):
            self.times.append(clocks())

    model = SentenceTransformer(str(minilm_folder()), device="cpu")
    model.max_seq_length = args.max_length
    dataset = Dataset.from_dict({"anchor": [a for a, _ in pairs], "positive": [p for _, p in pairs]})
    training_args = SentenceTransformerTrainingArguments(
        output_dir=str(folder / "st"), per_device_train_batch_size=args.batch_size, max_steps=args.steps,
        learning_rate=args.lr, warmup_steps=0, weight_decay=0.01, max_grad_norm=1.0,
        lr_scheduler_type="linear", logging_steps=10_000, save_strategy="no", report_to="none",
        dataloader_num_workers=0, seed=args.seed, use_cpu=True, disable_tqdm=True)
    timer = StepTimes()
    trainer = Trainer(model=model, args=training_args, train_dataset=dataset,
                      loss=MultipleNegativesRankingLoss(model, scale=1 / 0.05), callbacks=[timer])
    trainer.train()
    model.save(str(folder / "encoder"))
    return timer.times, folder / "encoder"


def run_training(args) -> dict:
    from contrastkit.core.paths import data_root
    from contrastkit.modalities.text.encoders import TextEncoder
    from contrastkit.modalities.text.evaluation import sts_spearman
    from contrastkit.modalities.text.sources import read_sts

    pairs = mrpc_paraphrases(data_root())
    with tempfile.TemporaryDirectory() as tmp:
        train = train_contrastkit if args.library == "contrastkit" else train_sentence_transformers
        times, encoder_folder = train(pairs, args, Path(tmp))
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        timed = times[args.skip - 1:]
        rate = (len(timed) - 1) / (timed[-1][0] - timed[0][0])
        cpu_per_step = (timed[-1][1] - timed[0][1]) / (len(timed) - 1)
        encoder = TextEncoder.from_folder(encoder_folder)
        spearman = sts_spearman(encoder, read_sts(data_root() / "stsb" / "sts-dev.csv"))
    return {"steps": len(times), "steps_per_s": rate, "cpu_s_per_step": cpu_per_step, "peak_rss_mb": peak_mb,
            "stsb_dev": spearman}


def run_encoding(args) -> dict:
    import numpy as np
    import torch

    from contrastkit.core.paths import data_root
    from contrastkit.modalities.text.encoders import TextEncoder, minilm_folder
    from contrastkit.modalities.text.sources import read_sts

    if args.kind == "sentences":
        sts = read_sts(data_root() / "stsb" / "sts-dev.csv")
        texts, max_length = list(dict.fromkeys(sts.first + sts.second)), 128
    else:
        with gzip.open(data_root() / "scifact" / "corpus.jsonl.gz", "rt") as handle:
            rows = [json.loads(line) for _, line in zip(range(args.documents), handle)]
        texts, max_length = [f"{row.get('title', '')} {row['text']}".strip() for row in rows], 256
    if args.library == "contrastkit":
        encoder = TextEncoder.from_folder("minilm", max_length=max_length)
        encode = lambda: encoder.encode(texts, batch_size=64).numpy()  # noqa: E731
    else:
        from sentence_transformers import SentenceTransformer

        model = SentenceTransformer(str(minilm_folder()), device="cpu")
        model.max_seq_length = max_length
        encode = lambda: model.encode(texts, batch_size=64, convert_to_numpy=True)  # noqa: E731
    with torch.inference_mode():
        encode()  # warm-up pass: first-call allocations are not the library's speed
        wall, cpu = clocks()
        embeddings = encode()
        wall_end, cpu_end = clocks()
    np.save(args.embeddings_out, embeddings.astype(np.float32))
    return {"texts": len(texts), "texts_per_s": len(texts) / (wall_end - wall),
            "texts_per_cpu_s": len(texts) / (cpu_end - cpu)}


def dropout_cost(args) -> dict:
    """CPU seconds of one forward + backward pass of MiniLM on ``--batch-size`` MRPC sentences in training
    mode, with torch's dropout and with contrastkit's per-sample dropout masks (what makes N processes
    train like one; modalities/text/dropout.py), median of 7 passes each, alternating."""
    import contextlib

    from contrastkit.core.paths import data_root
    from contrastkit.modalities.text.dropout import sample_seeded_dropout
    from contrastkit.modalities.text.encoders import TextEncoder

    texts = [a for a, _ in mrpc_paraphrases(data_root())[:args.batch_size]]
    encoder = TextEncoder.from_folder("minilm").train()
    tokens = encoder.tokenize(texts, args.max_length)
    times: dict[str, list[float]] = {"torch": [], "per-sample": []}
    for step in range(7):
        for kind in ("torch", "per-sample") if step % 2 == 0 else ("per-sample", "torch"):
            with sample_seeded_dropout(encoder, seed=0) if kind == "per-sample" else contextlib.nullcontext() as stream:
                if stream is not None:
                    stream.begin_step(step)
                start = time.process_time()
                encoder(tokens).square().sum().backward()
                times[kind].append(time.process_time() - start)
    return {kind: statistics.median(values) for kind, values in times.items()} | {"tokens": int(tokens["input_ids"].shape[1])}


def child(args) -> None:
    import torch

    torch.set_num_threads(args.threads)
    run = {"train": run_training, "encode": run_encoding, "dropout": dropout_cost}[args.task]
    result = run(args)
    print("RESULT " + json.dumps(result), flush=True)


def launch(task: str, library: str, args, extra: list[str]) -> dict:
    command = [sys.executable, __file__, "--child", task, "--library", library, "--threads", str(args.threads),
               "--steps", str(args.steps), "--batch-size", str(args.batch_size), "--max-length",
               str(args.max_length), "--lr", str(args.lr), "--seed", str(args.seed), "--skip", str(args.skip),
               "--documents", str(args.documents), *extra]
    environment = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads),
                   "TOKENIZERS_PARALLELISM": "false"}
    result = subprocess.run(command, capture_output=True, text=True, env=environment)
    lines = [line for line in result.stdout.splitlines() if line.startswith("RESULT ")]
    if result.returncode != 0 or not lines:
        raise SystemExit(f"{task} {library} failed:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def summary(values: list[float], digits: int = 2) -> str:
    return f"{statistics.median(values):.{digits}f} ({min(values):.{digits}f}-{max(values):.{digits}f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", choices=("train", "encode", "dropout"), default=None, help=argparse.SUPPRESS)
    parser.add_argument("--library", choices=LIBRARIES, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--kind", choices=("sentences", "documents"), default="sentences", help=argparse.SUPPRESS)
    parser.add_argument("--embeddings-out", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--lr", type=float, default=2e-5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip", type=int, default=3, help="steps left out of the rate (warm-up)")
    parser.add_argument("--documents", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--only", choices=("train", "encode", "dropout"), default=None,
                        help="one part; 'dropout' (never run by default) profiles the per-sample dropout masks")
    args = parser.parse_args()
    if args.child:
        args.task = args.child
        child(args)
        return

    import numpy as np

    if args.only == "dropout":
        row = launch("dropout", "contrastkit", args, [])
        print(f"| forward + backward, MiniLM, {args.batch_size} x {row['tokens']} tokens | CPU s |\n|---|---|")
        for kind in ("torch", "per-sample"):
            print(f"| {kind} dropout | {row[kind]:.3f} |")
        print(f"| cost of the per-sample masks | {row['per-sample'] / row['torch'] - 1:+.1%} |")
        return
    results: dict = {}
    for repeat in range(args.repeats):
        order = LIBRARIES if repeat % 2 == 0 else LIBRARIES[::-1]
        with tempfile.TemporaryDirectory() as tmp:
            for library in order:
                if args.only in (None, "train"):
                    results.setdefault(("train", library), []).append(launch("train", library, args, []))
                if args.only in (None, "encode"):
                    for kind in ("sentences", "documents"):
                        out = str(Path(tmp) / f"{library}-{kind}.npy")
                        row = launch("encode", library, args, ["--kind", kind, "--embeddings-out", out])
                        results.setdefault((kind, library), []).append(row)
            if args.only in (None, "encode"):
                for kind in ("sentences", "documents"):
                    ours, theirs = (np.load(Path(tmp) / f"{lib}-{kind}.npy") for lib in LIBRARIES)
                    difference = float(np.abs(ours - theirs).max())
                    results.setdefault((kind, "max_abs_difference"), []).append(difference)
        print(f"repeat {repeat + 1}/{args.repeats} done: {json.dumps({' '.join(k): v for k, v in results.items()})}",
              file=sys.stderr, flush=True)

    print(f"\nthreads {args.threads}, batch {args.batch_size}, max length {args.max_length}, {args.steps} steps, "
          f"lr {args.lr}, {args.repeats} repeats (median, min-max)\n")
    if args.only in (None, "train"):
        print("| training (MNRL, MRPC paraphrases) | steps/s | CPU s/step | peak RSS (MB) | STS-B dev Spearman |")
        print("|---|---|---|---|---|")
        for library in LIBRARIES:
            rows = results[("train", library)]
            print(f"| {library} | {summary([r['steps_per_s'] for r in rows], 3)} | "
                  f"{summary([r['cpu_s_per_step'] for r in rows], 3)} | "
                  f"{summary([r['peak_rss_mb'] for r in rows], 0)} | {summary([r['stsb_dev'] for r in rows])} |")
        pairs = list(zip(results[("train", LIBRARIES[0])], results[("train", LIBRARIES[1])]))
        speed = [a["steps_per_s"] / b["steps_per_s"] for a, b in pairs]
        cpu = [b["cpu_s_per_step"] / a["cpu_s_per_step"] for a, b in pairs]
        print(f"| speed-up of contrastkit (per repeat) | {summary(speed)} | {summary(cpu)} | | |\n")
    if args.only in (None, "encode"):
        print("| encoding | contrastkit texts/s | sentence-transformers texts/s | speed-up | speed-up in CPU time "
              "| largest abs. difference |")
        print("|---|---|---|---|---|---|")
        for kind in ("sentences", "documents"):
            ours, theirs = results[(kind, LIBRARIES[0])], results[(kind, LIBRARIES[1])]
            ratios = [a["texts_per_s"] / b["texts_per_s"] for a, b in zip(ours, theirs)]
            cpu = [a["texts_per_cpu_s"] / b["texts_per_cpu_s"] for a, b in zip(ours, theirs)]
            print(f"| {kind} ({ours[0]['texts']}) | {summary([r['texts_per_s'] for r in ours], 1)} | "
                  f"{summary([r['texts_per_s'] for r in theirs], 1)} | {summary(ratios)} | {summary(cpu)} | "
                  f"{max(results[(kind, 'max_abs_difference')]):.2e} |")


if __name__ == "__main__":
    main()
