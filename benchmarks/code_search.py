"""Code search on the CPython docstring/code pairs: zero-shot all-MiniLM-L6-v2 against fine-tuned
two-tower variants, each fine-tuned row with the same budget.

Rows (cumulative):
    zero-shot       all-MiniLM-L6-v2 as is, both towers (shared weights), no training
    clip            fine-tuned two-tower, CLIP loss with in-batch negatives
    + soda/queue    + momentum encoders, key queues and soft augmentation of code tokens (CoCoSoDa)
    + in-modality   + InfoNCE within each modality (query vs augmented query key, code vs augmented code key)
    + harmonized    + gradient harmonization between the three losses (realignment + curriculum)

Training: the train split (4416 pairs); hyper-parameters are chosen on --eval-split valid (436
pairs) and the test split (354 pairs) is scored once with them. Metrics: MRR and Recall@1/5/10 in
both directions (docstring -> code and code -> docstring), exact faiss search.

    OMP_NUM_THREADS=2 python benchmarks/code_search.py --eval-split test --steps 40 --select-lr 2e-5,1e-4 \
        --out runs/code_search.json      # lr chosen on valid, then every row on test
    OMP_NUM_THREADS=2 python benchmarks/code_search.py --time-steps 4     # seconds per step of each row
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from contrastkit.modalities.pairs.harmonization import GradientHarmonizer
from contrastkit.modalities.pairs.pairs import read_code_docstring
from contrastkit.modalities.pairs.text_towers import text_two_tower
from contrastkit.modalities.pairs.train import TrainOptions, evaluate_pairs, train_two_tower
from contrastkit.modalities.pairs.two_tower import TwoTowerOptions

ROWS = ("zero-shot", "clip", "soda-queue", "in-modality", "harmonized")
LABELS = {
    "zero-shot": "all-MiniLM-L6-v2 zero-shot (both towers)",
    "clip": "fine-tuned two-tower, clip",
    "soda-queue": "+ soft augmentation and queue (CoCoSoDa-style)",
    "in-modality": "+ in-modality losses",
    "harmonized": "+ gradient harmonization",
}


def row_setup(row: str, args: argparse.Namespace
              ) -> tuple[TwoTowerOptions, tuple[float, float], GradientHarmonizer | None]:
    """(method options, soft-augmentation rates (docstring, code), harmonizer); rows are cumulative."""
    rank = ROWS.index(row)
    options = TwoTowerOptions(temperature=args.temperature)
    augment_rates, harmonizer = (0.0, 0.0), None
    if rank >= ROWS.index("soda-queue"):
        options.momentum, options.queue_size = args.momentum, args.queue_size
        augment_rates = (args.augment_rate_doc, args.augment_rate_code)
    if rank >= ROWS.index("in-modality"):
        options.in_modality_weights = (args.in_modality_weight, args.in_modality_weight)
    if rank >= ROWS.index("harmonized"):
        harmonizer = GradientHarmonizer(realign=True, curriculum_share=args.curriculum_share)
    return options, augment_rates, harmonizer


def run_row(row: str, args: argparse.Namespace, train, evaluation) -> dict:
    options, (rate_doc, rate_code), harmonizer = row_setup(row, args)
    model, input_doc, input_code = text_two_tower(
        options, "minilm", shared=True, max_length_a=args.max_length_doc, max_length_b=args.max_length_code,
        augment_rate_a=rate_doc, augment_rate_b=rate_code)
    steps = 0 if row == "zero-shot" else (args.time_steps or args.steps)
    training = TrainOptions(max_steps=steps, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                            head_lr=args.head_lr, seed=args.seed)
    started = time.perf_counter()
    trained = train_two_tower(model, train, input_doc, input_code, training, harmonizer)
    train_seconds = time.perf_counter() - started
    done = trained.trainer.global_step if trained is not None else 0
    result = {"row": row, "label": LABELS[row], "steps": done, "train_seconds": round(train_seconds, 1),
              "seconds_per_step": round(train_seconds / max(1, done), 3),
              "final_temperature": float(1.0 / model.cross.objective.logit_scale.detach().exp())
              if hasattr(model.cross.objective, "logit_scale") else None}
    if not args.time_steps:
        started = time.perf_counter()
        result["retrieval"] = evaluate_pairs(model, evaluation, input_doc, input_code)
        result["eval_seconds"] = round(time.perf_counter() - started, 1)
    return result


def select_learning_rate(args: argparse.Namespace, train) -> list[dict]:
    """Fine-tune the ``clip`` row at every rate of ``--select-lr`` and score it on the valid split;
    ``args.lr`` becomes the rate with the best docstring -> code MRR (the test split is not read)."""
    valid = read_code_docstring("valid")
    candidates = []
    for lr in (float(v) for v in args.select_lr.split(",")):
        result = run_row("clip", argparse.Namespace(**{**vars(args), "lr": lr}), train, valid)
        candidates.append({"lr": lr, "valid": result["retrieval"], "train_seconds": result["train_seconds"]})
        print(json.dumps(candidates[-1]), flush=True)
    best = max(candidates, key=lambda c: c["valid"]["first_to_second"]["mrr"])
    args.lr = best["lr"]
    print(f"chosen on valid: lr = {args.lr}", flush=True)
    return candidates


def markdown_table(results: list[dict], split: str) -> str:
    lines = [f"| row ({split}) | doc->code MRR | R@1 | R@5 | R@10 | code->doc MRR | R@1 | R@5 | R@10 | train s |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        cells = []
        for direction in ("first_to_second", "second_to_first"):
            m = r["retrieval"][direction]
            cells += [f"{m['mrr']:.3f}", f"{m['recall@1']:.3f}", f"{m['recall@5']:.3f}", f"{m['recall@10']:.3f}"]
        lines.append(f"| {r['label']} | " + " | ".join(cells) + f" | {r['train_seconds']:.0f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--eval-split", choices=("valid", "test"), default="valid")
    parser.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated subset of {', '.join(ROWS)}")
    parser.add_argument("--steps", type=int, help="steps per fine-tuned row (default: --epochs)")
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=2e-5)
    parser.add_argument("--head-lr", type=float, default=1e-3)
    parser.add_argument("--temperature", type=float, default=0.05)
    parser.add_argument("--max-length-doc", type=int, default=64)
    parser.add_argument("--max-length-code", type=int, default=128)
    parser.add_argument("--momentum", type=float, default=0.9,
                        help="EMA rate; 0.9 averages ~10 steps, short enough for a run of tens of steps")
    parser.add_argument("--queue-size", type=int, default=256, help="keys per side: the last 8 batches of 32")
    parser.add_argument("--augment-rate-code", type=float, default=0.15, help="soft augmentation of code tokens")
    parser.add_argument("--augment-rate-doc", type=float, default=0.1, help="soft augmentation of docstring tokens")
    parser.add_argument("--in-modality-weight", type=float, default=0.5)
    parser.add_argument("--curriculum-share", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--select-lr", help="comma-separated encoder rates: pick --lr by the clip row's valid "
                                            "docstring -> code MRR before running the rows")
    parser.add_argument("--time-steps", type=int, default=0, help="only time this many steps per fine-tuned row")
    parser.add_argument("--out", help="JSON file for the results")
    args = parser.parse_args(argv)
    rows = [r.strip() for r in args.rows.split(",") if r.strip()]
    unknown = [r for r in rows if r not in ROWS]
    if unknown:
        parser.error(f"unknown rows {unknown}; valid rows: {', '.join(ROWS)}")
    if args.time_steps:
        rows = [r for r in rows if r != "zero-shot"]

    print(f"torch threads: {torch.get_num_threads()}", flush=True)
    train = read_code_docstring("train")
    selection = select_learning_rate(args, train) if args.select_lr else None
    evaluation = read_code_docstring(args.eval_split)
    results = []
    for row in rows:
        result = run_row(row, args, train, evaluation)
        results.append(result)
        print(json.dumps(result), flush=True)
        if args.out:  # written after every row, so a stopped run keeps what it finished
            Path(args.out).write_text(json.dumps({"args": vars(args), "lr_selection": selection,
                                                  "results": results}, indent=2))
    if not args.time_steps:
        print(markdown_table(results, args.eval_split))
    return 0


if __name__ == "__main__":
    sys.exit(main())
