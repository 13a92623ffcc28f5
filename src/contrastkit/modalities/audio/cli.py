"""Audio options of ``contrastkit fit`` (SimCLR, BYOL, CPC, wav2vec 2.0, HuBERT, MAE) and the run they start.

    contrastkit fit --method cpc --data fsdd --out runs/cpc-fsdd
    contrastkit fit --method wav2vec2 --data fsdd --out runs/wav2vec2-fsdd
    contrastkit fit --method hubert --data fsdd --out runs/hubert-1                    # k-means of MFCCs
    contrastkit fit --method hubert --data fsdd --targets-from runs/hubert-1 --out runs/hubert-2
    contrastkit fit --method mae --data fsdd --mask-ratio 0.8 --out runs/mae-fsdd
    contrastkit fit --method simclr --data fsdd --split speaker --max-epochs 20 --out runs/simclr-fsdd
    contrastkit fit --method byol --data clips/ --label-pattern '^(?P<label>[a-z]+)_' --sample-rate 16000
    contrastkit fit --out runs/cpc-fsdd --resume
    contrastkit fit --method simclr --data fsdd --batch-size 32 --devices 2 --strategy ddp

``--data`` is a folder of WAV/FLAC/OGG files (any depth), or ``fsdd`` (the Free Spoken Digit
Dataset under the data root, recognised by its file names). Every clip is decoded once, mixed down
to mono and resampled to ``--sample-rate`` (default: the first file's rate)
(:mod:`contrastkit.modalities.audio.sources`). Labels come from subfolders or ``--label-pattern``.

What trains and what is scored (nothing of a test part is read unless ``--eval-split test``):

- FSDD, ``--split repetition`` (the official split: repetitions 0-4 are the test part) or
  ``--split speaker`` (speaker theo is the test part); the default ``--eval-split dev`` trains on
  the rest but a development part (repetitions 5-9, or speaker nicolas) and scores that part;
  ``--eval-split test`` trains on everything but the test part and scores it.
- another labelled folder: a fixed stratified 30 % development carve is scored, the rest trains;
  unlabelled: every clip trains and nothing is scored.

Scores (``summary.json``'s ``evaluation``): a logistic-regression probe (standardised embeddings,
C = 1) of the label with all training labels and with 10 per class, and for FSDD split by
repetition the speaker.

The run folder is the engine's: config.yaml (these options; ``--resume`` reads them back),
checkpoints/last.ckpt (every epoch and every ``--checkpoint-every-steps`` steps), metrics.csv,
summary.json, report.md + plots/, embeddings.npy of every clip in file order (+ labels.npy) and
split.json (which rows trained and which were scored, and what the scored part is; every run folder
names its parts so: :func:`~contrastkit.engine.run_folder.write_split`), which ``contrastkit select
--run`` and ``evaluate --task semi-supervised --run`` read. ``--devices N --strategy ddp``
trains N processes that equal one process with N x ``--batch-size`` clips
(:mod:`contrastkit.modalities.audio.training`).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from contrastkit.core.errors import ConfigError

METHOD_NAMES = ("simclr", "byol", "cpc", "wav2vec2", "hubert", "mae")
DEFAULTS = {
    "method": None, "data": None, "label_pattern": None, "sample_rate": None, "split": "repetition",
    "eval_split": "dev", "crop_seconds": None, "max_epochs": 20, "max_steps": None, "max_minutes": None,
    "batch_size": 64, "lr": 1e-3, "seed": 0, "width": 128, "depth": 4, "n_mels": 40, "projection_dim": 128,
    "temperature": 0.2, "momentum": 0.99, "context_dim": 256, "prediction_steps": 8,
    "mask_prob": 0.13, "mask_length": 5, "num_distractors": 10, "codebook_groups": 2, "codebook_entries": 64,
    "diversity_weight": 0.1, "clusters": 50, "targets_from": None, "target_layer": None, "unmasked_weight": 0.0,
    "mask_ratio": 0.8, "patch_mels": 8, "patch_frames": 4,
    "checkpoint_every_steps": None, "accelerator": "cpu", "devices": 1, "strategy": "auto", "precision": "32-true",
}
# The method's default --crop-seconds.
CROP_SECONDS = {"simclr": 0.5, "byol": 0.5, "cpc": 0.4, "wav2vec2": 0.4, "hubert": 0.4, "mae": 0.4}
CONFIG_FILE = "config.yaml"
FEW_LABELS = 10  # labels per class of the few-label probe
DEV_FRACTION = 0.3


def add_arguments(parser: argparse.ArgumentParser) -> None:
    def default(name: str) -> str:
        return f" (default: {DEFAULTS[name]})"

    parser.add_argument("--method", choices=METHOD_NAMES, help=", ".join(METHOD_NAMES))
    parser.add_argument("--data", help="a folder of WAV/FLAC/OGG files, or fsdd")
    parser.add_argument("--label-pattern", help="a regex with a named group 'label' searched in each file name "
                                                "(default: labels from subfolders)")
    parser.add_argument("--sample-rate", type=int, help="resample every clip to this rate (default: the first file's)")
    parser.add_argument("--split", choices=("repetition", "speaker"),
                        help="FSDD: the official split by repetition, or speakers held out" + default("split"))
    parser.add_argument("--eval-split", choices=("dev", "test"),
                        help="dev: score a development part carved from the training side; test: the test "
                             "part, once settings are chosen" + default("eval_split"))
    parser.add_argument("--crop-seconds", type=float, help="training window (default: simclr/byol 0.5, the others 0.4)")
    parser.add_argument("--out", help="run folder (default runs/<method>-<data>-<time>)")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out with its saved options")
    parser.add_argument("--max-epochs", "--epochs", dest="max_epochs", type=int, help="passes" + default("max_epochs"))
    parser.add_argument("--max-steps", type=int, help="stop after this many optimiser steps")
    parser.add_argument("--max-minutes", type=float, help="stop after this much training time")
    parser.add_argument("--batch-size", type=int, help="clips per step and process" + default("batch_size"))
    parser.add_argument("--lr", type=float, help="AdamW learning rate" + default("lr"))
    parser.add_argument("--seed", type=int, help="initialisation, batch order and views" + default("seed"))
    parser.add_argument("--width", type=int, help="channels of the encoder's frames" + default("width"))
    parser.add_argument("--depth", type=int, help="residual blocks of the spectrogram encoder" + default("depth"))
    parser.add_argument("--n-mels", type=int, help="mel bands" + default("n_mels"))
    parser.add_argument("--projection-dim", type=int, help="output of the projection head" + default("projection_dim"))
    parser.add_argument("--temperature", type=float, help="simclr: NT-Xent temperature" + default("temperature"))
    parser.add_argument("--momentum", type=float, help="byol: base EMA rate of the target" + default("momentum"))
    parser.add_argument("--context-dim", type=int, help="cpc: GRU context size" + default("context_dim"))
    parser.add_argument("--prediction-steps", type=int, help="cpc: future steps predicted" + default("prediction_steps"))
    parser.add_argument("--mask-prob", type=float,
                        help="wav2vec2/hubert: share p of a crop's frames that start a span" + default("mask_prob"))
    parser.add_argument("--mask-length", type=int,
                        help="wav2vec2/hubert: frames M of a masked span" + default("mask_length"))
    parser.add_argument("--num-distractors", type=int,
                        help="wav2vec2: distractors K per masked frame" + default("num_distractors"))
    parser.add_argument("--codebook-groups", type=int, help="wav2vec2: codebooks G" + default("codebook_groups"))
    parser.add_argument("--codebook-entries", type=int,
                        help="wav2vec2: entries V per codebook" + default("codebook_entries"))
    parser.add_argument("--diversity-weight", type=float,
                        help="wav2vec2: weight alpha of the codebook diversity loss" + default("diversity_weight"))
    parser.add_argument("--clusters", type=int, help="hubert: k-means clusters of the targets" + default("clusters"))
    parser.add_argument("--targets-from", help="hubert: a finished hubert/wav2vec2 run whose Transformer frames are "
                                               "clustered for the targets (the next iteration; default: MFCCs)")
    parser.add_argument("--target-layer", type=int,
                        help="hubert with --targets-from: the run's Transformer block clustered (default: the middle)")
    parser.add_argument("--unmasked-weight", type=float,
                        help="hubert: weight of the unmasked frames' loss, 1 - alpha" + default("unmasked_weight"))
    parser.add_argument("--mask-ratio", type=float, help="mae: share of patches masked" + default("mask_ratio"))
    parser.add_argument("--patch-mels", type=int, help="mae: mel bands per patch" + default("patch_mels"))
    parser.add_argument("--patch-frames", type=int, help="mae: frames per patch" + default("patch_frames"))
    parser.add_argument("--checkpoint-every-steps", type=int, help="also checkpoint every N optimiser steps")
    parser.add_argument("--accelerator", choices=("cpu", "gpu", "auto"), help="default cpu")
    parser.add_argument("--devices", type=int, help="processes (devices) that train together" + default("devices"))
    parser.add_argument("--strategy", help="Lightning's strategy, e.g. ddp (with --devices N)" + default("strategy"))
    parser.add_argument("--precision", help="Lightning's precision" + default("precision"))


def resolve_options(args: argparse.Namespace) -> dict:
    """defaults < the run's config.yaml (with --resume) < the options given."""
    import yaml

    values = dict(DEFAULTS)
    if args.resume:
        config = Path(args.out or "") / CONFIG_FILE
        if args.out is None or not config.is_file():
            raise ConfigError(f"--resume needs --out pointing to an audio run folder with {CONFIG_FILE}; "
                              f"'{args.out}' has none.")
        values.update({k: v for k, v in (yaml.safe_load(config.read_text()) or {}).items() if k in DEFAULTS})
    values.update({k: v for k, v in vars(args).items() if k in DEFAULTS and v is not None})
    for required in ("method", "data"):
        if values[required] is None:
            raise ConfigError(f"--{required} is required (or --resume, to continue a run with its saved options).")
    if values["crop_seconds"] is None:
        values["crop_seconds"] = CROP_SECONDS[values["method"]]
    if values["targets_from"] is not None:
        run = Path(values["targets_from"]).expanduser().resolve()  # a resumed run may start elsewhere
        if not (run / CONFIG_FILE).is_file():
            raise ConfigError(f"--targets-from '{values['targets_from']}' is not a run folder (no {CONFIG_FILE}); "
                              f"name the folder of a finished hubert or wav2vec2 run.")
        values["targets_from"] = str(run)
    elif values["target_layer"] is not None:
        raise ConfigError("--target-layer names a block of the --targets-from run; give --targets-from RUN too.")
    return values


