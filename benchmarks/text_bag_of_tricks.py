"""The GLUE bag of tricks of issue 25 on MRPC: RTD, then RTD + sentence contrast, vs fine-tuning the base.

    OMP_NUM_THREADS=1 python benchmarks/text_bag_of_tricks.py --seeds 0 1               # development carve only
    OMP_NUM_THREADS=1 python benchmarks/text_bag_of_tricks.py --seeds 0 1 --split test  # + MRPC test, once

Two rows per seed, both fine-tuned the same way on MRPC (a MiniLM cross-encoder over the pair, BCE on the
0/1 label, :mod:`contrastkit.modalities.text.pair_classifier`; one epoch of the training part, batch 16,
lr 2e-5, pairs up to 128 tokens, the head drawn from the seed):

- ``base``: all-MiniLM-L6-v2 as shipped, fine-tuned directly;
- ``rtd-contrastive``: first ``contrastkit fit --modality text --method rtd-contrastive`` from the base on the
  unique sentences of the training part (no label read), ``--pretrain-steps`` steps of 16 sentences at 64
  tokens, lr 5e-5, 10 % warm-up, the first half replaced-token detection alone and the second half with the
  sentence contrast (``phase_one_steps`` = half); then its ``encoder/`` fine-tuned as the base is.

Splits: MRPC's train file (4,076 pairs) minus a stratified development carve of 20 % (815 pairs, seed 0, the
same for every seed; MRPC's GLUE dev ids are not in the data folder) is the training part of both
pretraining and fine-tuning. The one choice made is each model's decision threshold on p(paraphrase),
chosen for accuracy on the development carve (beside it: the carve's scores at 0.5). With ``--split test``
the test file (1,725 pairs) is scored once per model, after that choice, at the chosen threshold.
Settings were fixed before any score was seen and sized for one loaded CPU core (a short run: 150
pretraining steps, one fine-tuning epoch), not the report's recipe. Runs go to ``--work`` (reused when rerun), so
seeds may run as separate processes on the same ``--work`` and a last call with every seed prints the table.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from contrastkit.core.paths import data_root  # noqa: E402

DEV_SHARE, DEV_SEED = 0.2, 0
PRETRAIN = {"batch_size": 16, "lr": 5e-5, "max_length": 64}
FINE_TUNE = {"epochs": 1.0, "batch_size": 16, "lr": 2e-5, "max_length": 128}


def mrpc_parts(limit: int | None):
    from contrastkit.evaluation.fine_tune import carve_development
    from contrastkit.modalities.text.pair_classifier import MRPC_TEST, MRPC_TRAIN, read_mrpc

    train = read_mrpc(data_root() / "mrpc" / MRPC_TRAIN)
    test = read_mrpc(data_root() / "mrpc" / MRPC_TEST)
    rest, dev = carve_development(train.labels, np.arange(len(train)), DEV_SHARE, seed=DEV_SEED)
    training, development = train.subset(sorted(rest)), train.subset(sorted(dev))
    if limit:  # a smoke run of the pipeline, not a figure
        training, development, test = (p.subset(range(min(limit, len(p)))) for p in (training, development, test))
    return training, development, test


def pretrain(training, out: Path, seed: int, steps: int) -> Path:
    """``contrastkit fit --modality text --method rtd-contrastive`` on the training part's sentences."""
    from contrastkit.cli import main as contrastkit_main

    if (out / "encoder" / "config.json").is_file():
        return out / "encoder"
    sentences = out.parent / "mrpc-training-sentences.txt"
    if not sentences.is_file():
        out.parent.mkdir(parents=True, exist_ok=True)
        unique = dict.fromkeys(s.strip() for s in [*training.first, *training.second])
        partial = sentences.with_name(f"{sentences.name}.{seed}.partial")  # seeds may start side by side
        partial.write_text("".join(f"{s}\n" for s in unique if s), encoding="utf-8")
        partial.replace(sentences)
    status = contrastkit_main([
        "fit", "--modality", "text", "--method", "rtd-contrastive", "--backbone", "minilm", "--data", str(sentences),
        "--out", str(out), "--batch-size", str(PRETRAIN["batch_size"]), "--max-steps", str(steps),
        "--lr", str(PRETRAIN["lr"]), "--warmup-steps", str(max(1, steps // 10)),
        "--max-length", str(PRETRAIN["max_length"]), "--seed", str(seed), "--device", "cpu",
        "--log-every", "25", "--option", f"phase_one_steps={steps // 2}"])
    if status != 0:
        raise SystemExit(f"pretraining failed with status {status}")
    return out / "encoder"


def fine_tune_and_score(backbone, training, development, test, seed: int, score_test: bool) -> dict:
    from contrastkit.modalities.text.pair_classifier import binary_metrics, choose_threshold, fine_tune_pair_classifier

    started = time.time()
    model = fine_tune_pair_classifier(backbone, training, seed=seed, **FINE_TUNE)
    dev_p = model.score(development.first, development.second, batch_size=32).numpy()
    threshold = choose_threshold(dev_p, development.labels)  # the choice, on the development carve only
    result = {"threshold": threshold,
              "dev_at_0.5": binary_metrics(dev_p, development.labels, 0.5),
              "dev_at_threshold": binary_metrics(dev_p, development.labels, threshold)}
    if score_test:  # once, after the choice
        test_p = model.score(test.first, test.second, batch_size=32).numpy()
        result["test_at_threshold"] = binary_metrics(test_p, test.labels, threshold)
    result["seconds"] = round(time.time() - started, 1)
    return result


def cached(path: Path, compute) -> dict:
    if path.is_file():
        return json.loads(path.read_text())
    result = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2))
    return result


