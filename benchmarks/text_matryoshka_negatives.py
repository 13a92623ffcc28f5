"""Matryoshka training and mined hard negatives for text (issue 26): SciFact's dev carve and STS-B dev, then test once.

    python benchmarks/text_matryoshka_negatives.py --out runs/issue26 --seeds 0 1 --steps 50 --batch-size 16 \\
        --max-length 64                                       # train, score the dev carve, apply the choice rule
    python benchmarks/text_matryoshka_negatives.py --out runs/issue26 --seeds 0 1 --steps 50 --batch-size 16 \\
        --max-length 64 --split test                          # score the test claims once, for the chosen models

Four encoders per seed, all from all-MiniLM-L6-v2, trained with the same seed, steps, batch, learning rate and
lengths (the trained ones in ``<out>/seed-<seed>/<name>``):

- base: the model itself, untrained (the same for every seed);
- in-batch: ``mnrl`` on (claim, abstract) rows of SciFact's train qrels, the dev carve left out (and
  the two train claims that repeat a dev claim's text), in-batch negatives only;
- in-batch + MRL: the same with Matryoshka dimensions 384, 256, 128, 64 (weights 1);
- mined: ``mnrl`` on the same rows with one mined negative each (BM25, ranks 4..30, relative margin 0.05,
  the best ranked candidate; rows without one are dropped), in-batch negatives too.

Each is scored at 384, 256, 128 and 64 dimensions (the embedding cut and re-normalised).

``--split dev`` (the default) trains what is missing and scores nDCG@10 on the dev carve of SciFact's train
claims (268 claims; against the full corpus, or with ``--eval-documents N`` against their relevant abstracts
plus random others up to N, a quick-check figure that is higher than on the full corpus) and STS-B dev
Spearman. Paired comparisons get a 95 % bootstrap interval over the claims (2,000 resamples of the per-claim
nDCG@10 difference, averaged over the seeds first), at each dimension. On the full corpus it then applies
:func:`choose_negatives` (the rule was fixed before the second seed's figures were seen) and writes
``<out>/results-dev.json``.

``--split test`` scores SciFact's test claims (300, against the full 5,183-abstract corpus) and STS-B test,
for the encoders already trained (it trains nothing), and only for the base model, in-batch, in-batch + MRL
and, if the dev choice kept it, mined. It reads the choice from ``<out>/results-dev.json`` (same seeds) and
refuses to run twice: ``<out>/results-test.json`` is written once. Trained encoders in ``<out>`` are reused.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from contrastkit.core.errors import ConfigError
from contrastkit.core.paths import data_root
from contrastkit.evaluation.retrieval import ndcg_at_k, search
from contrastkit.modalities.text.encoders import TextEncoder
from contrastkit.modalities.text.evaluation import (
    encode_corpus,
    encode_texts,
    evaluate_retrieval_at_dims,
    ranked_doc_ids,
    sts_spearman_at_dims,
    subsample_retrieval_set,
)
from contrastkit.modalities.text.matryoshka import use_matryoshka
from contrastkit.modalities.text.methods import build_text_method
from contrastkit.modalities.text.mining import beir_training_rows, mine_hard_negatives
from contrastkit.modalities.text.pair_data import PairData
from contrastkit.modalities.text.sources import read_beir, read_sts
from contrastkit.modalities.text.tables import TrainingPairs, write_training_pairs
from contrastkit.modalities.text.train import fit_text

DIMS = [384, 256, 128, 64]
FOLDERS = {"in-batch": "in-batch", "in-batch + MRL": "in-batch-mrl", "mined": "mined"}
COMPARISONS = (("in-batch", "base"), ("in-batch + MRL", "base"), ("in-batch + MRL", "in-batch"),
               ("mined", "in-batch"), ("mined", "base"))
MINING = {"retriever": "bm25", "num_negatives": 1, "skip_top": 3, "max_rank": 30, "relative_margin": 0.05}


def in_batch_rows(folder: Path) -> TrainingPairs:
    """(claim, abstract) for every relevant abstract of the train claims outside the dev carve."""
    train, _ = beir_training_rows(folder, "train")
    position = {doc: i for i, doc in enumerate(train.doc_ids)}
    documents = train.documents()
    anchors, positives = [], []
    for query_id, query in zip(train.query_ids, train.queries):
        for doc in sorted(train.qrels[query_id], key=position.get):
            anchors.append(query)
            positives.append(documents[position[doc]])
    return TrainingPairs(anchors, positives, [()] * len(anchors), name="scifact train (no dev carve)")


def train(name: str, rows: TrainingPairs | None, args, seed: int, matryoshka: bool) -> TextEncoder:
    folder = Path(args.out) / f"seed-{seed}" / FOLDERS[name]
    if (folder / "encoder").is_dir():
        return TextEncoder.from_folder(folder / "encoder")
    if rows is None:  # --split test trains nothing: the test claims are scored for what the dev run chose
        raise ConfigError(f"No trained encoder in '{folder / 'encoder'}'. Train and score the dev carve first "
                          "(the same command with --split dev), then score the test split.")
    method = build_text_method("mnrl", TextEncoder.from_folder("minilm"), document_length=args.max_length)
    if matryoshka:
        use_matryoshka(method, DIMS)
    summary = fit_text(method, PairData(rows), batch_size=args.batch_size, lr=args.lr, max_steps=args.steps,
                       warmup_steps=max(1, args.steps // 10), seed=seed, out_dir=folder, log_every=10,
                       max_length=args.max_length, device="cpu", precision=args.precision,
                       extra_summary={"method": "mnrl", "rows": len(rows), "matryoshka": matryoshka})
    print(f"seed {seed} {name}: {summary['steps']} steps in {summary['train_seconds']} s", flush=True)
    return method.encoder


def per_query_ndcg(encoder: TextEncoder, retrieval_set, cache_dir: Path, precision: str) -> dict[int, np.ndarray]:
    """nDCG@10 of each claim at each dimension (the corpus embeddings come from the cache)."""
    corpus = encode_corpus(encoder, retrieval_set, cache_dir, precision=precision)
    queries = encode_texts(encoder, retrieval_set.queries, 64, precision)
    scores = {}
    for m in DIMS:
        _, indices = search(queries[:, :m], corpus[:, :m], k=11, metric="cosine")
        rankings = ranked_doc_ids(indices, retrieval_set)
        scores[m] = np.array([100 * ndcg_at_k({q: rankings[q]}, {q: retrieval_set.qrels[q]}, 10,
                                              ignore_identical_ids=True) for q in retrieval_set.query_ids])
    return scores


def paired_interval(delta: np.ndarray, resamples: int = 2000, seed: int = 0) -> list[float]:
    rng = np.random.default_rng(seed)
    means = delta[rng.integers(0, len(delta), size=(resamples, len(delta)))].mean(axis=1)
    return [round(float(np.percentile(means, 2.5)), 2), round(float(np.percentile(means, 97.5)), 2)]


def score(encoder: TextEncoder, retrieval_set, sts, args) -> tuple[dict, dict[int, np.ndarray]]:
    cache = Path(args.out) / "cache"
    retrieval = evaluate_retrieval_at_dims(encoder, retrieval_set, DIMS, cache_dir=cache, precision=args.precision)
    per_query = per_query_ndcg(encoder, retrieval_set, cache, args.precision)
    for m in DIMS:  # the per-claim scores are the library's metric, claim by claim
        assert abs(per_query[m].mean() - 100 * retrieval[m]["ndcg@10"]) < 1e-6
    spearman = sts_spearman_at_dims(encoder, sts, DIMS, precision=args.precision)
    return {m: {"ndcg@10": 100 * retrieval[m]["ndcg@10"], "sts": spearman[m]} for m in DIMS}, per_query


def spread(values: list[float]) -> dict:
    return {"mean": float(np.mean(values)), "min": float(np.min(values)), "max": float(np.max(values))}


def paired(per_query: dict[int, dict[str, dict[int, np.ndarray]]], seeds: list[int]) -> dict:
    """Each comparison at each dimension: per seed the mean change; over the seeds the per-claim change
    averaged over the seeds, its mean, bootstrap interval and the claims it moves up / down."""
    names = per_query[seeds[0]]
    out = {}
    for a, b in COMPARISONS:
        if a not in names or b not in names:
            continue
        out[f"{a} - {b}"] = by_dim = {}
        for m in DIMS:
            deltas = [per_query[s][a][m] - per_query[s][b][m] for s in seeds]
            delta = np.mean(deltas, axis=0)
            by_dim[m] = {"mean": round(float(delta.mean()), 2), "ci95": paired_interval(delta),
                         "up": int((delta > 0).sum()), "down": int((delta < 0).sum()),
                         "per_seed": [round(float(d.mean()), 2) for d in deltas]}
    return out


def choose_negatives(summary: dict, paired_results: dict) -> dict:
    """The dev carve's choice between mined and in-batch negatives, fixed before seed 1's figures were seen:
    keep ``mined`` only if, at 384 dimensions on the full corpus, its nDCG@10 averaged over the seeds is above
    in-batch's by more than the seeds' spread (the larger max - min of the two models over the seeds) and the
    paired 95 % interval of the seed-averaged per-claim change is above 0. Otherwise ``in-batch`` (no miner,
    every row kept)."""
    mined, in_batch = summary["mined"][384]["ndcg@10"], summary["in-batch"][384]["ndcg@10"]
    gain = mined["mean"] - in_batch["mean"]
    seed_spread = max(mined["max"] - mined["min"], in_batch["max"] - in_batch["min"])
    interval = paired_results["mined - in-batch"][384]["ci95"]
    keep = gain > seed_spread and interval[0] > 0
    return {"negatives": "mined" if keep else "in-batch", "gain_at_384": round(gain, 2),
            "seed_spread_at_384": round(seed_spread, 2), "ci95_at_384": interval}


def summarise(results: dict, per_query: dict, names: list[str]) -> None:
    """The mean and min-max over the seeds scored so far, and the paired comparisons."""
    seeds = sorted(per_query)
    results["summary"] = {name: {m: {key: spread([results["seeds"][s][name][m][key] for s in seeds])
                                     for key in ("ndcg@10", "sts")} for m in DIMS} for name in names}
    results["paired"] = paired(per_query, seeds)
    results["settings"]["seeds_scored"] = seeds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="folder for the runs, the mined file and the results")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=2e-5)
    parser.add_argument("--max-length", type=int, default=64, help="tokens of claims and abstracts in training")
    parser.add_argument("--seeds", "--seed", type=int, nargs="+", default=[0], help="training seeds")
    parser.add_argument("--precision", default="bf16", choices=("fp32", "bf16"))
    parser.add_argument("--split", default="dev", choices=("dev", "test"),
                        help="dev: train and score the dev carve; test: score the test claims once")
    parser.add_argument("--eval-documents", type=int, help="score against this many documents (dev quick check)")
    args = parser.parse_args()
    out, seeds = Path(args.out), sorted(set(args.seeds))
    out.mkdir(parents=True, exist_ok=True)
    scifact, started = data_root() / "scifact", time.time()
    if args.split == "test":
        if args.eval_documents:
            raise ConfigError("--split test scores the full corpus; leave out --eval-documents.")
        results_file = out / "results-test.json"
        if results_file.exists():
            raise ConfigError(f"The test split was already scored ('{results_file}'): it is scored once.")
        dev_file = out / "results-dev.json"
        if not dev_file.is_file():
            raise ConfigError(f"No dev results in '{dev_file}': score the dev carve (--split dev) first.")
        dev_results = json.loads(dev_file.read_text())
        if dev_results["settings"]["seeds"] != seeds:
            raise ConfigError(f"The dev choice was made over seeds {dev_results['settings']['seeds']}, "
                              f"not {seeds}: pass the same --seeds.")
        choice = dev_results["choice"]
        names = ["base", "in-batch", "in-batch + MRL"] + (["mined"] if choice["negatives"] == "mined" else [])
        rows = mined_rows = None
        retrieval_set = read_beir(scifact, "test")
        sts = read_sts(data_root() / "stsb" / "sts-test.csv")
    else:
        suffix = f"-{args.eval_documents}docs" if args.eval_documents else ""
        results_file = out / f"results-dev{suffix}.json"
        names = ["base", "in-batch", "in-batch + MRL", "mined"]
        rows = in_batch_rows(scifact)
        mined_file = out / "mined.jsonl"
        if not mined_file.is_file():
            mined = mine_hard_negatives(scifact, mined_file, split="train", **MINING)
            print(f"mined: {json.dumps(mined.report())}", flush=True)
        mined_rows = PairData.from_file(mined_file).pairs
        write_training_pairs(rows, out / "in_batch.jsonl")  # what the in-batch runs train on, for the record
        retrieval_set = read_beir(scifact, "dev")
        if args.eval_documents:
            retrieval_set = subsample_retrieval_set(retrieval_set, len(retrieval_set.query_ids),
                                                    args.eval_documents, seed=0)
        sts = read_sts(data_root() / "stsb" / "sts-dev.csv")

    settings = {**vars(args), "seeds": seeds, "mining": MINING, "queries": len(retrieval_set.query_ids),
                "documents": len(retrieval_set.doc_ids), "sts_pairs": len(sts.scores)}
    if rows is not None:
        settings.update(rows=len(rows), mined_rows=len(mined_rows))
    results = {"settings": settings, "seeds": {}}
    per_query: dict[int, dict[str, dict[int, np.ndarray]]] = {}
    base_scores = score(TextEncoder.from_folder("minilm"), retrieval_set, sts, args)
    print("scored base", flush=True)
    for seed in seeds:  # train a seed's encoders, then score them, so a stopped run keeps whole seeds
        encoders = {"in-batch": lambda: train("in-batch", rows, args, seed, matryoshka=False),
                    "in-batch + MRL": lambda: train("in-batch + MRL", rows, args, seed, matryoshka=True),
                    "mined": lambda: train("mined", mined_rows, args, seed, matryoshka=False)}
        trained = {name: encoders[name]() for name in names if name != "base"}
        results["seeds"][seed], per_query[seed] = {"base": base_scores[0]}, {"base": base_scores[1]}
        for name, encoder in trained.items():
            results["seeds"][seed][name], per_query[seed][name] = score(encoder, retrieval_set, sts, args)
            print(f"scored seed {seed} {name}", flush=True)
        summarise(results, per_query, names)
        print(format_tables(results), flush=True)  # the seeds so far, in the log
    summarise(results, per_query, names)
    if args.split == "dev" and not args.eval_documents:
        results["choice"] = choose_negatives(results["summary"], results["paired"])
    results["seconds"] = round(time.time() - started)
    results_file.write_text(json.dumps(results, indent=2))
    print(format_tables(results))


def format_tables(results: dict) -> str:
    split = results["settings"]["split"]
    seeds = results["settings"]["seeds_scored"]
    retrieval_title = "SciFact dev carve nDCG@10" if split == "dev" else "SciFact test nDCG@10"
    lines = [f"seeds {', '.join(map(str, seeds))}: the mean over the seeds (min-max)"]
    for key, title in (("ndcg@10", retrieval_title), ("sts", f"STS-B {split} Spearman")):
        lines += [f"\n{title}", "| model | " + " | ".join(str(m) for m in DIMS) + " |",
                  "|---|" + "---:|" * len(DIMS)]
        for name, scores in results["summary"].items():
            cells = [f"{s['mean']:.2f}" + (f" ({s['min']:.2f}-{s['max']:.2f})" if s["max"] > s["min"] else "")
                     for s in (scores[m][key] for m in DIMS)]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["\nnDCG@10 change, paired over the claims (per-claim change averaged over the seeds): "
              "mean [95 % CI] (claims up / down); per seed",
              "| comparison | " + " | ".join(str(m) for m in DIMS) + " |", "|---|" + "---:|" * len(DIMS)]
    for comparison, by_dim in results["paired"].items():
        cells = [f"{d['mean']:+.2f} [{d['ci95'][0]:+.2f}, {d['ci95'][1]:+.2f}] ({d['up']}/{d['down']}); "
                 + " / ".join(f"{x:+.2f}" for x in d["per_seed"]) for d in (by_dim[m] for m in DIMS)]
        lines.append(f"| {comparison} | " + " | ".join(cells) + " |")
    if "choice" in results:
        lines.append(f"\nchoice: {json.dumps(results['choice'])}")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
