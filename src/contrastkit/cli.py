"""The `contrastkit` command line: fit, embed, evaluate, select, index, search, shard, export.

Errors a user can cause (``ContrastkitError``) are printed as one paragraph, without a traceback,
and the exit status is 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import textwrap
import warnings
from pathlib import Path

from contrastkit import __version__
from contrastkit.core.errors import ConfigError, ContrastkitError, closest_names
from contrastkit.goal_commands import (
    SEMI_SUPERVISED_NEIGHBOURS,
    TRUST_HELP,
    add_goal_commands,
    load_array,
    run_index,
    run_ood_evaluation,
    run_search,
    run_select,
    run_semi_supervised_evaluation,
)
from contrastkit.fine_tune_command import add_fine_tune_arguments, run_fine_tune
from contrastkit.report_commands import add_report_commands, run_compare, run_report
from contrastkit.modalities.text.benchmark_tasks import add_tasks_parser, run_tasks  # light: no torch at import
from contrastkit.modalities.text.mining import add_mine_parser, run_mine  # light: no torch at import
from contrastkit.modalities.image.segmentation.command import add_segment_parser, run_segment  # light: no torch

EVALUATION_TASKS = ("probe", "sts", "retrieval", "ood", "semi-supervised")
PROBE_NEIGHBOURS = 200  # evaluate --k for --task probe (the weighted kNN monitor's k)
# The modality commands of earlier versions: `contrastkit text ...` = `contrastkit fit --modality text ...`.
FIT_ALIASES = {"text": "text", "pairs": "pairs", "graph": "graph", "timeseries": "timeseries"}


class Parser(argparse.ArgumentParser):
    """argparse whose errors are ConfigErrors that name the closest valid option. Abbreviations are
    off: `--epoch` must not silently mean `--epochs`."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        raise ConfigError(f"{self.prog}: {message}. Run '{self.prog} --help' for the options.")


def unknown_options_message(command: str, unknown: list[str], parser: argparse.ArgumentParser) -> str:
    valid = [a for action in parser._actions for a in action.option_strings if a.startswith("--")]
    parts = []
    for option in unknown:
        close = closest_names(option.split("=")[0], valid) if option.startswith("-") else []
        parts.append(f"'{option}'" + (f" (did you mean {', '.join(close)}?)" if close else ""))
    return (f"Unknown option {', '.join(parts)} for 'contrastkit {command}'. "
            f"Run 'contrastkit {command} --help' for the valid options.")


