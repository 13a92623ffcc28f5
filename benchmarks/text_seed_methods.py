"""Two seed methods of issue 25 on all-MiniLM-L6-v2: Distilled Sentence Embedding and DefSent+.

    OMP_NUM_THREADS=1 python benchmarks/text_seed_methods.py --seeds 0 1            # development splits
    OMP_NUM_THREADS=1 python benchmarks/text_seed_methods.py --seeds 0 1 --split test  # once, settings fixed
    OMP_NUM_THREADS=1 python benchmarks/text_seed_methods.py --only base simcse simcse+defsent-plus  # some rows

Rows, each scored on STS-B (Spearman x100 of the cosine; the teacher: of its pair score) and on MRPC
(AP x100 of the score; accuracy and F1 at their best thresholds on the scored pairs, as MTEB does):

- ``base``: all-MiniLM-L6-v2 as shipped;
- ``teacher``: a MiniLM cross-encoder (:mod:`contrastkit.modalities.text.cross_encoder`) trained on STS-B
  train, 240 steps of 16 pairs (two thirds of an epoch), lr 2e-5;
- ``dse``: the student, ``contrastkit fit --method dse`` from the base on the STS-B train pairs scored by
  that seed's teacher (the gold scores unread), 240 steps of 16 pairs, lr 2e-5;
- ``defsent-plus``: ``contrastkit fit --method defsent-plus`` from the base on the definitions of 2,000
  random WordNet entries (seed 0 sample), 200 steps of 16 rows, lr 2e-5, entries rebuilt every 50 steps;
  also the isotropy (partition-function ratio of Mu & Viswanath, and the mean pairwise cosine) before and
  after, of the STS-B sentences' embeddings and of the 2,000 entries' embeddings (means of their
  definitions' embeddings, before the method's centring);
- ``simcse``: ``contrastkit fit --method simcse`` (unsupervised, dropout as the only augmentation) from the
  base on WikiText-2 sentences (``wikitext2/sentences_valid_test.txt``: unlabelled, neither STS-B nor MRPC),
  200 steps of 32 sentences, lr 3e-5 (the paper's unsupervised BERT-base rate), temperature 0.05;
- ``simcse+defsent-plus``: DefSent+ with the ``defsent-plus`` row's settings, started from that seed's
  ``simcse`` encoder instead of the base (DefSent+ "on top of SimCSE"); with the ``simcse`` row as its
  "before", its isotropy columns are the before/after of DefSent+ on that starting point.

Development splits: STS-B dev, and MRPC's dev carve (the third of the train pairs of
benchmarks/text_tasks/mrpc.yaml, which neither the teacher nor the student ever trains on). ``--split
test`` scores STS-B test and MRPC test with the same settings. The settings were fixed before any
score was seen (no choice was made on these figures), and sized for one loaded CPU core (a fraction of an
epoch, not the papers' recipes). Runs go to ``--work`` (reused when rerun).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from contrastkit.core.paths import data_root  # noqa: E402

TEACHER = {"steps": 240, "batch_size": 16, "lr": 2e-5}
DSE = {"steps": 240, "batch_size": 16, "lr": 2e-5}
DEFSENT = {"steps": 200, "batch_size": 16, "lr": 2e-5, "entries": 2000, "rebuild_every": 50}
SIMCSE = {"steps": 200, "batch_size": 32, "lr": 3e-5, "temperature": 0.05}
ROWS = ("base", "teacher", "dse", "defsent-plus", "simcse", "simcse+defsent-plus")


def simcse_sentences() -> Path:
    """Unlabelled sentences for SimCSE: WikiText-2's validation and test articles, one sentence a line."""
    return data_root() / "wikitext2" / "sentences_valid_test.txt"


def definition_rows(work: Path) -> Path:
    """The (definition, entry) rows of the DefSent+ rows (2,000 random WordNet entries, seed 0 sample)."""
    from contrastkit.modalities.text.dictionary import read_wordnet_entries, sample_entries, write_definition_rows

    rows = work / f"wordnet-{DEFSENT['entries']}.tsv"
    if not rows.is_file():
        rows.parent.mkdir(parents=True, exist_ok=True)
        write_definition_rows(sample_entries(read_wordnet_entries(), DEFSENT["entries"], seed=0), rows)
    return rows


def sts_pairs(split: str):
    from contrastkit.modalities.text.sources import read_sts

    return read_sts(data_root() / "stsb" / f"sts-{split}.csv")


def mrpc_pairs(split: str):
    from contrastkit.modalities.text.task_data import read_pair_classification_task
    from contrastkit.modalities.text.task_files import read_task_file

    return read_pair_classification_task(read_task_file(ROOT / "benchmarks" / "text_tasks" / "mrpc.yaml"), split)


def mrpc_metrics(scores, labels) -> dict:
    from contrastkit.modalities.text.task_metrics import pair_classification_metrics

    m = pair_classification_metrics(np.asarray(scores, dtype=np.float64), labels)
    return {"mrpc_ap": 100 * m["ap"], "mrpc_accuracy": 100 * m["accuracy"], "mrpc_f1": 100 * m["f1"]}


