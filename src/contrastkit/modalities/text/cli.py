"""``contrastkit text``: train a sentence encoder on unlabeled text, optionally evaluate it.

    contrastkit text --method simcse --backbone minilm --data sentences.txt.gz --out runs/simcse \\
        --batch-size 64 --lr 3e-5 --max-minutes 30 --max-length 64 --seed 0 \\
        --eval-sts ../shared/data/stsb/sts-dev.csv --eval-retrieval ../shared/data/scifact

``--backbone`` is ``minilm`` (all-MiniLM-L6-v2, bundled), a local Hugging Face model folder, or
``random-small`` (a 2-layer, 64-wide randomly initialised BERT with MiniLM's tokenizer: a
from-scratch baseline). ``--method mnrl`` trains on labelled rows instead of sentences: ``--data``
is a CSV, TSV or JSONL file of (anchor, positive[, negative_1 .. negative_k]) with named columns
(``--columns`` names them when the file's names are not the usual ones; see
:mod:`contrastkit.modalities.text.tables`), e.g. the output of
:func:`contrastkit.modalities.text.mining.mine_hard_negatives`.

``--matryoshka-dims 384,256,128,64`` (with optional ``--matryoshka-weights``) trains the method's
in-batch loss at each of those prefixes of the embedding (Matryoshka Representation Learning,
:mod:`contrastkit.modalities.text.matryoshka`), and the evaluations below are then made at each
dimension too (``--eval-dims`` chooses other dimensions, or evaluates a run without Matryoshka
training at several). ``--option KEY=VALUE`` sets a method option (values are JSON: numbers,
true/false, null; anything else is a string), e.g. ``--option queue_size=4096``.

With ``--eval-sts`` and/or ``--eval-retrieval`` the encoder is evaluated before training (the base
model) and after, with the encoder's own maximum length (not the training ``--max-length``); both
columns go to summary.json (``evaluation.before`` / ``evaluation.after``) and are printed.
Retrieval corpus embeddings are cached per checkpoint (``--cache-dir``), so evaluating the same
base model again costs only the queries. Retrieval is scored on ``--eval-split dev`` unless told
otherwise: the folder's ``qrels/dev.tsv``, or for SciFact (no dev qrels) a fixed third of the train
claims (:func:`contrastkit.modalities.text.sources.in_dev_carve`). ``--eval-split test`` scores the test
split, once the settings are chosen.

The run folder (``--out``) is the engine's (:mod:`contrastkit.modalities.text.train`): config.yaml (these
options), checkpoints/last.ckpt (every epoch and every ``--checkpoint-every-steps`` steps),
metrics.csv, summary.json, encoder/. ``contrastkit text --out RUN --resume`` continues a killed run
with the options in RUN/config.yaml (options given with it replace the saved ones, e.g.
``--devices``); a run bounded by ``--max-steps`` ends exactly as the uninterrupted run would, one
bounded by ``--max-minutes`` spends the rest of its time budget (where it then stops depends on the
machine's speed: not bit-exact). ``--devices 2 --strategy ddp`` trains in two processes with
``--batch-size`` sentences each; the in-batch negatives come from both.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import yaml

from contrastkit.core.errors import ConfigError

BACKBONE_HELP = "minilm (all-MiniLM-L6-v2, bundled), a local Hugging Face model folder, or random-small"

# The defaults of the options a run is made of (what config.yaml holds and --resume reads back).
DEFAULTS: dict[str, Any] = {
    "method": None, "backbone": "minilm", "data": None, "batch_size": 64, "lr": 3e-5, "max_steps": None,
    "max_minutes": None, "max_length": 64, "warmup_steps": None, "weight_decay": 0.01, "seed": 0,
    "context_window": 1, "grad_cache_chunk": None, "option": [], "log_every": 50, "device": None,
    "precision": "fp32", "eval_sts": None, "eval_retrieval": None, "eval_split": "dev", "eval_queries": None,
    "eval_documents": None, "cache_dir": None, "checkpoint_every_steps": None, "devices": 1, "strategy": "auto",
    "columns": None, "matryoshka_dims": None, "matryoshka_weights": None, "eval_dims": None,
    "general_guard": "auto",
}


# Lightning's spellings (what --precision means for images) are accepted too.
PRECISION_SPELLINGS = {"32": "fp32", "32-true": "fp32", "fp32": "fp32", "bf16": "bf16", "bf16-mixed": "bf16"}


def text_precision(value: str) -> str:
    return PRECISION_SPELLINGS.get(value, value)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options; unset ones are None here and take their value from :data:`DEFAULTS` (or, with
    ``--resume``, from the run's config.yaml) in :func:`resolve_options`."""
    def default(name: str) -> str:
        return f" (default: {DEFAULTS[name]})"

    parser.add_argument("--method", help="simcse, contriever, ict, debcse, whitenedcse, ccp, hybrid-distill, mnrl, dse, "
                        "bprop or defsent-plus "
                        "(required, except with --resume)")
    parser.add_argument("--backbone", help=BACKBONE_HELP + default("backbone"))
    parser.add_argument("--data", help="unlabeled text: .txt or .txt.gz, one sentence per line; or a JSONL "
                        "corpus (.jsonl[.gz] with title and text fields, or a BEIR folder), whose "
                        "documents bound the contexts; for mnrl, a .csv, .tsv or .jsonl file of (anchor, positive[, "
                        "negatives]) rows (required, except with --resume)")
    parser.add_argument("--columns", help="mnrl: the columns of --data, in the order anchor, positive, negatives... "
                        "(e.g. query,document,neg1) or as ROLE=NAME pairs (default: found by name)")
    parser.add_argument("--matryoshka-dims", help="train the loss at these nested dimensions, e.g. 384,256,128,64 "
                        "(simcse, contriever, ict, mnrl)")
    parser.add_argument("--matryoshka-weights", help="one weight per --matryoshka-dims dimension (default: 1 each)")
    parser.add_argument("--out", required=True, help="run folder (must not hold a run, except with --resume)")
    parser.add_argument("--resume", action="store_true",
                        help="continue the run in --out from its last checkpoint, with the options of its config.yaml")
    parser.add_argument("--batch-size", type=int, help="sentences per step and process" + default("batch_size"))
    parser.add_argument("--lr", type=float, help="peak AdamW rate" + default("lr"))
    parser.add_argument("--max-steps", type=int, help="optimiser steps (linear decay to 0 at the end)")
    parser.add_argument("--max-minutes", type=float,
                        help="training time budget (without --max-steps: constant rate after warm-up)")
    parser.add_argument("--max-length", type=int, help="tokens per text during training" + default("max_length"))
    parser.add_argument("--warmup-steps", type=int,
                        help="linear warm-up (default: 10%% of --max-steps, or 100 steps with a time budget)")
    parser.add_argument("--weight-decay", type=float, help="on weight matrices" + default("weight_decay"))
    parser.add_argument("--seed", type=int, help="data order, dropout, views" + default("seed"))
    parser.add_argument("--context-window", type=int,
                        help="neighbouring lines on each side given to methods that use context" + default("context_window"))
    parser.add_argument("--grad-cache-chunk", type=int,
                        help="GradCache: rows per forward pass (same gradients, less memory; one process)")
    parser.add_argument("--option", action="append", metavar="KEY=VALUE",
                        help="a method option (repeatable), e.g. queue_size=4096 or temperature=0.05")
    parser.add_argument("--log-every", type=int, help="steps per metrics.csv row" + default("log_every"))
    parser.add_argument("--checkpoint-every-steps", type=int,
                        help="also write checkpoints/last.ckpt every N steps (default: at the end of each epoch only)")
    parser.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--devices", type=int, help="processes (one per device)" + default("devices"))
    parser.add_argument("--strategy", help="Lightning's strategy, e.g. ddp for several processes" + default("strategy"))
    parser.add_argument("--precision", type=text_precision, choices=("fp32", "bf16"),
                        help="bf16: forward passes (training and evaluation) under bfloat16 autocast" + default("precision"))
    parser.add_argument("--eval-sts", help="an STS Benchmark file (e.g. stsb/sts-test.csv)")
    parser.add_argument("--eval-retrieval", help="a BEIR folder (e.g. scifact)")
    parser.add_argument("--eval-split",
                        help="qrels split of --eval-retrieval: dev (default; qrels/dev.tsv, or a fixed third of "
                             "the train queries), train, or test (only once settings are chosen on dev)")
    parser.add_argument("--eval-queries", type=int,
                        help="evaluate retrieval on this many random queries (with --eval-documents)")
    parser.add_argument("--eval-documents", type=int,
                        help="... and this many documents, relevant ones included (quick checks only)")
    parser.add_argument("--cache-dir", help="corpus-embedding cache (default: $CONTRASTKIT_CACHE)")
    parser.add_argument("--eval-dims", help="also evaluate the embeddings cut to these dimensions, e.g. 384,128 "
                        "(default: the --matryoshka-dims)")
    parser.add_argument("--general-guard", choices=("auto", "test", "dev", "off"),
                        help="score the general-quality guard (STS-B, MRPC, WordNet, code-docstring, COCO captions: "
                             "contrastkit.modalities.text.general_guard) before and after training and record the "
                             "loss on each set in summary.json; auto: its test splits for a method that adapts to "
                             "one corpus (hybrid-distill), off for the others" + default("general_guard"))