def build_parser() -> Parser:
    parser = Parser(prog="contrastkit", description="Self-supervised representation learning for images, text, "
                    "pairs, graphs, time series and tables: 'contrastkit fit --help' lists the methods.")
    parser.add_argument("--version", action="version", version=f"contrastkit {__version__}")
    commands = parser.add_subparsers(dest="command", parser_class=Parser)
    parser.commands = commands.choices  # name -> subparser, for messages about its options

    # Commands that train: parsed by contrastkit.fit_command (their options depend on the method).
    commands.add_parser("fit", help="pretrain an encoder of any modality and write a run folder "
                        "('contrastkit fit --help' lists the methods)", add_help=False)
    for alias, modality in FIT_ALIASES.items():
        commands.add_parser(alias, help=f"= contrastkit fit --modality {modality}", add_help=False)

    embed = commands.add_parser("embed", help="embed data with a trained checkpoint")
    embed.add_argument("--checkpoint", required=True, help="a checkpoint written by fit (checkpoints/last.ckpt)")
    embed.add_argument("--data", required=True, help="data to embed (same forms as fit --data)")
    embed.add_argument("--out", required=True, help="output .npy file (labels go beside it as *.labels.npy)")
    embed.add_argument("--batch-size", type=int, default=512)
    embed.add_argument("--trust-checkpoint", action="store_true", help=TRUST_HELP)
    embed.add_argument("--skip-unreadable", action="store_true",
                       help="leave out image files that cannot be decoded (counted, and named in a warning and in "
                            "OUT's *.skipped.txt) instead of stopping")

    evaluate = commands.add_parser("evaluate", help="kNN and linear probes of embeddings with labels; "
                                   "a text model on STS or a BEIR retrieval set; out-of-distribution AUROC; "
                                   "semi-supervised classifiers from a few labels")
    evaluate.add_argument("--task", choices=EVALUATION_TASKS, default="probe",
                          help="probe: kNN + linear probes of --embeddings/--labels (default); sts: Spearman "
                               "x100 of a text model on an STS file; retrieval: nDCG/Recall/MRR on a BEIR folder; "
                               "ood: AUROC of kNN-distance and Mahalanobis scores, --ood-embeddings against "
                               "the held-out in-distribution --embeddings, fitted on --reference; semi-supervised: "
                               "linear probe vs label propagation and self-training from a few labels + the rest")
    evaluate.add_argument("--embeddings", help=".npy file of shape (N, d) (--task probe; --task ood: held-out "
                                               "in-distribution embeddings)")
    evaluate.add_argument("--ood-embeddings", help="--task ood: .npy embeddings of out-of-distribution samples")
    evaluate.add_argument("--reference", help="--task ood: .npy embeddings of in-distribution training samples "
                                              "(not those of --embeddings) that the scores are fitted on")
    evaluate.add_argument("--reference-labels", help="--task ood: class labels of --reference, for the "
                                                     "class-conditional Mahalanobis score")
    evaluate.add_argument("--shrinkage", default="ledoit-wolf",
                          help="--task ood: covariance shrinkage towards a multiple of the identity, a number "
                               "in [0, 1] or ledoit-wolf (default)")
    evaluate.add_argument("--no-normalize", action="store_true",
                          help="--task ood: score the embeddings as given (default: L2-normalised rows, which "
                               "discards their norm)")
    evaluate.add_argument("--labels", help=".npy file of N integer labels (--task probe, semi-supervised); "
                                           "with --fine-tune, the number of labelled training samples")
    evaluate.add_argument("--model", help="text model (sts, retrieval): 'minilm', a folder written by "
                                          "TextEncoder.save or any local Hugging Face / sentence-transformers "
                                          "folder; 'bm25' for the lexical baseline (retrieval)")
    evaluate.add_argument("--data", help="an STS file (sts) or a BEIR folder (retrieval); --fine-tune on a text run: "
                                         "the labelled texts, a clustering task file or a table of (text, label)")
    evaluate.add_argument("--split", default="dev",
                          help="BEIR qrels split (retrieval): dev (default; qrels/dev.tsv, or a fixed third of "
                               "the train queries), train, or test (only once settings are chosen on dev)")
    evaluate.add_argument("--batch-size", type=int, default=64, help="texts per encoding batch (default 64)")
    evaluate.add_argument("--cache-dir", help="corpus embedding cache (default $CONTRASTKIT_CACHE or "
                                              "~/.cache/contrastkit)")
    evaluate.add_argument("--no-cache", action="store_true", help="do not read or write the embedding cache")
    evaluate.add_argument("--precision", choices=("fp32", "bf16"), default="fp32",
                          help="encoding precision (bf16: CPU autocast)")
    evaluate.add_argument("--hybrid-weight", type=float,
                          help="retrieval: rank by w * cosine + (1 - w) * BM25, both min-max normalised per "
                               "query (w in [0, 1]; set it on development queries)")
    evaluate.add_argument("--document-model",
                          help="retrieval with a two-tower model: the model that embeds the documents "
                               "(--model embeds the queries), e.g. minilm for a hybrid-distill run")
    evaluate.add_argument("--test-fraction", type=float, default=0.2)
    evaluate.add_argument("--label-fractions", default="0.01,0.1,1.0",
                          help="comma-separated shares of training labels for the linear probe")
    evaluate.add_argument("--k", type=int, default=None,
                          help=f"neighbours: of the kNN probe (default {PROBE_NEIGHBOURS}); --task ood: the k-th "
                               f"nearest reference row gives the kNN score (default 10); --task semi-supervised: "
                               f"of each row in the label-propagation graph (default {SEMI_SUPERVISED_NEIGHBOURS})")
    evaluate.add_argument("--seed", type=int, default=0)
    evaluate.add_argument("--run", help="semi-supervised: a run folder (embeddings.npy, labels.npy, split.json); "
                                        "--fine-tune: the run whose encoder is fine-tuned")
    evaluate.add_argument("--labelled", help="semi-supervised: labelled row numbers, one per line (contrastkit select)")
    evaluate.add_argument("--labels-per-class", type=int, default=10, help="semi-supervised, without --labelled")
    evaluate.add_argument("--alpha", type=float, default=0.99, help="semi-supervised: label propagation's alpha")
    evaluate.add_argument("--threshold", type=float, default=0.95, help="semi-supervised: self-training's threshold")
    evaluate.add_argument("--rounds", type=int, default=5, help="semi-supervised: self-training rounds")
    evaluate.add_argument("--dims", help="sts, retrieval: also score the embeddings cut to these dimensions, e.g. "
                                         "384,256,128,64 (one row per dimension; Matryoshka models)")
    add_fine_tune_arguments(evaluate)
    add_goal_commands(commands)
    add_report_commands(commands)
    add_mine_parser(commands)
    add_tasks_parser(commands)
    add_segment_parser(commands)
    shard = commands.add_parser("shard", help="convert an image set into memory-mapped shards for streaming")
    shard.add_argument("--data", required=True, help="images to convert (same forms as fit --data)")
    shard.add_argument("--out", required=True, help="output folder (index.json, shard-*.npy, labels.npy)")
    shard.add_argument("--shard-size", type=int, default=10_000, help="images per shard file (default 10000)")
    shard.add_argument("--image-size", type=int, default=None, help="resize images to this side length")
    shard.add_argument("--channels", type=int, default=None, help="1 or 3 to force grayscale or RGB")
    shard.add_argument("--skip-unreadable", action="store_true",
                       help="leave out image files that cannot be decoded (named in a warning) instead of stopping")

    export = commands.add_parser("export", help="save a trained image encoder as safetensors + config.json, or a "
                                 "text encoder as a sentence-transformers folder; --format onnx adds model.onnx")
    export.add_argument("--checkpoint", help="an image checkpoint written by fit (checkpoints/last.ckpt)")
    export.add_argument("--text-model", help="a text encoder: a folder written by 'contrastkit text' (or "
                        "TextEncoder.save), a Hugging Face model folder, or 'minilm'")
    export.add_argument("--format", choices=EXPORT_FORMATS, default=None,
                        help="contrastkit (image encoders; default with --checkpoint) or sentence-transformers "
                             "(text encoders; default with --text-model); onnx (either): that folder plus "
                             "model.onnx, checked against PyTorch with onnxruntime")
    export.add_argument("--out", required=True, help="output folder")
    export.add_argument("--overwrite", action="store_true", help="replace an earlier export in --out")
    export.add_argument("--trust-checkpoint", action="store_true", help=TRUST_HELP + " (with --checkpoint)")
    return parser