def score_encoder(folder, split: str) -> dict:
    """STS-B Spearman, MRPC AP/acc/F1 and the isotropy of the STS-B sentences, for a bi-encoder."""
    import torch

    from contrastkit.evaluation.diagnostics import isotropy
    from contrastkit.evaluation.partition_isotropy import partition_isotropy
    from contrastkit.modalities.text.encoders import load_text_encoder

    encoder = load_text_encoder(folder)
    sts, mrpc = sts_pairs(split), mrpc_pairs(split)
    texts = list(dict.fromkeys([*sts.first, *sts.second, *mrpc.first, *mrpc.second]))
    row = {t: i for i, t in enumerate(texts)}
    u = torch.nn.functional.normalize(encoder.encode(texts), dim=1)

    def cosines(first, second):
        return (u[[row[t] for t in first]] * u[[row[t] for t in second]]).sum(1).numpy()

    sts_sentences = u[[row[t] for t in dict.fromkeys([*sts.first, *sts.second])]]
    return {"sts_spearman": 100 * float(spearmanr(cosines(sts.first, sts.second), sts.scores).statistic),
            **mrpc_metrics(cosines(mrpc.first, mrpc.second), mrpc.labels),
            "sts_partition_isotropy": partition_isotropy(sts_sentences),
            "sts_mean_cosine": isotropy(sts_sentences)}


def entry_isotropy(folder, rows: Path) -> dict:
    """The isotropy of the dictionary's entry embeddings (each entry the mean of its definitions' embeddings,
    before defsent-plus centres them): partition-function ratio and mean pairwise cosine."""
    from contrastkit.evaluation.diagnostics import isotropy
    from contrastkit.evaluation.partition_isotropy import partition_isotropy
    from contrastkit.modalities.text.encoders import load_text_encoder
    from contrastkit.modalities.text.methods.defsent_plus import entry_embeddings
    from contrastkit.modalities.text.pair_data import PairData

    pairs = PairData.from_file(rows).pairs
    definitions = list(dict.fromkeys(pairs.anchors))
    index = {d: i for i, d in enumerate(definitions)}
    owners: dict[str, list[int]] = {}
    for definition, entry in zip(pairs.anchors, pairs.positives):
        owners.setdefault(entry, []).append(index[definition])
    embedded = load_text_encoder(folder).encode(definitions)
    entries = torch_normalize(entry_embeddings(embedded, list(owners.values())))
    return {"entry_partition_isotropy": partition_isotropy(entries), "entry_mean_cosine": isotropy(entries)}


def torch_normalize(x):
    import torch

    return torch.nn.functional.normalize(x, dim=1)


def score_teacher(folder, split: str) -> dict:
    from contrastkit.modalities.text.cross_encoder import CrossEncoder

    teacher = CrossEncoder.load(folder)
    sts, mrpc = sts_pairs(split), mrpc_pairs(split)
    sts_scores = teacher.score(sts.first, sts.second, batch_size=32).numpy()
    mrpc_scores = teacher.score(mrpc.first, mrpc.second, batch_size=32).numpy()
    return {"sts_spearman": 100 * float(spearmanr(sts_scores, sts.scores).statistic),
            **mrpc_metrics(mrpc_scores, mrpc.labels)}


def fit(method: str, data: Path, out: Path, seed: int, steps: int, batch_size: int, lr: float, options: list[str],
        backbone: str | Path = "minilm"):
    from contrastkit.modalities.text import cli as text_cli

    parser = argparse.ArgumentParser()
    text_cli.add_arguments(parser)
    args = parser.parse_args(["--method", method, "--backbone", str(backbone), "--data", str(data), "--out", str(out),
                              "--batch-size", str(batch_size), "--max-steps", str(steps), "--lr", str(lr),
                              "--max-length", "64", "--seed", str(seed), "--device", "cpu", "--log-every", "50",
                              *[token for option in options for token in ("--option", option)]])
    text_cli.run(args)


def cached(path: Path, compute):
    if path.is_file():
        return json.loads(path.read_text())
    started = time.time()
    result = compute()
    result["seconds"] = round(time.time() - started, 1)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2))
    return result