def resolve_options(args: argparse.Namespace) -> argparse.Namespace:
    """defaults < the run's config.yaml (with --resume) < the options given."""
    values = dict(DEFAULTS)
    if args.resume:
        saved = Path(args.out) / "config.yaml"
        if not saved.is_file():
            raise ConfigError(f"--resume needs --out pointing to a run folder with config.yaml; '{saved}' does not "
                              f"exist.")
        values.update({k: v for k, v in (yaml.safe_load(saved.read_text()) or {}).items() if k in DEFAULTS})
    values.update({k: v for k, v in vars(args).items() if k in DEFAULTS and v is not None})
    for required in ("method", "data"):
        if values[required] is None:
            raise ConfigError(f"--{required} is required (or --resume, to continue a run with its saved options).")
    if values["max_steps"] is None and values["max_minutes"] is None:
        raise ConfigError("Give the length of the run: --max-steps N, --max-minutes M, or both.")
    return argparse.Namespace(**values, out=args.out, resume=args.resume)


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
    from contrastkit.modalities.text.encoders import TextEncoder, small_random_encoder

    if name == "random-small":
        # Its own max_length is the training length: it has no pretrained length to keep.
        return small_random_encoder(max_length=max(max_length, 64), seed=seed)
    return TextEncoder.from_folder(name)