EXPORT_FORMATS = ("contrastkit", "sentence-transformers", "onnx")


def quiet_lightning() -> None:
    """Lightning's start-up chatter (accelerator probes, tips, log-directory notes) says nothing a
    contrastkit user can act on; its warnings about real problems still show."""
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    logging.getLogger("lightning.fabric").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=r"Experiment logs directory .* exists and is not empty")
    warnings.filterwarnings("ignore", message=r".*LeafSpec.*is deprecated")


def run_embed(args: argparse.Namespace) -> int:
    import numpy as np

    from contrastkit.modalities.image.training.restore import embed_with_checkpoint

    embeddings, labels, skipped = embed_with_checkpoint(args.checkpoint, args.data, batch_size=args.batch_size,
                                                        trust_checkpoint=args.trust_checkpoint,
                                                        skip_unreadable=args.skip_unreadable)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.save(out, embeddings)
    print(f"Wrote {embeddings.shape[0]} embeddings of dimension {embeddings.shape[1]} to {out}")
    if skipped:
        skipped_path = out.with_name(out.stem + ".skipped.txt")
        skipped_path.write_text("".join(f"{entry}\n" for entry in skipped))
        print(f"Skipped {len(skipped)} unreadable image(s) (--skip-unreadable), listed in {skipped_path}; the "
              f"embeddings are those of the other images, in order")
    if labels is not None:
        labels_path = out.with_name(out.stem + ".labels.npy")
        np.save(labels_path, labels)
        print(f"Wrote their labels to {labels_path}")
    return 0


