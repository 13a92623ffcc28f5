"""``contrastkit pairs``: train a two-tower (``clip``) model on paired texts and evaluate retrieval
both ways.

    contrastkit pairs --data code-docstring --out runs/code-search            # docstring <-> code
    contrastkit pairs --data code-docstring --max-steps 0 --out runs/zero-shot  # all-MiniLM-L6-v2 as is
    contrastkit pairs --out runs/code-search --resume                        # continue a killed run
    contrastkit pairs --data code-docstring --devices 2 --strategy ddp --batch-size 16 --out runs/ddp
    contrastkit pairs --data pairs.jsonl --first-field caption --second-field text \\
        --train-split train --eval-split valid --out runs/mine
    contrastkit pairs --data queries.csv --second-data docs.csv --id-field id \\
        --first-field query --second-field text --eval-data held_out.jsonl --out runs/aligned

``--data code-docstring`` reads ``code-docstring/pairs.jsonl.gz`` under the data root (first side:
the docstring's first paragraph, second side: the function's code), trains on its train split and
evaluates on ``--eval-split`` (``valid`` by default: choose hyper-parameters there, then score
``--eval-split test`` once). A file of pairs is scored only on a split or file named by
``--eval-split`` or ``--eval-data``.

Training runs on the engine (:mod:`contrastkit.engine`); the run directory (``--out``) is laid out
in :mod:`contrastkit.modalities.pairs.run_folder` (config.yaml, checkpoints/last.ckpt, metrics.csv,
summary.json, report.md, the trained towers). An existing run is never overwritten; ``--resume``
continues it with the options of its config.yaml.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from contrastkit.core.errors import ConfigError

CODE_DOCSTRING = "code-docstring"
CODE_DOCSTRING_EVAL_SPLIT = "valid"  # the test split is scored only when named


def add_arguments(parser: argparse.ArgumentParser) -> None:
    data = parser.add_argument_group("pairs")
    data.add_argument("--data", help="'code-docstring', or a JSONL/CSV/TSV file of pairs (or of the first "
                                      "side, with --second-data); required unless --resume")
    data.add_argument("--second-data", help="a file with the second side, joined to --data on --id-field")
    data.add_argument("--eval-data", help="a file of evaluation pairs (default: --data's --eval-split)")
    data.add_argument("--first-field", help="field of the first side (code-docstring: docstring_summary)")
    data.add_argument("--second-field", help="field of the second side (code-docstring: code)")
    data.add_argument("--id-field", help="field of unique ids (required with --second-data)")
    data.add_argument("--split-field", default="split", help="field naming each record's split (default split)")
    data.add_argument("--train-split", help="split to train on (code-docstring: train; default: every record)")
    data.add_argument("--eval-split", help="split to evaluate on (code-docstring: valid by default; "
                                           "test only once settings are chosen on valid)")
    data.add_argument("--out", required=True, help="run directory (never overwritten; see --resume)")
    data.add_argument("--resume", action="store_true",
                      help="continue the run in --out from its last checkpoint, with its saved options")

    towers = parser.add_argument_group("towers")
    towers.add_argument("--backbone", default="minilm", help="text model of the first tower (and the second "
                                                             "when shared): 'minilm' or a local model folder")
    towers.add_argument("--second-backbone", help="text model of the second tower (implies --separate-towers)")
    towers.add_argument("--separate-towers", action="store_true", help="two encoders instead of shared weights")
    towers.add_argument("--max-length-first", type=int, default=64, help="tokens per first-side text (default 64)")
    towers.add_argument("--max-length-second", type=int, default=128, help="tokens per second-side text (default 128)")
    towers.add_argument("--head", choices=("linear", "mlp", "none"), default="linear")
    towers.add_argument("--embedding-dim", type=int, help="joint space size (default: the towers' size)")

    method = parser.add_argument_group("method")
    method.add_argument("--objective", "--method", dest="objective", choices=("clip", "siglip", "hcl"), default="clip",
                        help="the cross-modal objective: clip (default), siglip or hcl (also spelled --method)")
    method.add_argument("--temperature", type=float, default=0.05,
                        help="initial CLIP temperature (learned) or HCL temperature (default 0.05)")
    method.add_argument("--fixed-temperature", action="store_true", help="do not learn CLIP's temperature")
    method.add_argument("--concentration", type=float,
                        help="HCL's hard-negative concentration beta (default 1; needs --objective hcl)")
    method.add_argument("--momentum", type=float, help="EMA rate of momentum encoders (e.g. 0.99; off when unset)")
    method.add_argument("--queue-size", type=int, default=0, help="momentum keys kept per side (needs --momentum)")
    method.add_argument("--augment-rate-first", type=float, default=0.0,
                        help="soft-augmentation rate of the first side's second view (the momentum keys' and "
                             "the in-modality loss's input: needs --momentum or --in-modality-weight-first)")
    method.add_argument("--augment-rate-second", type=float, default=0.0,
                        help="the same for the second side (CoCoSoDa: about 0.1-0.2 of code tokens)")
    method.add_argument("--in-modality-weight-first", type=float, default=0.0)
    method.add_argument("--in-modality-weight-second", type=float, default=0.0)
    method.add_argument("--in-modality-temperature", type=float, default=0.05)
    method.add_argument("--harmonize", action="store_true", help="gradient harmonization between the losses")
    method.add_argument("--curriculum-share", type=float, default=0.0,
                        help="with --harmonize: initial share of the batch down-weighted for conflict")
    method.add_argument("--curriculum-floor", type=float, default=0.0, help="weight of those samples")

    training = parser.add_argument_group("training")
    training.add_argument("--max-steps", "--steps", dest="max_steps", type=int,
                          help="optimiser steps (default: --epochs over the pairs; 0: zero-shot)")
    training.add_argument("--max-epochs", "--epochs", dest="epochs", type=float, default=1.0,
                          help="passes over the pairs (fractions allowed)")
    training.add_argument("--batch-size", type=int, default=32)
    training.add_argument("--grad-cache-chunk", type=int,
                          help="GradCache: rows per encoder pass (same gradients, less memory; one process)")
    training.add_argument("--lr", type=float, default=2e-5, help="encoder learning rate (AdamW)")
    training.add_argument("--head-lr", type=float, default=1e-3, help="heads' and temperature's learning rate")
    training.add_argument("--warmup-fraction", type=float, default=0.1)
    training.add_argument("--seed", type=int, default=0)
    training.add_argument("--checkpoint-every-steps", type=int,
                          help="also write checkpoints/last.ckpt every N steps (besides every epoch and the end)")
    training.add_argument("--accelerator", default="cpu", help="cpu, gpu, auto, ... (Lightning's; default cpu)")
    training.add_argument("--devices", type=int, default=1, help="processes (devices) training together")
    training.add_argument("--strategy", default="auto", help="Lightning's strategy: ddp with --devices > 1")


def two_tower_options(args: argparse.Namespace):
    from contrastkit.modalities.pairs.two_tower import TwoTowerOptions

    return TwoTowerOptions(
        embedding_dim=args.embedding_dim, head=args.head, objective=args.objective,
        temperature=args.temperature, learn_temperature=not args.fixed_temperature,
        concentration=1.0 if args.concentration is None else args.concentration,
        momentum=args.momentum, queue_size=args.queue_size,
        in_modality_weights=(args.in_modality_weight_first, args.in_modality_weight_second),
        in_modality_temperature=args.in_modality_temperature,
        grad_cache_chunk=getattr(args, "grad_cache_chunk", None))  # absent from runs saved before the option


def train_options(args: argparse.Namespace):
    from contrastkit.modalities.pairs.train import TrainOptions

    return TrainOptions(max_steps=args.max_steps, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                        head_lr=args.head_lr, warmup_fraction=args.warmup_fraction, seed=args.seed,
                        accelerator=args.accelerator, devices=args.devices, strategy=args.strategy,
                        checkpoint_every_steps=args.checkpoint_every_steps)


def harmonizer(args: argparse.Namespace):
    from contrastkit.modalities.pairs.harmonization import GradientHarmonizer

    if not args.harmonize:
        if args.curriculum_share:
            raise ConfigError("--curriculum-share belongs to gradient harmonization; add --harmonize.")
        return None
    if args.in_modality_weight_first == 0 and args.in_modality_weight_second == 0:
        raise ConfigError("--harmonize reconciles several losses, but only the cross-modal one is on; add "
                          "--in-modality-weight-first/--in-modality-weight-second.")
    return GradientHarmonizer(realign=True, curriculum_share=args.curriculum_share,
                              curriculum_floor=args.curriculum_floor)


def code_docstring_eval_split(args: argparse.Namespace) -> str:
    """The code-docstring split that ``args`` scores: ``--eval-split``, or valid when not given."""
    return args.eval_split or CODE_DOCSTRING_EVAL_SPLIT


def read_train_and_eval(args: argparse.Namespace):
    """(training pairs, evaluation pairs or None) from the data options."""
    from contrastkit.modalities.pairs.pairs import (
        read_aligned_pairs,
        read_code_docstring,
        read_pairs,
    )

    if args.data == CODE_DOCSTRING:
        query_field = args.first_field or "docstring_summary"
        train = read_code_docstring(args.train_split or "train", query_field=query_field)
        evaluation = read_code_docstring(code_docstring_eval_split(args), query_field=query_field)
        return train, evaluation
    if not args.first_field or not args.second_field:
        raise ConfigError("Pairs from a file need --first-field and --second-field (the two fields to pair).")
    if args.second_data:
        if not args.id_field:
            raise ConfigError("--second-data is joined to --data on ids: name the id field with --id-field.")
        train = read_aligned_pairs(args.data, args.second_data, args.first_field, args.second_field,
                                   id_field=args.id_field)
    else:
        train = read_pairs(args.data, args.first_field, args.second_field, id_field=args.id_field,
                           split=args.train_split, split_field=args.split_field)
    evaluation = None
    if args.eval_data:
        evaluation = read_pairs(args.eval_data, args.first_field, args.second_field, id_field=args.id_field,
                                split=args.eval_split, split_field=args.split_field)
    elif args.eval_split:
        evaluation = read_pairs(args.data, args.first_field, args.second_field, id_field=args.id_field,
                                split=args.eval_split, split_field=args.split_field)
    return train, evaluation


NOT_SAVED = ("command", "resume", "out", "given_options")  # what config.yaml leaves out: it describes the run, not the call


def saved_options(args: argparse.Namespace) -> dict:
    """The options config.yaml holds."""
    return {name: value for name, value in vars(args).items() if name not in NOT_SAVED}


def restore_saved_options(args: argparse.Namespace) -> None:
    """With --resume: take every option from the run's config.yaml; an option given on the command
    line with another value than the saved one is refused (the run continues as it started)."""
    import yaml

    path = Path(args.out) / "config.yaml"
    if not path.is_file():
        raise ConfigError(f"--resume: no config.yaml in '{args.out}'; pass the --out of a pairs run to continue it.")
    defaults = argparse.ArgumentParser()
    add_arguments(defaults)
    for name, saved in yaml.safe_load(path.read_text()).items():
        given = getattr(args, name, None)
        if given != defaults.get_default(name) and given != saved:
            option = "--" + name.replace("_", "-")
            raise ConfigError(f"--resume continues the run with the options in '{path}', where {option} is {saved!r}; "
                              f"drop {option} {given!r}, or start a new run with another --out.")
        setattr(args, name, saved)


def check_option_use(args: argparse.Namespace) -> None:
    """Options that would have no effect with the others given are errors (issue 19)."""
    for side in ("first", "second"):
        rate, weight = getattr(args, f"augment_rate_{side}"), getattr(args, f"in_modality_weight_{side}")
        if rate and args.momentum is None and not weight:
            raise ConfigError(
                f"--augment-rate-{side} {rate} augments the {side} side's second view, which only the momentum keys "
                f"(--momentum) and the in-modality loss (--in-modality-weight-{side}) use; add one of them or drop "
                f"--augment-rate-{side}.")
    if getattr(args, "grad_cache_chunk", None) is not None:
        from contrastkit.nn.gradcache import check_one_process

        check_one_process(args.grad_cache_chunk, args.devices)
    if args.concentration is not None and args.objective != "hcl":
        raise ConfigError(f"--concentration is HCL's hard-negative concentration; it needs --objective hcl "
                          f"(got --objective {args.objective}).")


def command(args: argparse.Namespace) -> int:
    return run(args)


def run(args: argparse.Namespace) -> int:
    import torch
    import yaml

    from contrastkit.cli import quiet_lightning
    from contrastkit.engine.run_folder import open_run_dir, resolve_run_dir, write_summary
    from contrastkit.modalities.pairs.run_folder import save_towers, write_report
    from contrastkit.modalities.pairs.text_towers import text_two_tower
    from contrastkit.modalities.pairs.train import evaluate_pairs, options_record, train_two_tower

    if args.resume:
        restore_saved_options(args)
    elif args.data is None:
        raise ConfigError("--data is required: 'code-docstring' or a file of pairs (or --resume to continue "
                          "the run in --out).")
    check_option_use(args)
    method_options, training_options, harmonize = two_tower_options(args), train_options(args), harmonizer(args)
    method_options.check()
    run_dir = resolve_run_dir(args.out, args.resume, "pairs")
    train, evaluation = read_train_and_eval(args)
    eval_split = code_docstring_eval_split(args) if args.data == CODE_DOCSTRING else args.eval_split
    if evaluation is not None and eval_split == "test":
        print("scoring the test split: choose settings on valid first", file=sys.stderr)
    training_options.check(len(train))
    shared = not (args.separate_towers or args.second_backbone)
    torch.manual_seed(args.seed)  # the heads' initialisation (identity where the sizes agree)
    model, input_a, input_b = text_two_tower(
        method_options, args.backbone, args.second_backbone, shared, args.max_length_first,
        args.max_length_second, args.augment_rate_first, args.augment_rate_second)
    # Written only now that the data has loaded and the model is built: a run that fails on bad
    # input leaves no directory behind that would block the corrected command.
    options = saved_options(args)
    open_run_dir(run_dir, yaml.safe_dump(options, sort_keys=False))
    quiet_lightning()
    result = train_two_tower(model, train, input_a, input_b, training_options, harmonize, out=run_dir,
                             resume=args.resume, description={"command": "pairs", "options": options})
    if result is not None and not result.is_global_zero:
        return 0  # a DDP child process: rank 0 evaluates and writes the run's files
    metrics = evaluate_pairs(model, evaluation, input_a, input_b) if evaluation is not None else None

    save_towers(model, run_dir)
    summary = {"data": args.data, "out": str(run_dir), "train_pairs": len(train),
               "eval_pairs": len(evaluation) if evaluation else 0,
               "eval_split": eval_split if evaluation is not None else None,
               "sides": [train.first_name, train.second_name], "shared_towers": model.shared_encoder,
               "steps": result.trainer.global_step if result else 0,
               "world_size": result.trainer.world_size if result else 1,
               "train_seconds": round(result.throughput.seconds, 2) if result else 0.0,
               "pairs_per_second": round(result.throughput.samples_per_second, 2) if result else 0.0,
               "skipped_steps": result.module.skipped_steps if result else 0,
               "options": {**options_record(method_options, training_options),
                           "harmonize": args.harmonize, "curriculum_share": args.curriculum_share},
               "retrieval": metrics}
    write_summary(run_dir, summary)
    write_report(run_dir, summary)
    print(format_metrics(metrics, train.first_name, train.second_name) if metrics else
          "No evaluation pairs (--eval-split or --eval-data); nothing was scored.")
    print(f"\nRun directory: {run_dir} (report.md, summary.json, tower_a/, checkpoints/)")
    return 0


def format_metrics(metrics: dict, first: str, second: str) -> str:
    names = {"first_to_second": f"{first} -> {second}", "second_to_first": f"{second} -> {first}"}
    lines = [f"{'direction':<32} {'MRR':>6} {'R@1':>6} {'R@5':>6} {'R@10':>6}  queries/corpus"]
    for key, label in names.items():
        m = metrics[key]
        lines.append(f"{label:<32} {m['mrr']:6.3f} {m['recall@1']:6.3f} {m['recall@5']:6.3f} "
                     f"{m['recall@10']:6.3f}  {m['queries']}/{m['corpus']}")
    return "\n".join(lines)
