"""The DirectPred paper's claims at small scale (Tian, Chen & Ganguli, ICML 2021, Table 1-2, Fig. 3).

Same data, backbone, epochs and EMA target (BYOL) for every variant; only the predictor changes:

    directpred     W_p set from the correlation F of its input (eigendecomposition), not trained
    directcopy     W_p = F / ||F||_2 + eps I (Wang et al. 2021)
    linear         a trained linear predictor
    mlp            BYOL's trained two-layer predictor (Linear-BN-ReLU-Linear)
    no-predictor   BYOL without predictor (the paper's Table 5: collapses)
    no-stop-grad   SimSiam with a trained two-layer predictor and no stop-gradient (the paper's and
                   SimSiam's collapse ablation)

The paper's claims: DirectPred is comparable to the two-layer predictor and better than the linear
one; a trained linear predictor's eigenvectors align with F's (eigen-alignment -> 1); removing the
stop-gradient collapses. Reported per variant: kNN top-1 on the held-out 20 % (k = 200, weighted),
the collapse verdict and per-dimension std of the normalised projections (healthy: about
1/sqrt(d)), and for linear predictors the eigen-alignment and off-diagonal mass of W_p in F's
eigenbasis at the end of training (:mod:`contrastkit.evaluation.predictor_diagnostics`).
The data is a class-balanced subset (see ``bench_methods.py``).

Usage::

    python benchmarks/bench_directpred.py --data cifar10-test --per-class 200 --epochs 2 --width 0.125
"""

from __future__ import annotations

import argparse
import math
import shlex
import sys
import tempfile
from pathlib import Path

import torch

from contrastkit.modalities.image.config import FitConfig
from contrastkit.evaluation.predictor_diagnostics import predictor_report
from contrastkit.modalities.image.training.restore import load_method
from contrastkit.modalities.image.training.run import fit

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_methods import balanced_subset  # noqa: E402

VARIANTS = {
    "directpred": ("directpred", {}),
    "directcopy": ("directpred", {"directpred": {"directcopy": True}}),
    "linear": ("byol", {"byol": {"predictor": "linear"}}),
    "mlp": ("byol", {"byol": {"predictor": "mlp"}}),
    "no-predictor": ("byol", {"byol": {"predictor": False}}),
    "no-stop-grad": ("simsiam", {"simsiam": {"stop_gradient": False}}),
}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="cifar10-test")
    parser.add_argument("--per-class", type=int, default=200)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--width", type=float, default=0.125)
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    parser.add_argument("--out-dir", default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    out_dir = Path(args.out_dir or tempfile.mkdtemp(prefix="bench-directpred-"))
    out_dir.mkdir(parents=True, exist_ok=True)
    data = balanced_subset(args.data, args.per_class, args.seed, out_dir)

    rows = []
    for name in args.variants:
        method, extra = VARIANTS[name]
        run_dir = out_dir / name
        summary = fit(FitConfig(method=method, data=str(data), epochs=args.epochs, batch_size=args.batch_size,
                                width=args.width, backbone=args.backbone, seed=args.seed, out=str(run_dir),
                                report=False, probe_every=0, extra=extra))
        trained, _, _ = load_method(run_dir / "checkpoints" / "last.ckpt")
        matrices = trained.predictor_matrices() if hasattr(trained, "predictor_matrices") else None
        alignment = predictor_report(*matrices) if matrices is not None else None
        collapse = summary["collapse"]
        rows.append((name, summary["knn_top1"], collapse["collapsed"], collapse["per_dimension_std"],
                     collapse["per_dimension_std_reference"], alignment))
        print(f"{name}: kNN {summary['knn_top1']:.3f}", file=sys.stderr)

    print(f"\nData: {args.data}, {args.per_class} images per class (80 % pretraining, 20 % held out), "
          f"{args.epochs} epochs, batch {args.batch_size}, {args.backbone} width {args.width}.\n")
    print("| predictor | kNN top-1 (%) | collapse flagged | per-dim std (healthy ~ 1/sqrt(d)) "
          "| eigen-alignment (weighted) | off-diagonal mass |")
    print("|---|---|---|---|---|---|")
    for name, knn, collapsed, std, reference, alignment in rows:
        align = (f"{alignment['eigen_alignment']:.3f} ({alignment['eigen_alignment_weighted']:.3f})"
                 if alignment else "-")
        mass = f"{alignment['offdiagonal_mass']:.3f}" if alignment else "-"
        print(f"| {name} | {100 * knn:.1f} | {collapsed} | {std:.4f} ({reference:.4f}) | {align} | {mass} |")
    dim = 128
    print(f"\n(A random W_p has off-diagonal mass about sqrt(1 - 1/d) = {math.sqrt(1 - 1 / dim):.3f} at d = {dim}.)")
    print(f"Command: python benchmarks/bench_directpred.py {shlex.join(argv if argv is not None else sys.argv[1:])}")


if __name__ == "__main__":
    main()
