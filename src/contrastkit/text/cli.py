"""``contrastkit text``: train a sentence encoder on unlabeled text, optionally evaluate it.

    contrastkit text --method simcse --backbone minilm --data sentences.txt.gz --out runs/simcse \\
        --batch-size 64 --lr 3e-5 --max-minutes 30 --max-length 64 --seed 0 \\
        --eval-sts ../shared/data/stsb/sts-dev.csv --eval-retrieval ../shared/data/scifact

``--backbone`` is ``minilm`` (all-MiniLM-L6-v2, bundled), a local Hugging Face model folder, or
``random-small`` (a 2-layer, 64-wide randomly initialised BERT with MiniLM's tokenizer: a
from-scratch baseline). ``--option KEY=VALUE`` sets a method option (values are JSON: numbers,
true/false, null; anything else is a string), e.g. ``--option queue_size=4096``.

With ``--eval-sts`` and/or ``--eval-retrieval`` the encoder is evaluated before training (the base
model) and after, with the encoder's own maximum length (not the training ``--max-length``); both
columns go to summary.json (``evaluation.before`` / ``evaluation.after``) and are printed.
Retrieval corpus embeddings are cached per checkpoint (``--cache-dir``), so evaluating the same
base model again costs only the queries. Retrieval is scored on ``--eval-split dev`` unless told
otherwise: the folder's ``qrels/dev.tsv``, or for SciFact (no dev qrels) a fixed third of the train
claims (:func:`contrastkit.text.sources.in_dev_carve`). ``--eval-split test`` scores the test
split, once the settings are chosen.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from contrastkit.errors import ConfigError

BACKBONE_HELP = "minilm (all-MiniLM-L6-v2, bundled), a local Hugging Face model folder, or random-small"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--method", required=True,
                        help="simcse, contriever, ict, debcse, whitenedcse, ccp or hybrid-distill")
    parser.add_argument("--backbone", default="minilm", help=BACKBONE_HELP)
    parser.add_argument("--data", required=True, help="unlabeled text: .txt or .txt.gz, one sentence per line; or a JSONL "
                        "corpus (.jsonl[.gz] with title and text fields, or a BEIR folder), whose "
                        "documents bound the contexts")
    parser.add_argument("--out", required=True, help="run folder (must not exist or be empty)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=3e-5)
    parser.add_argument("--max-steps", type=int, help="optimiser steps (linear decay to 0 at the end)")
    parser.add_argument("--max-minutes", type=float,
                        help="training time budget (without --max-steps: constant rate after warm-up)")
    parser.add_argument("--max-length", type=int, default=64, help="tokens per text during training")
    parser.add_argument("--warmup-steps", type=int,
                        help="linear warm-up (default: 10%% of --max-steps, or 100 steps with a time budget)")
    parser.add_argument("--weight-decay", type=float, default=0.01)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--context-window", type=int, default=1,
                        help="neighbouring lines on each side given to methods that use context")
    parser.add_argument("--grad-cache-chunk", type=int,
                        help="GradCache: rows per forward pass (same gradients, less memory)")
    parser.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                        help="a method option (repeatable), e.g. queue_size=4096 or temperature=0.05")
    parser.add_argument("--log-every", type=int, default=50)
    parser.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32",
                        help="bf16: forward passes (training and evaluation) under bfloat16 autocast")
    parser.add_argument("--eval-sts", help="an STS Benchmark file (e.g. stsb/sts-test.csv)")
    parser.add_argument("--eval-retrieval", help="a BEIR folder (e.g. scifact)")
    parser.add_argument("--eval-split", default="dev",
                        help="qrels split of --eval-retrieval: dev (default; qrels/dev.tsv, or a fixed third of "
                             "the train queries), train, or test (only once settings are chosen on dev)")
    parser.add_argument("--eval-queries", type=int,
                        help="evaluate retrieval on this many random queries (with --eval-documents)")
    parser.add_argument("--eval-documents", type=int,
                        help="... and this many documents, relevant ones included (quick checks only)")
    parser.add_argument("--cache-dir", help="corpus-embedding cache (default: $CONTRASTKIT_CACHE)")


def parse_options(pairs: list[str]) -> dict[str, Any]:
    """``["queue_size=4096", "augmentation=mask"]`` -> ``{"queue_size": 4096, "augmentation": "mask"}``."""
    options: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--option takes KEY=VALUE (e.g. --option queue_size=4096), got '{pair}'.")
        try:
            options[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            options[key.strip()] = value
    return options


def load_backbone(name: str, seed: int, max_length: int):
    from contrastkit.text.encoders import TextEncoder, small_random_encoder

    if name == "random-small":
        # Its own max_length is the training length: it has no pretrained length to keep.
        return small_random_encoder(max_length=max(max_length, 64), seed=seed)
    return TextEncoder.from_folder(name)


def build_eval_fn(args: argparse.Namespace):
    """``encoder -> {"sts_spearman": ..., "retrieval": {...}}`` for the requested evaluations."""
    if not args.eval_sts and not args.eval_retrieval:
        return None
    if (args.eval_queries is None) != (args.eval_documents is None):
        raise ConfigError("--eval-queries and --eval-documents go together (a random subset of the retrieval "
                          "set); give both or neither.")
    from contrastkit.text.evaluation import (
        evaluate_retrieval,
        sts_spearman,
        subsample_retrieval_set,
    )
    from contrastkit.text.sources import read_beir, read_sts

    pairs = read_sts(args.eval_sts) if args.eval_sts else None
    if args.eval_retrieval and args.eval_split == "test":
        print("scoring the test split: choose settings on dev first", file=sys.stderr)
    retrieval_set = read_beir(args.eval_retrieval, args.eval_split) if args.eval_retrieval else None
    if retrieval_set is not None and args.eval_queries is not None:
        retrieval_set = subsample_retrieval_set(retrieval_set, args.eval_queries, args.eval_documents, seed=0)

    def evaluate(encoder, document_encoder=None) -> dict:
        result: dict = {}
        if pairs is not None:
            result["sts_spearman"] = round(sts_spearman(encoder, pairs), 4)
        if retrieval_set is not None:
            metrics = evaluate_retrieval(encoder, retrieval_set, cache_dir=args.cache_dir, precision=args.precision,
                                         document_encoder=document_encoder)
            result["retrieval"] = {k: (round(v, 6) if isinstance(v, float) else v) for k, v in metrics.items()}
        return result

    return evaluate


def run(args: argparse.Namespace) -> int:
    import torch

    from contrastkit.text.data import SentenceData
    from contrastkit.text.methods import build_text_method
    from contrastkit.text.train import fit_text

    if args.max_steps is None and args.max_minutes is None:
        raise ConfigError("Give the length of the run: --max-steps N, --max-minutes M, or both.")
    options = parse_options(args.option)
    if args.grad_cache_chunk is not None:
        options["grad_cache_chunk"] = args.grad_cache_chunk
    eval_fn = build_eval_fn(args)
    data = SentenceData.from_file(args.data, context_window=args.context_window)
    encoder = load_backbone(args.backbone, args.seed, args.max_length)
    method = build_text_method(args.method, encoder, **options)
    warmup = args.warmup_steps
    if warmup is None:
        warmup = max(1, args.max_steps // 10) if args.max_steps is not None else 100
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    summary = fit_text(
        method, data, batch_size=args.batch_size, lr=args.lr, max_steps=args.max_steps,
        max_minutes=args.max_minutes, warmup_steps=warmup, weight_decay=args.weight_decay, seed=args.seed,
        out_dir=args.out, log_every=args.log_every, eval_fn=eval_fn, max_length=args.max_length, device=device,
        extra_summary={"method": args.method, "backbone": args.backbone, "options": options},
        precision=args.precision,
    )
    print(format_summary(summary))
    return 0


def format_summary(summary: dict) -> str:
    headline = (f"{summary['method']}: {summary['steps']} steps ({summary['epochs']} epochs) in "
                f"{summary['train_seconds']} s, {summary['steps_per_second']} steps/s; stopped by "
                f"{summary['stopped_by']}; encoder saved to {summary['encoder_dir']}")
    lines = [headline]
    if "documents_embedded_by" in summary:
        lines.append(f"two-tower model: queries with {summary['encoder_dir']}, documents with "
                     f"{summary['document_encoder_dir']} (contrastkit evaluate --task retrieval --model "
                     f"{summary['encoder_dir']} --document-model {summary['document_encoder_dir']} ...)")
    evaluation = summary.get("evaluation")
    if evaluation:
        before, after = evaluation["before"], evaluation["after"]
        lines.append(f"{'metric':<22}{'base':>10}{'trained':>10}")
        if "sts_spearman" in before:
            lines.append(f"{'STS Spearman x100':<22}{before['sts_spearman']:>10.2f}{after['sts_spearman']:>10.2f}")
        for key, value in before.get("retrieval", {}).items():
            if isinstance(value, float):
                lines.append(f"{key + ' x100':<22}{100 * value:>10.2f}{100 * after['retrieval'][key]:>10.2f}")
    return "\n".join(lines)