def run_seed(seed: int, split: str, work: Path, only: set[str]) -> dict[str, dict]:
    from contrastkit.modalities.text.cross_encoder import CrossEncoder, train_cross_encoder

    results = {}
    teacher_dir = work / f"teacher-seed{seed}"
    if only & {"teacher", "dse"}:
        if not (teacher_dir / "score_head.safetensors").is_file():
            train = sts_pairs("train")
            model = CrossEncoder.from_backbone("minilm", max_length=128, seed=seed)
            started = time.time()
            train_cross_encoder(model, train.first, train.second, train.scores, TEACHER["steps"],
                                TEACHER["batch_size"], TEACHER["lr"], seed=seed)
            model.save(teacher_dir)
            (teacher_dir / "train_seconds.txt").write_text(f"{time.time() - started:.1f}\n")
        if "teacher" in only:
            results["teacher"] = cached(work / f"teacher-seed{seed}-{split}.json",
                                        lambda: score_teacher(teacher_dir, split))
    if "dse" in only:
        run = work / f"dse-seed{seed}"
        if not (run / "encoder").is_dir():
            fit("dse", data_root() / "stsb" / "sts-train.csv", run, seed, DSE["steps"], DSE["batch_size"], DSE["lr"],
                [f"teacher={teacher_dir}", f"score_cache={work / f'teacher-seed{seed}-scores.jsonl'}"])
        results["dse"] = cached(work / f"dse-seed{seed}-{split}.json", lambda: score_encoder(run / "encoder", split))
    if "defsent-plus" in only:
        rows = definition_rows(work)
        run = work / f"defsent-plus-seed{seed}"
        if not (run / "encoder").is_dir():
            fit("defsent-plus", rows, run, seed, DEFSENT["steps"], DEFSENT["batch_size"], DEFSENT["lr"],
                [f"rebuild_every={DEFSENT['rebuild_every']}"])
        results["defsent-plus"] = {**cached(work / f"defsent-plus-seed{seed}-{split}.json",
                                            lambda: score_encoder(run / "encoder", split)),
                                   **cached(work / f"defsent-plus-seed{seed}-entries.json",
                                            lambda: entry_isotropy(run / "encoder", rows))}
    simcse_run = work / f"simcse-seed{seed}"
    if only & {"simcse", "simcse+defsent-plus"} and not (simcse_run / "encoder").is_dir():
        fit("simcse", simcse_sentences(), simcse_run, seed, SIMCSE["steps"], SIMCSE["batch_size"], SIMCSE["lr"],
            [f"temperature={SIMCSE['temperature']}"])
    # DefSent+ on top of SimCSE: the defsent-plus row's settings, started from this seed's SimCSE encoder.
    for name, run, started_from in (("simcse", simcse_run, None),
                                    ("simcse+defsent-plus", work / f"simcse-defsent-plus-seed{seed}", simcse_run)):
        if name not in only:
            continue
        rows = definition_rows(work)
        if started_from is not None and not (run / "encoder").is_dir():
            fit("defsent-plus", rows, run, seed, DEFSENT["steps"], DEFSENT["batch_size"], DEFSENT["lr"],
                [f"rebuild_every={DEFSENT['rebuild_every']}"], backbone=started_from / "encoder")
        results[name] = {**cached(work / f"{run.name}-{split}.json", lambda: score_encoder(run / "encoder", split)),
                         **cached(work / f"{run.name}-entries.json", lambda: entry_isotropy(run / "encoder", rows))}
    return results


def mean_sd(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{np.mean(values):.2f} ± {np.std(values, ddof=1):.2f}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--split", choices=("dev", "test"), default="dev")
    parser.add_argument("--only", nargs="+", choices=ROWS, default=list(ROWS), metavar="ROW",
                        help="the rows to compute and print: " + ", ".join(ROWS) + " (default: all)")
    parser.add_argument("--work", default="runs/text_seed_methods")
    args = parser.parse_args(argv)
    if args.split == "test":
        print("scoring the test splits: the settings were fixed before any score was seen", file=sys.stderr)
    work = Path(args.work)
    only = set(args.only)
    table: dict[str, list[dict]] = {}
    if "base" in only:
        rows = (definition_rows(work) if only & {"defsent-plus", "simcse", "simcse+defsent-plus"}
                else work / f"wordnet-{DEFSENT['entries']}.tsv")
        base = cached(work / f"base-{args.split}.json", lambda: score_encoder("minilm", args.split))
        if rows.is_file():
            base = {**base, **cached(work / "base-entries.json", lambda: entry_isotropy("minilm", rows))}
        table["base"] = [base]
    for seed in args.seeds:
        for name, result in run_seed(seed, args.split, work, only).items():
            table.setdefault(name, []).append(result)
    metrics = ("sts_spearman", "mrpc_ap", "mrpc_accuracy", "mrpc_f1", "sts_partition_isotropy", "sts_mean_cosine",
               "entry_partition_isotropy", "entry_mean_cosine")
    print(f"split: {args.split} (STS-B {args.split}; MRPC {'dev carve of train' if args.split == 'dev' else 'test'})")
    print("| model | seeds | STS-B Spearman | MRPC AP | MRPC acc | MRPC F1 | STS isotropy (Z ratio) | STS mean cos "
          "| entries isotropy (Z ratio) | entries mean cos |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, results in table.items():
        cells = [mean_sd([r[m] for r in results]) if all(m in r and not math.isnan(r[m]) for r in results) else "-"
                 for m in metrics]
        print(f"| {name} | {len(results)} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