def parts(clips, options: dict):
    """``(training positions, scored positions or None, what was scored)`` (module docstring)."""
    import sys

    import numpy as np

    from contrastkit.evaluation.splits import stratified_split
    from contrastkit.modalities.audio.sources import fsdd_split

    if clips.speakers is not None:
        if options["eval_split"] == "test":
            print("scoring the test split: choose settings on dev first", file=sys.stderr)
        train, scored = fsdd_split(clips, options["split"], options["eval_split"])
        return train, scored, f"fsdd {options['split']} split, {options['eval_split']} part"
    if options["eval_split"] == "test":
        raise ConfigError(f"'{options['data']}' has no test part (only FSDD's splits are known); score the "
                          f"default development carve, or keep a test folder apart and embed it.")
    if clips.labels is None:
        return np.arange(len(clips)), None, "nothing (no labels)"
    labelled = np.flatnonzero(clips.labels >= 0)
    kept, dev = stratified_split(clips.labels[labelled], DEV_FRACTION, seed=0)
    train = np.sort(np.concatenate([labelled[kept], np.flatnonzero(clips.labels < 0)]))
    return train, labelled[dev], f"a stratified {DEV_FRACTION:.0%} development carve"


def evaluate(embeddings, clips, train, scored) -> dict:
    """Probe accuracies (%) on the scored clips: the label with all and with 10 training labels
    per class, and (FSDD, when the scored clips' speakers also train) the speaker."""
    import numpy as np

    from contrastkit.evaluation.linear import make_probe_pipeline
    from contrastkit.evaluation.splits import few_labels_per_class

    def probe(targets, rows) -> float:
        classifier = make_probe_pipeline(C=1.0).fit(embeddings[rows], targets[rows])
        return round(100.0 * float(np.mean(classifier.predict(embeddings[scored]) == targets[scored])), 2)

    labelled = train[clips.labels[train] >= 0]
    result = {"scored_clips": int(len(scored)), "probe_accuracy": probe(clips.labels, labelled),
              f"probe_accuracy_{FEW_LABELS}_per_class": probe(clips.labels, few_labels_per_class(
                  clips.labels, labelled, FEW_LABELS, seed=0))}
    if clips.speakers is not None and set(clips.speakers[scored]) <= set(clips.speakers[train]):
        result["speaker_probe_accuracy"] = probe(clips.speakers, train)
    return result