def run_evaluate(args: argparse.Namespace) -> int:
    from contrastkit.evaluation.protocol import evaluate_with_label_fractions

    if args.fine_tune:
        return run_fine_tune(args)
    if args.task == "ood":
        return run_ood_evaluation(args)
    if args.task == "semi-supervised":
        return run_semi_supervised_evaluation(args)
    if args.task != "probe":
        return run_text_evaluation(args)
    missing = [option for option, value in (("--embeddings", args.embeddings), ("--labels", args.labels))
               if value is None]
    if missing:
        raise ConfigError(f"evaluate --task probe needs {' and '.join(missing)}: an .npy file of embeddings "
                          "(N, d) and one of N integer labels (contrastkit embed writes both). For a text "
                          "model use --task sts or --task retrieval with --model and --data.")
    embeddings = load_array(args.embeddings, "--embeddings")
    labels = load_array(args.labels, "--labels")
    fractions = _parse_fractions(args.label_fractions)
    results = evaluate_with_label_fractions(embeddings, labels, fractions=fractions,
                                            test_fraction=args.test_fraction, k=args.k or PROBE_NEIGHBOURS,
                                            seed=args.seed)
    print(json.dumps(results, indent=2))
    return 0


def run_text_evaluation(args: argparse.Namespace) -> int:
    from contrastkit.modalities.text.evaluation import evaluate_text_task
    from contrastkit.modalities.text.matryoshka import parse_dims

    for option, value in (("--model", args.model), ("--data", args.data)):
        if value is None:
            raise ConfigError(f"evaluate --task {args.task} needs {option} (--model: 'minilm', a model "
                              "folder, or 'bm25' for retrieval; --data: an STS file or a BEIR folder).")
    if args.embeddings or args.labels:
        raise ConfigError(f"--embeddings and --labels belong to --task probe; --task {args.task} embeds "
                          "the texts of --data with --model itself.")
    if args.task == "retrieval" and args.split == "test":
        print("scoring the test split: choose settings on dev first", file=sys.stderr)
    results = evaluate_text_task(args.task, args.model, args.data, split=args.split,
                                 batch_size=args.batch_size,
                                 cache_dir=False if args.no_cache else args.cache_dir,
                                 precision=args.precision, hybrid_weight=args.hybrid_weight,
                                 document_model=args.document_model, dims=parse_dims(args.dims, "--dims"))
    print(json.dumps(results, indent=2))
    return 0


def run_shard(args: argparse.Namespace) -> int:
    from contrastkit.modalities.image.sources.shards import shard_image_source

    index = shard_image_source(args.data, args.out, shard_size=args.shard_size, image_size=args.image_size,
                               channels=args.channels, skip_unreadable=args.skip_unreadable)
    written = json.loads(index.read_text())
    print(f"Wrote {written['num_samples']} images of shape {tuple(written['image_shape'])} in "
          f"{len(written['shards'])} shards to {index.parent}; train from them with "
          f"'contrastkit fit --data shards:{index.parent}'")
    return 0


