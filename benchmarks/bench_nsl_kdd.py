"""NSL-KDD anomaly detection: CLAN, SCARF + distance scoring, isolation forest, autoencoder.

Protocol (issue 6): every detector is fit on the *normal* rows of KDDTrain+_20Percent only
(13,449 rows) and scores all 22,544 rows of KDDTest+. AUROC (larger score = more anomalous,
computed as is) is reported over all attacks and per attack family (family vs normal rows).
Features: 38 numerics robust-scaled (median / IQR of the normal training rows) and clipped to
[-clip, clip]; 3 categoricals one-hot over the categories seen in those rows (72 columns in
all; unseen test categories encode to zeros). SCARF corruption
replaces whole input columns (a one-hot block is one feature).

``clan`` is the likelihood form of the catalogue's ``augmented_negatives``; ``clan (margin form)``
the authors' released loss (margin 1, alpha 0.5). Both score by cosine distance to the nearest
normal training embedding.

A second table: few-label multi-class detection, a logistic-regression head with k labelled
rows per class (normal, DoS, Probe, R2L, U2R, drawn from KDDTrain+_20Percent) on the frozen CLAN
encoder, beside the same head on the encoded features; macro recall on KDDTest+.

    python benchmarks/bench_nsl_kdd.py                       # one seed, 1 torch thread, ~3-5 min
    python benchmarks/bench_nsl_kdd.py --epochs 5 --seed 1   # quicker

The data folder is $CONTRASTKIT_DATA/nsl-kdd by default (``--data`` or CONTRASTKIT_DATA).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import recall_score

from contrastkit.evaluation.anomaly import (
    auroc_by_family,
    autoencoder_scores,
    isolation_forest_scores,
)
from contrastkit.evaluation.splits import few_labels_per_class
from contrastkit.modalities.tabular.sources import FAMILIES, load_nsl_kdd, nsl_kdd_encoder
from contrastkit.modalities.tabular.estimators import CLAN, SCARF

DEFAULT_DATA = Path(os.environ.get("CONTRASTKIT_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA / "nsl-kdd")
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--clip", type=float, default=10.0)
    parser.add_argument("--labels-per-class", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    started = time.time()

    train = load_nsl_kdd(args.data, "train20")
    test = load_nsl_kdd(args.data, "test")
    normal = train.rows(train.label == "normal")
    encoder = nsl_kdd_encoder(clip=args.clip).fit(normal.table)
    x_normal, x_train, x_test = (encoder.transform(t.table) for t in (normal, train, test))
    groups = encoder.feature_groups()
    common = {"hidden_dims": args.hidden, "depth": args.depth, "batch_size": 256, "feature_groups": groups, "seed": args.seed}

    results: dict[str, dict[str, float]] = {}
    seconds: dict[str, float] = {}

    def timed(name, scores_fn):
        start = time.time()
        results[name] = auroc_by_family(scores_fn(), test.family, families=FAMILIES)
        seconds[name] = time.time() - start

    clan = CLAN(x_normal.shape[1], **common)

    def clan_scores():
        clan.fit(x_normal, n_epochs=args.epochs)
        return clan.score(x_test)

    def clan_margin_scores():
        margin = CLAN(x_normal.shape[1], form="margin", **common)
        margin.fit(x_normal, n_epochs=args.epochs)
        return margin.score(x_test)

    def scarf_scores():
        scarf = SCARF(x_normal.shape[1], **common)
        scarf.fit(x_normal, n_epochs=args.epochs)
        return scarf.score(x_test)

    timed("clan", clan_scores)
    timed("clan (margin form)", clan_margin_scores)
    timed("scarf + distance", scarf_scores)
    timed("isolation forest", lambda: isolation_forest_scores(x_normal, x_test, seed=args.seed))
    timed("autoencoder", lambda: autoencoder_scores(x_normal, x_test, epochs=args.epochs, seed=args.seed))

    print(f"command: python benchmarks/{Path(__file__).name} {' '.join(sys.argv[1:])}".rstrip())
    print(f"train: {len(normal)} normal rows of KDDTrain+_20Percent; test: KDDTest+ {len(test)} rows "
          f"({int((test.family == 'normal').sum())} normal); {x_test.shape[1]} encoded columns; "
          f"encoder {args.depth} x {args.hidden}, {args.epochs} epochs, seed {args.seed}, 1 torch thread\n")
    columns = ["overall", *FAMILIES]
    counts = {f: int((test.family == f).sum()) for f in FAMILIES}
    print("| method | AUROC overall | " + " | ".join(f"{f} (n={counts[f]})" for f in FAMILIES) + " | seconds |")
    print("|---" * (len(columns) + 2) + "|")
    for name, row in results.items():
        print(f"| {name} | " + " | ".join(f"{row[c]:.4f}" for c in columns) + f" | {seconds[name]:.0f} |")

    # Few-label multi-class: k rows per class from the training file, head on frozen CLAN encoder.
    class_ids = np.unique(train.family, return_inverse=True)[1]
    few = few_labels_per_class(class_ids, np.arange(len(train)), args.labels_per_class, seed=args.seed)
    clan.fit_classifier(x_train[few], train.family[few])
    raw_head = LogisticRegression(max_iter=2000).fit(x_train[few], train.family[few])
    print(f"\nfew-label multi-class ({args.labels_per_class} labelled rows per class, linear head), KDDTest+:\n")
    print("| features | macro recall | " + " | ".join(f"recall {c}" for c in ["normal", *FAMILIES]) + " |")
    print("|---" * 7 + "|")
    for name, predicted in [("frozen CLAN encoder", clan.predict(x_test)), ("encoded input", raw_head.predict(x_test))]:
        recalls = recall_score(test.family, predicted, labels=["normal", *FAMILIES], average=None, zero_division=0)
        print(f"| {name} | {recalls.mean():.4f} | " + " | ".join(f"{r:.4f}" for r in recalls) + " |")
    print(f"\ntotal wall time {time.time() - started:.0f} s")


if __name__ == "__main__":
    main()