def mean_sd(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{np.mean(values):.2f} ± {np.std(values, ddof=1):.2f}"


def table(results: dict[str, list[dict]], score_test: bool) -> str:
    columns = ["dev acc @0.5", "dev F1 @0.5", "threshold", "dev acc", "dev F1"]
    columns += ["test acc", "test F1"] if score_test else []
    lines = ["| model | seeds | " + " | ".join(columns) + " |", "|---|---|" + "---|" * len(columns)]
    for name, runs in results.items():
        cells = [mean_sd([100 * r["dev_at_0.5"]["accuracy"] for r in runs]),
                 mean_sd([100 * r["dev_at_0.5"]["f1"] for r in runs]),
                 mean_sd([r["threshold"] for r in runs]),
                 mean_sd([100 * r["dev_at_threshold"]["accuracy"] for r in runs]),
                 mean_sd([100 * r["dev_at_threshold"]["f1"] for r in runs])]
        if score_test:
            cells += [mean_sd([100 * r["test_at_threshold"]["accuracy"] for r in runs]),
                      mean_sd([100 * r["test_at_threshold"]["f1"] for r in runs])]
        lines.append(f"| {name} | {len(runs)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--split", choices=("dev", "test"), default="dev",
                        help="test: also score MRPC test, once per model, after the choice on the dev carve")
    parser.add_argument("--pretrain-steps", type=int, default=150)
    parser.add_argument("--limit", type=int, default=None, help="pairs per part (a smoke run, not a figure)")
    parser.add_argument("--work", default="runs/text_bag_of_tricks")
    args = parser.parse_args(argv)
    work = Path(args.work)
    training, development, test = mrpc_parts(args.limit)
    print(f"MRPC: {len(training)} training pairs, {len(development)} development pairs, {len(test)} test pairs")
    score_test = args.split == "test"
    suffix = "test" if score_test else "dev"
    results: dict[str, list[dict]] = {"base": [], "rtd-contrastive": []}
    for seed in args.seeds:
        started = time.time()
        encoder = pretrain(training, work / f"rtd-contrastive-seed{seed}", seed, args.pretrain_steps)
        print(f"seed {seed}: pretrained in {time.time() - started:.0f} s", flush=True)
        for name, backbone in (("base", "minilm"), ("rtd-contrastive", str(encoder))):
            result = cached(work / f"{name}-seed{seed}-{suffix}.json", lambda: fine_tune_and_score(
                backbone, training, development, test, seed, score_test))
            print(f"seed {seed} {name}: {json.dumps(result)}", flush=True)
            results[name].append(result)
    print()
    print(table(results, score_test))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
