"""SimSiam and BYOL with one pass per view against one pass over both views, on image sets the
ranking protocol did not use.

Both papers' code applies the network to each view on its own, so BatchNorm normalises each view's
batch separately (LightlySSL does the same). On the ranking protocol (CIFAR-10, docs/benchmarks.md)
that lifted contrastkit's SimSiam by 1.6-2.1 kNN points over one pass of both views. This re-checks
the choice on other data: scikit-learn's digits (1,797 gray 8x8 images, at the collapse tests'
settings) and a class-balanced subset of the MNIST test set (``--mnist-per-class`` images of each
digit, at bench_methods.py's width).

Each run is ``contrastkit.modalities.image.training.run.fit`` (the path of ``contrastkit fit``) with
``extra: {METHOD: {separate_view_passes: true | false}}`` and otherwise the defaults of ``fit``;
kNN top-1 (k = 200, weighted) on fit's held-out 20 % (stratified, split seed 0, never trained on).
The two settings alternate order from seed to seed. The untrained encoder's kNN is printed as the
floor. Nothing here was tuned: the settings were fixed before the runs.

Usage (the table in docs/benchmarks.md)::

    python benchmarks/view_passes.py --methods simsiam byol --sets digits mnist --seeds 0 1 2 --threads 1
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import sys
import tempfile
from pathlib import Path

import torch

from contrastkit.modalities.image.config import FitConfig
from contrastkit.modalities.image.training.run import fit

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_methods import balanced_subset  # noqa: E402

SETS = {  # name: fit settings (MNIST's data, a class-balanced subset, is filled in by main)
    "digits": dict(data="digits", epochs=15, batch_size=64, width=0.25),
    "mnist": dict(epochs=10, batch_size=128, width=0.125),
}
METHODS = ("simsiam", "byol")
PASSES = {"separate": True, "joint": False}


def run(method: str, settings: dict, passes: str, seed: int, out: Path) -> dict:
    config = FitConfig(method=method, holdout=0.2, report=False, probe_every=0, seed=seed, out=str(out),
                       extra={method: {"separate_view_passes": PASSES[passes]}}, **settings)
    return fit(config)


def spread(values: list[float]) -> str:
    return f"{100 * statistics.median(values):.1f} ({100 * min(values):.1f}–{100 * max(values):.1f})"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--sets", nargs="+", default=list(SETS), choices=list(SETS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--mnist-per-class", type=int, default=300)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--out-dir", default=None, help="where the runs go (default: a temporary directory)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    out_dir = Path(args.out_dir or tempfile.mkdtemp(prefix="view-passes-"))
    out_dir.mkdir(parents=True, exist_ok=True)

    rows = []
    for name in args.sets:
        settings = dict(SETS[name])
        if name == "mnist":
            settings["data"] = str(balanced_subset("mnist-test", args.mnist_per_class, 0, out_dir))
        for method in args.methods:
            knn = {passes: [] for passes in PASSES}
            untrained, collapsed = [], []
            for i, seed in enumerate(args.seeds):
                for passes in (list(PASSES) if i % 2 == 0 else list(reversed(PASSES))):
                    summary = run(method, settings, passes, seed, out_dir / f"{name}-{method}-{passes}-seed{seed}")
                    knn[passes].append(summary["knn_top1"])
                    untrained.append(summary["baselines"]["untrained"]["knn_top1"])
                    if summary["collapse"]["collapsed"]:
                        collapsed.append(f"{passes} seed {seed}")
                    print(f"{name} {method} {passes} seed {seed}: kNN {summary['knn_top1']:.4f}", file=sys.stderr,
                          flush=True)
            per_seed = ", ".join(f"{100 * (s - j):+.1f}" for s, j in zip(knn["separate"], knn["joint"], strict=True))
            rows.append((name, method, spread(knn["separate"]), spread(knn["joint"]), per_seed, spread(untrained),
                         ", ".join(collapsed) or "none"))

    print(f"\nkNN top-1 (%) on fit's held-out 20 %, median (min–max) over seeds {args.seeds}; "
          f"MNIST: {args.mnist_per_class} test images per class.\n")
    print("| set | method | one pass per view | one pass over both | separate − joint, per seed | untrained | "
          "collapse flagged |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    print(f"\nCommand: python benchmarks/view_passes.py {shlex.join(argv if argv is not None else sys.argv[1:])}")


if __name__ == "__main__":
    main()
