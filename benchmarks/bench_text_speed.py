"""Training speed of the text methods from all-MiniLM-L6-v2 on SciFact's sentences (steps/s).

    OMP_NUM_THREADS=2 python benchmarks/bench_text_speed.py --steps 12 > notes/text_speed.log

Each configuration trains with :func:`contrastkit.modalities.text.train.fit_text` (the real loop: tokenise,
views, forward, backward, AdamW) for ``--steps`` steps at batch 64; the rate is measured between
the first logged step (``--steps // 3``) and the last, so loading and the first, slower steps are
left out. Used to budget the 30-minute domain-adaptation runs.
"""

from __future__ import annotations

import argparse
import csv
import tempfile
from pathlib import Path

from contrastkit.core.paths import data_root
from contrastkit.modalities.text.data import SentenceData
from contrastkit.modalities.text.encoders import TextEncoder
from contrastkit.modalities.text.methods import build_text_method
from contrastkit.modalities.text.train import fit_text

CONFIGURATIONS = [
    ("simcse", {}, 64),
    ("simcse", {}, 128),
    ("contriever", {"use_context": True}, 64),
    ("contriever", {"use_context": True}, 128),
    ("contriever", {"use_context": True, "queue_size": 4096}, 64),
]


def measure(method_name: str, options: dict, max_length: int, data: SentenceData, steps: int,
            batch_size: int) -> tuple[float, float]:
    """(steps/s, mean training tokens per view) between the first logged step and the last."""
    encoder = TextEncoder.from_folder("minilm")
    method = build_text_method(method_name, encoder, **options)
    log_every = max(1, steps // 3)
    with tempfile.TemporaryDirectory() as folder:
        fit_text(method, data, batch_size=batch_size, lr=3e-5, max_steps=steps, warmup_steps=1, seed=0,
                 out_dir=Path(folder) / "run", log_every=log_every, max_length=max_length)
        with open(Path(folder) / "run" / "metrics.csv") as handle:
            rows = list(csv.DictReader(handle))
    first, last = rows[0], rows[-1]
    rate = (int(last["step"]) - int(first["step"])) / (float(last["elapsed_s"]) - float(first["elapsed_s"]))
    tokens = sum(float(r.get("train/view_tokens") or "nan") for r in rows) / len(rows)
    return rate, tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args()
    data = SentenceData.from_file(data_root() / "scifact" / "sentences.txt.gz")
    print("| method | options | max_length | steps/s | s/step | view tokens | steps in 30 min |")
    print("|---|---|---|---|---|---|---|")
    for method_name, options, max_length in CONFIGURATIONS:
        rate, tokens = measure(method_name, options, max_length, data, args.steps, args.batch_size)
        print(f"| {method_name} | {options or '-'} | {max_length} | {rate:.3f} | {1 / rate:.2f} | "
              f"{tokens:.1f} | {int(rate * 1800)} |", flush=True)


if __name__ == "__main__":
    main()
