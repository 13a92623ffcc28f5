"""Forecasting: MSE alone vs MSE + contrastive (Yan et al. 2023), same budget, same split.

Data: the longest genuine forecasting-type series bundled inside aeon's wheel and read from its
package files (nothing downloads): KDD-TSAD 135 "UCR_Anomaly_InternalBleeding16", the heart
rate of a patient with internal bleeding, 7,501 steps (aeon's `load_kdd_tsad_135(split="test")`
file, which holds the whole record; its "train" file is the first 1,200 steps of it). aeon's
dedicated forecasting sets are too short for a Transformer with a held-out tail (airline 144,
lynx 114, PBS 204, solar 289 steps). The record contains one annotated 12-step anomaly
(t = 4187..4198), inside the training part of the split below.

Protocol: chronological split 60 / 20 / 20 %, standardised with training statistics only;
input window L, horizon H; both variants train the same model for the same number of steps
with the same batch size. ``contrastive_weight`` (lambda) is chosen on the validation part (mean
validation MSE over the selection seeds); test MSE / MAE (standardised scale) on the held-out
tail are mean +- std over the test seeds.

    python benchmarks/bench_forecasting.py                 # defaults below, 1 torch thread
    python benchmarks/bench_forecasting.py --steps 300 --test-seeds 0 1   # quicker
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import numpy as np
import torch

from contrastkit.recipes.forecasting import (
    ForecasterConfig,
    evaluate_forecaster,
    fit_forecaster,
    prepare_forecast_data,
)


def load_internal_bleeding() -> np.ndarray:
    from aeon.datasets import load_kdd_tsad_135

    values, _ = load_kdd_tsad_135(split="test")
    return np.asarray(values, dtype=np.float64)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--input-length", type=int, default=96)
    parser.add_argument("--horizon", type=int, default=24)
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument(
        "--weights", type=float, nargs="+", default=[0.0, 0.01, 0.03, 0.1, 0.3, 1.0]
    )
    parser.add_argument("--selection-seeds", type=int, nargs="+", default=[100, 101])
    parser.add_argument("--test-seeds", type=int, nargs="+", default=[0, 1, 2, 3])
    args = parser.parse_args()
    torch.set_num_threads(1)

    series = load_internal_bleeding()
    data = prepare_forecast_data(series, args.input_length, args.horizon)
    base = ForecasterConfig(steps=args.steps)
    print(
        f"series: aeon KDD-TSAD 135 InternalBleeding16, {len(series)} steps; split {data.split}; "
        f"windows train/val/test = {len(data.train[0])}/{len(data.validation[0])}/{len(data.test[0])}; "
        f"L={args.input_length} H={args.horizon}; model d={base.d_model} layers={base.layers} "
        f"patch={base.patch_length}; {base.steps} steps x batch {base.batch_size}"
    )

    started = time.perf_counter()
    print(
        f"\nlambda selection on the validation part (mean over seeds {args.selection_seeds})"
    )
    print(f"{'lambda':>8} {'val MSE':>9} {'val MAE':>9}")
    validation = {}
    for weight in args.weights:
        scores = [
            evaluate_forecaster(
                fit_forecaster(
                    data,
                    dataclasses.replace(base, contrastive_weight=weight, seed=seed),
                ),
                *data.validation,
            )
            for seed in args.selection_seeds
        ]
        validation[weight] = float(np.mean([s["mse"] for s in scores]))
        print(
            f"{weight:>8g} {validation[weight]:>9.4f} {np.mean([s['mae'] for s in scores]):>9.4f}"
        )
    positive = {w: v for w, v in validation.items() if w > 0}
    chosen = min(positive, key=positive.get)
    print(f"chosen lambda (best validation MSE among lambda > 0): {chosen:g}")

    print(f"\nheld-out tail, seeds {args.test_seeds} (mean +- std, standardised scale)")
    print(f"{'variant':<28} {'test MSE':>17} {'test MAE':>17}")
    for label, weight in (("MSE only", 0.0), (f"MSE + {chosen:g} * InfoNCE", chosen)):
        scores = [
            evaluate_forecaster(
                fit_forecaster(
                    data,
                    dataclasses.replace(base, contrastive_weight=weight, seed=seed),
                ),
                *data.test,
            )
            for seed in args.test_seeds
        ]
        mse, mae = (
            np.array([s["mse"] for s in scores]),
            np.array([s["mae"] for s in scores]),
        )
        print(
            f"{label:<28} {mse.mean():>8.4f} +- {mse.std():.4f} {mae.mean():>8.4f} +- {mae.std():.4f}"
        )
    last_value = data.test[0][:, -1:].expand_as(data.test[1])
    naive = last_value - data.test[1]
    print(
        f"{'naive (repeat last value)':<28} {naive.pow(2).mean():>8.4f} {'':>9} {naive.abs().mean():>8.4f}"
    )
    print(f"\ntotal time {time.perf_counter() - started:.0f} s (1 torch thread)")


if __name__ == "__main__":
    main()