def build_eval_fn(args: argparse.Namespace):
    """``encoder -> {"sts_spearman": ..., "retrieval": {...}}`` for the requested evaluations; with
    evaluation dimensions also ``"by_dim": [{"dim": m, "sts_spearman": ..., "retrieval": {...}}, ...]``."""
    if not args.eval_sts and not args.eval_retrieval:
        return None
    if (args.eval_queries is None) != (args.eval_documents is None):
        raise ConfigError("--eval-queries and --eval-documents go together (a random subset of the retrieval "
                          "set); give both or neither.")
    from contrastkit.modalities.text.evaluation import (
        evaluate_retrieval,
        evaluate_retrieval_at_dims,
        sts_spearman,
        sts_spearman_at_dims,
        subsample_retrieval_set,
    )
    from contrastkit.modalities.text.matryoshka import parse_dims
    from contrastkit.modalities.text.sources import read_beir, read_sts

    pairs = read_sts(args.eval_sts) if args.eval_sts else None
    if args.eval_retrieval and args.eval_split == "test":
        print("scoring the test split: choose settings on dev first", file=sys.stderr)
    retrieval_set = read_beir(args.eval_retrieval, args.eval_split) if args.eval_retrieval else None
    if retrieval_set is not None and args.eval_queries is not None:
        retrieval_set = subsample_retrieval_set(retrieval_set, args.eval_queries, args.eval_documents, seed=0)

    dims = parse_dims(args.eval_dims, "--eval-dims") or parse_dims(args.matryoshka_dims)

    def rounded(metrics: dict) -> dict:
        return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in metrics.items()}

    def evaluate(encoder, document_encoder=None) -> dict:
        result: dict = {}
        if not dims:
            if pairs is not None:
                result["sts_spearman"] = round(sts_spearman(encoder, pairs), 4)
            if retrieval_set is not None:
                result["retrieval"] = rounded(evaluate_retrieval(encoder, retrieval_set, cache_dir=args.cache_dir,
                                                                 precision=args.precision,
                                                                 document_encoder=document_encoder))
            return result
        # One embedding pass scores the full dimension and every cut of it.
        full = encoder.output_dim
        every = [full, *(m for m in dims if m != full)]
        by_dim: dict[int, dict] = {m: {"dim": m} for m in dims}
        if pairs is not None:
            spearman = sts_spearman_at_dims(encoder, pairs, every)
            result["sts_spearman"] = round(spearman[full], 4)
            for m in dims:
                by_dim[m]["sts_spearman"] = round(spearman[m], 4)
        if retrieval_set is not None:
            metrics = evaluate_retrieval_at_dims(encoder, retrieval_set, every, cache_dir=args.cache_dir,
                                                 precision=args.precision, document_encoder=document_encoder)
            result["retrieval"] = rounded(metrics[full])
            for m in dims:
                by_dim[m]["retrieval"] = rounded(metrics[m])
        result["by_dim"] = list(by_dim.values())
        return result

    return evaluate