def settings_of(options: dict, training_clips: int):
    from contrastkit.engine import TrainSettings
    from contrastkit.engine.processes import lightning_strategy

    batch_size = min(options["batch_size"], training_clips // options["devices"])
    return TrainSettings(optimizer="adamw", lr=options["lr"], schedule="constant", max_epochs=options["max_epochs"],
                         max_steps=options["max_steps"], max_minutes=options["max_minutes"],
                         accelerator=options["accelerator"], devices=options["devices"],
                         strategy=lightning_strategy(options["strategy"]), precision=options["precision"],
                         seed=options["seed"], batch_size=batch_size,
                         checkpoint_every_steps=options["checkpoint_every_steps"])


def build_method(options: dict, sample_rate: int):
    from contrastkit.core.registry import METHODS
    from contrastkit.core.seeding import seeded
    from contrastkit.modalities.audio import plugin  # noqa: F401  (registers the audio methods)

    with seeded(options["seed"]):  # the initial weights are a function of --seed alone
        return METHODS.load("audio", options["method"])(options, sample_rate)


def command(args: argparse.Namespace) -> int:
    import numpy as np
    import yaml

    from contrastkit.engine.run_folder import (
        is_first_process,
        open_run_dir,
        resolve_run_dir,
        write_split,
        write_summary,
    )
    from contrastkit.modalities.audio.sources import open_audio_folder
    from contrastkit.modalities.audio.training import embed_clips, train_audio

    options = resolve_options(args)
    clips = open_audio_folder(options["data"], options["sample_rate"], options["label_pattern"])
    options["sample_rate"] = clips.sample_rate
    train, scored, what = parts(clips, options)
    method = build_method(options, clips.sample_rate)
    settings = settings_of(options, len(train))
    run_dir = resolve_run_dir(args.out, args.resume, f"{options['method']}-{clips.name}")
    open_run_dir(run_dir, yaml.safe_dump({"modality": "audio", **options}, sort_keys=False))
    description = {"modality": "audio", "options": options, "training_clips": int(len(train))}
    result = train_audio(method, clips, train, settings, run_dir, resume=args.resume, description=description)
    if not is_first_process():
        raise SystemExit(0)  # a DDP child process: the first one embeds, scores and writes
    embeddings = embed_clips(method, clips)
    np.save(run_dir / "embeddings.npy", embeddings)
    if clips.labels is not None:
        np.save(run_dir / "labels.npy", clips.labels)
    write_split(run_dir, train, [] if scored is None else scored, held_out=what)
    loss = result.trainer.callback_metrics.get("train/loss")
    summary = {"method": options["method"], "data": options["data"], "modality": "audio",
               "sample_rate": clips.sample_rate, "training_clips": int(len(train)), "scored": what,
               "steps": result.trainer.global_step, "seconds": round(result.throughput.epoch_seconds, 2),
               "world_size": result.trainer.world_size,
               "global_batch_size": settings.batch_size * result.trainer.world_size,
               "final_loss": None if loss is None else float(loss),
               "evaluation": None if scored is None else evaluate(embeddings, clips, train, scored)}
    write_summary(run_dir, summary)
    from contrastkit.report import write_report

    write_report(run_dir)
    print(f"{options['method']} on {clips.name}: {summary['steps']} steps, final loss {summary['final_loss']}")
    if summary["evaluation"]:
        print(f"evaluation ({what}): " + json.dumps(summary["evaluation"]))
    print(f"\nRun directory: {run_dir}")
    return 0
