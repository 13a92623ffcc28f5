"""``contrastkit evaluate --fine-tune --run RUN --labels N``: end-to-end fine-tuning of a run's encoder
with a linear head on N labels, beside the frozen kNN and linear probes on the same labels.

The run folder says which modality it is (:func:`contrastkit.loading.run_kind`); each modality that
classifies has its fine-tuning path (images: :mod:`contrastkit.modalities.image.fine_tune`; time
series: :mod:`contrastkit.modalities.timeseries.fine_tune`; text, on the labelled texts of ``--data``:
:mod:`contrastkit.modalities.text.fine_tune`; graphs, node classification:
:mod:`contrastkit.modalities.graph.fine_tune`; audio, the run's clips and split:
:mod:`contrastkit.modalities.audio.fine_tune`; tabular, the run's labelled table, reloaded with its
feature scaling: :mod:`contrastkit.modalities.tabular.fine_tune`), over one loop
(:mod:`contrastkit.evaluation.fine_tune`). The rate and the number of epochs are chosen on a
development carve of the training part; the test part is scored only with ``--split test``.
The figures are printed and kept in the run folder's ``fine_tune.json`` (one entry per setting,
the latest kept), which the run report shows beside the frozen probes.

This module is light (no torch at import): the command line imports it.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from contrastkit.core.errors import ConfigError

FINE_TUNE_MODALITIES = ("image", "timeseries", "text", "graph", "audio", "tabular")


def add_fine_tune_arguments(evaluate: argparse.ArgumentParser) -> None:
    """The options of ``evaluate --fine-tune`` (``--run``, ``--labels``, ``--split``, ``--seed`` and
    ``--batch-size`` are the command's shared options)."""
    evaluate.add_argument("--fine-tune", action="store_true",
                          help="fine-tune the encoder of --run (an image, time-series, text, graph, audio or tabular "
                               "run) with a linear head on --labels N labels (balanced, from the training part), beside "
                               "kNN and the linear probe on the same labels; choices on a development carve, the test "
                               "part scored only with --split test")
    evaluate.add_argument("--epochs", type=int, default=30, help="--fine-tune: epochs (the best on dev is kept)")
    evaluate.add_argument("--lr", type=float, action="append",
                          help="--fine-tune: the head's Adam rate, repeatable (the best on dev is chosen; default 1e-3)")
    evaluate.add_argument("--encoder-lr-scale", type=float, default=1.0,
                          help="--fine-tune: the encoder's rate as a multiple of --lr (0: frozen, a linear probe)")
    evaluate.add_argument("--layer-decay", type=float,
                          help="--fine-tune: layer-wise rate decay for encoders with blocks (ResNet, GNN, ViT, "
                               "transformers): block i of L learns at lr * decay^(L + 1 - i); an error for others")
    evaluate.add_argument("--weight-decay", type=float, default=0.0, help="--fine-tune: Adam's L2 weight decay")
    evaluate.add_argument("--dev-size", type=float, default=1000,
                          help="--fine-tune: the development carve of the training part, a count or a share < 1 "
                               "(default 1000; of a text task's dev data; of a graph's non-test nodes; time series "
                               "and tabular runs use their run's fixed 30%% carve, audio runs their split's development "
                               "part)")
    evaluate.add_argument("--no-augment", action="store_true", help="--fine-tune: no training augmentation")
    evaluate.add_argument("--from-scratch", action="store_true",
                          help="--fine-tune (image runs): the run's architecture freshly initialised (seeded by "
                               "--seed) instead of its weights, the baseline that pretraining is measured against")
    evaluate.add_argument("--output", help="--fine-tune: also write the figures to this JSON file")


def fine_tune_labels(value: str | None) -> int:
    """``--labels`` of ``--fine-tune``: a positive whole number of labels."""
    try:
        labels = int(value) if value is not None else None
    except ValueError:
        labels = None
    if labels is None or labels < 1:
        raise ConfigError(f"evaluate --fine-tune needs --labels N, the number of labelled training samples "
                          f"(e.g. --labels 80), got {value!r}.")
    return labels


def run_fine_tune(args: argparse.Namespace) -> int:
    from contrastkit.loading import run_kind

    if args.run is None:
        raise ConfigError("evaluate --fine-tune needs --run RUN, the run folder whose encoder is fine-tuned.")
    labels = fine_tune_labels(args.labels)
    kind = run_kind(args.run)
    options = dict(epochs=args.epochs, lrs=tuple(args.lr or (1e-3,)), encoder_lr_scale=args.encoder_lr_scale,
                   layer_decay=args.layer_decay, batch_size=args.batch_size, weight_decay=args.weight_decay,
                   seed=args.seed, split=args.split, augment=not args.no_augment)
    if args.from_scratch and kind != "image":
        raise ConfigError(f"evaluate --fine-tune --from-scratch is available for image runs; '{args.run}' is "
                          f"{'a ' + kind + ' run' if kind else 'no run folder'}.")
    if kind == "image":
        from contrastkit.modalities.image.fine_tune import fine_tune_image_run

        results = fine_tune_image_run(args.run, labels, dev_size=args.dev_size, from_scratch=args.from_scratch,
                                      **options)
    elif kind == "timeseries":
        from contrastkit.modalities.timeseries.fine_tune import fine_tune_timeseries_run

        results = fine_tune_timeseries_run(args.run, labels, **options)
    elif kind in ("text", "text-model"):
        from contrastkit.modalities.text.fine_tune import fine_tune_text_run

        results = fine_tune_text_run(args.run, labels, data=args.data, dev_size=args.dev_size, **options)
    elif kind == "graph":
        from contrastkit.modalities.graph.fine_tune import fine_tune_graph_run

        results = fine_tune_graph_run(args.run, labels, dev_size=args.dev_size, **options)
    elif kind == "audio":
        from contrastkit.modalities.audio.fine_tune import fine_tune_audio_run

        results = fine_tune_audio_run(args.run, labels, **options)
    elif kind == "tabular":
        from contrastkit.modalities.tabular.fine_tune import fine_tune_tabular_run

        results = fine_tune_tabular_run(args.run, labels, **options)
    else:
        raise ConfigError(f"evaluate --fine-tune: '{args.run}' is {'a ' + kind + ' run' if kind else 'no run folder'}; "
                          f"fine-tuning is available for {', '.join(FINE_TUNE_MODALITIES)} runs.")
    if kind != "text-model":  # a run folder keeps its figures for the report; a model folder is left as it is
        from contrastkit.report.fine_tuning import record_fine_tune

        record_fine_tune(args.run, results)
    text = json.dumps(results, indent=2)
    if args.output:
        Path(args.output).write_text(text + "\n")
    print(text)
    return 0