def run(args: argparse.Namespace) -> int:
    import torch

    from contrastkit.modalities.text.data import SentenceData
    from contrastkit.modalities.text.general_guard import guard_split_for, record_general_guard, with_general_guard
    from contrastkit.modalities.text.matryoshka import parse_dims, parse_numbers, use_matryoshka
    from contrastkit.modalities.text.methods import build_text_method
    from contrastkit.modalities.text.pair_data import PairData
    from contrastkit.modalities.text.tables import parse_columns
    from contrastkit.modalities.text.train import fit_text

    args = resolve_options(args)
    options = parse_options(args.option)
    if args.grad_cache_chunk is not None:
        options["grad_cache_chunk"] = args.grad_cache_chunk
    matryoshka_dims = parse_dims(args.matryoshka_dims)
    matryoshka_weights = parse_numbers(args.matryoshka_weights, "--matryoshka-weights", float)
    if matryoshka_weights is not None and matryoshka_dims is None:
        raise ConfigError("--matryoshka-weights weighs the --matryoshka-dims dimensions; give those too.")
    eval_fn = build_eval_fn(args)
    encoder = load_backbone(args.backbone, args.seed, args.max_length)
    method = build_text_method(args.method, encoder, **options)
    if matryoshka_dims is not None:
        use_matryoshka(method, matryoshka_dims, matryoshka_weights, method_name=args.method)
    guard_split = guard_split_for(args.general_guard, method)
    eval_fn = with_general_guard(eval_fn, guard_split, method)
    if getattr(method, "needs_pairs", False):
        data = PairData.from_file(args.data, parse_columns(args.columns))
    else:
        if args.columns is not None:
            raise ConfigError(f"--columns names the columns of (anchor, positive, negatives) rows, which the text "
                              f"method '{args.method}' does not train on (it reads sentences).")
        data = SentenceData.from_file(args.data, context_window=args.context_window)
    if hasattr(method, "use_training_data"):  # a method that indexes the whole data set first (defsent-plus)
        method.use_training_data(data)
    warmup = args.warmup_steps
    if warmup is None:
        warmup = max(1, args.max_steps // 10) if args.max_steps is not None else 100
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    summary = fit_text(
        method, data, batch_size=args.batch_size, lr=args.lr, max_steps=args.max_steps,
        max_minutes=args.max_minutes, warmup_steps=warmup, weight_decay=args.weight_decay, seed=args.seed,
        out_dir=args.out, log_every=args.log_every, eval_fn=eval_fn, max_length=args.max_length, device=device,
        extra_summary={"method": args.method, "backbone": args.backbone, "options": options,
                       **({"matryoshka": {"dims": list(method.objective.objective.dims),
                                          "weights": list(method.objective.objective.weights)}}
                          if matryoshka_dims is not None else {})},
        precision=args.precision, resume=args.resume, checkpoint_every_steps=args.checkpoint_every_steps,
        devices=args.devices, strategy=args.strategy,
        config={name: getattr(args, name) for name in DEFAULTS},
    )
    if summary and guard_split is not None:
        summary = record_general_guard(summary)
    if summary:  # the first process; the others return nothing
        print(format_summary(summary))
    return 0


command = run  # the contract of a modality's cli module (contrastkit.modalities.Modality)


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
        for row_before, row_after in zip(before.get("by_dim", []), after.get("by_dim", [])):
            at = f" @{row_before['dim']}"
            if "sts_spearman" in row_before:
                lines.append(f"{'STS Spearman' + at:<22}{row_before['sts_spearman']:>10.2f}"
                             f"{row_after['sts_spearman']:>10.2f}")
            if "retrieval" in row_before:
                lines.append(f"{'ndcg@10 x100' + at:<22}{100 * row_before['retrieval']['ndcg@10']:>10.2f}"
                             f"{100 * row_after['retrieval']['ndcg@10']:>10.2f}")
    guard = summary.get("general_guard")
    if guard:  # the general-quality guard (contrastkit.modalities.text.general_guard)
        lines.append(f"general guard ({guard['split']} splits){'':<2}{'base':>10}{'trained':>10}{'loss':>8}")
        for name, before in guard["before"]["sets"].items():
            if name in guard["after"]["sets"]:
                lines.append(f"{name + ' ' + before['metric']:<30}{before['score']:>10.2f}"
                             f"{guard['after']['sets'][name]['score']:>10.2f}{guard['loss'][name]:>8.2f}")
        lines.append(f"{'mean loss':<50}{guard['loss']['mean']:>8.2f}")
    return "\n".join(lines)