def run_export(args: argparse.Namespace) -> int:
    if (args.checkpoint is None) == (args.text_model is None):
        raise ConfigError("contrastkit export needs exactly one of --checkpoint (an image run's checkpoint) and "
                          "--text-model (a text encoder folder).")
    expected = "contrastkit" if args.checkpoint is not None else "sentence-transformers"
    if args.format not in (None, expected, "onnx"):
        given = "--checkpoint" if args.checkpoint is not None else "--text-model"
        raise ConfigError(f"--format {args.format} does not apply to {given}: image checkpoints export as "
                          f"'contrastkit' (safetensors + config.json), text encoders as 'sentence-transformers'.")
    if args.text_model is not None:
        from contrastkit.modalities.text.export import export_text_model

        folder = export_text_model(args.text_model, args.out, overwrite=args.overwrite, onnx=args.format == "onnx")
        print(f"Wrote a sentence-transformers folder to {folder} "
              f"(load it with sentence_transformers.SentenceTransformer('{folder}'))")
        if args.format == "onnx":
            print(f"and {folder / 'model.onnx'}, which embeds as PyTorch does (OnnxTextEncoder('{folder}') runs it)")
        return 0
    from contrastkit.modalities.image.export import export_encoder

    folder = export_encoder(args.checkpoint, args.out, overwrite=args.overwrite,
                            trust_checkpoint=args.trust_checkpoint)
    print(f"Wrote the encoder to {folder}: model.safetensors + config.json "
          f"(reload it with contrastkit.load('{folder}'))")
    if args.format != "onnx":
        (folder / "model.onnx").unlink(missing_ok=True)  # an earlier --format onnx's graph no longer matches
    else:
        from contrastkit.modalities.image.onnx import export_image_onnx

        path = export_image_onnx(folder)
        print(f"and {path}, which embeds as PyTorch does (OnnxImageEncoder('{folder}') runs it)")
    return 0


def _parse_fractions(text: str) -> list[float]:
    try:
        fractions = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ConfigError(f"--label-fractions must be comma-separated numbers in (0, 1], got '{text}'.") from None
    if not fractions or any(not 0 < f <= 1 for f in fractions):
        raise ConfigError(f"--label-fractions must be comma-separated numbers in (0, 1], got '{text}'.")
    return fractions


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else argv
    try:
        if not argv:
            parser.print_help()
            return 0
        if argv[0] == "fit" or argv[0] in FIT_ALIASES:
            from contrastkit.fit_command import run_fit

            if argv[0] == "fit":
                return run_fit(argv[1:])
            return run_fit(argv[1:], modality=FIT_ALIASES[argv[0]], prog=f"contrastkit {argv[0]}")
        commands = ["fit", "embed", "evaluate", *FIT_ALIASES, "select", "index", "search", "mine", "benchmark", "shard",
                    "export", "report", "compare", "segment"]
        if argv[0] not in (*commands, "-h", "--help", "--version"):
            close = closest_names(argv[0], commands)
            hint = f" Did you mean: {', '.join(close)}?" if close else ""
            raise ConfigError(f"Unknown command '{argv[0]}'.{hint} Commands: {', '.join(commands)}.")
        args, unknown = parser.parse_known_args(argv)
        if unknown:
            raise ConfigError(unknown_options_message(args.command, unknown, parser.commands[args.command]))
        handlers = {"embed": run_embed, "evaluate": run_evaluate, "select": run_select, "index": run_index,
                    "search": run_search, "mine": run_mine, "benchmark": run_tasks, "shard": run_shard,
                    "export": run_export, "report": run_report, "compare": run_compare,
                    "segment": run_segment}
        return handlers[args.command](args)
    except ContrastkitError as exc:
        print("\n" + textwrap.fill(f"error: {exc}", width=100, break_on_hyphens=False, break_long_words=False) + "\n", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted; the last checkpoint (if any) is intact: continue with --resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

