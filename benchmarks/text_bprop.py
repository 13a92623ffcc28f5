"""B-PROP pre-training on SciFact's corpus, then retrieval fine-tuning on its train claims (issue 25), small scale.

    OMP_NUM_THREADS=1 python benchmarks/text_bprop.py --out runs/bprop --seeds 0 1            # dev: the choice
    OMP_NUM_THREADS=1 python benchmarks/text_bprop.py --out runs/bprop --seeds 0 1 --split test   # once, after

Models, all from all-MiniLM-L6-v2:

- base: the model itself; BM25 (``modalities/text/bm25.py``) beside it;
- bprop: ``bprop`` (``modalities/text/methods/bprop.py``) on the SciFact corpus (its 5,183 abstracts, no
  labels), one run per seed;
- fine-tuned: ``mnrl`` (in-batch negatives, the project's text fine-tuning) on the (claim, abstract) rows of
  SciFact's train qrels without the dev carve, from the base;
- bprop + fine-tuned: the same fine-tuning from that seed's B-PROP encoder.

The choice: the fine-tuning learning rate, from ``--lrs``, for each of the two fine-tuned rows separately,
by the mean over the seeds of nDCG@10 on the dev carve of the train claims (268 claims); every seed is
trained at every rate. With ``--split test`` the chosen models (already trained in ``--out``) are scored on the
test claims, once. Retrieval is against one quick-check corpus for both splits: the abstracts relevant to a
dev or a test claim plus random others up to ``--eval-documents`` (figures are higher than on the full
corpus and not comparable with published ones), encoded in bf16 at the encoder's own length (256 tokens).
Results go to ``<out>/results-<split>.json``; trained encoders in ``<out>`` are reused.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np

from contrastkit.core.paths import data_root
from contrastkit.evaluation.retrieval import ndcg_at_k, search
from contrastkit.modalities.text.bm25 import evaluate_bm25
from contrastkit.modalities.text.data import SentenceData
from contrastkit.modalities.text.encoders import TextEncoder
from contrastkit.modalities.text.evaluation import (
    encode_corpus,
    encode_texts,
    evaluate_retrieval,
    ranked_doc_ids,
)
from contrastkit.modalities.text.methods import build_text_method
from contrastkit.modalities.text.mining import beir_training_rows
from contrastkit.modalities.text.pair_data import PairData
from contrastkit.modalities.text.sources import RetrievalSet, read_beir
from contrastkit.modalities.text.tables import TrainingPairs
from contrastkit.modalities.text.train import fit_text


def claim_rows(folder: Path) -> TrainingPairs:
    """(claim, abstract) for every relevant abstract of the train claims outside the dev carve."""
    train, _ = beir_training_rows(folder, "train")
    documents = dict(zip(train.doc_ids, train.documents()))
    anchors, positives = [], []
    for query_id, query in zip(train.query_ids, train.queries):
        for doc in sorted(train.qrels[query_id]):
            anchors.append(query)
            positives.append(documents[doc])
    return TrainingPairs(anchors, positives, [()] * len(anchors), name="scifact train (no dev carve)")


def evaluation_corpus(folder: Path, n_documents: int) -> list[int]:
    """Corpus rows of one quick-check corpus shared by the dev carve and the test claims: every abstract
    relevant to a claim of either, plus random others (seeded) up to ``n_documents``; no label of either
    split is used to score the other, and each model embeds it once."""
    dev, test = read_beir(folder, "dev"), read_beir(folder, "test")
    position = {doc: i for i, doc in enumerate(dev.doc_ids)}
    keep = {position[d] for split in (dev, test) for q in split.query_ids for d in split.qrels[q] if d in position}
    others = np.random.default_rng(0).permutation([i for i in range(len(dev.doc_ids)) if i not in keep])
    return sorted(keep | set(others[: max(0, n_documents - len(keep))].tolist()))


def restricted(retrieval_set: RetrievalSet, rows: list[int]) -> RetrievalSet:
    """``retrieval_set`` with its corpus cut to ``rows`` (queries and qrels kept; qrels outside ignored)."""
    return RetrievalSet(doc_ids=[retrieval_set.doc_ids[i] for i in rows], titles=[retrieval_set.titles[i] for i in rows],
                        texts=[retrieval_set.texts[i] for i in rows], query_ids=retrieval_set.query_ids,
                        queries=retrieval_set.queries, qrels=retrieval_set.qrels)


def pretrain(seed: int, args) -> Path:
    folder = Path(args.out) / f"bprop-seed{seed}"
    if (folder / "encoder").is_dir():
        return folder / "encoder"
    method = build_text_method("bprop", TextEncoder.from_folder("minilm"))
    data = SentenceData.from_file(data_root() / "scifact", context_window=0)
    method.use_training_data(data)
    summary = fit_text(method, data, batch_size=args.pretrain_batch_size, lr=args.pretrain_lr, max_steps=args.pretrain_steps,
                       warmup_steps=max(1, args.pretrain_steps // 10), seed=seed, out_dir=folder, log_every=10,
                       max_length=args.pretrain_length, device="cpu", precision="bf16",
                       extra_summary={"method": "bprop"})
    print(f"bprop seed {seed}: {summary['steps']} steps in {summary['train_seconds']} s", flush=True)
    return folder / "encoder"


def fine_tune(name: str, start: Path | str, lr: float, seed: int, rows: TrainingPairs, args) -> Path:
    folder = Path(args.out) / f"{name}-lr{lr:g}-seed{seed}"
    if (folder / "encoder").is_dir():
        return folder / "encoder"
    method = build_text_method("mnrl", TextEncoder.from_folder(start), document_length=args.document_length)
    summary = fit_text(method, PairData(rows), batch_size=args.batch_size, lr=lr, max_steps=args.finetune_steps,
                       warmup_steps=max(1, args.finetune_steps // 10), seed=seed, out_dir=folder, log_every=10,
                       max_length=args.claim_length, device="cpu", precision="bf16",
                       extra_summary={"method": "mnrl", "start": str(start), "rows": len(rows)})
    print(f"{folder.name}: {summary['steps']} steps in {summary['train_seconds']} s", flush=True)
    return folder / "encoder"


def per_claim_ndcg(model: Path | str, retrieval_set, args) -> np.ndarray:
    """nDCG@10 x 100 of each query (the corpus embeddings come from the cache)."""
    encoder = TextEncoder.from_folder(model)
    corpus = encode_corpus(encoder, retrieval_set, Path(args.out) / "cache", precision="bf16")
    queries = encode_texts(encoder, retrieval_set.queries, 64, "bf16")
    _, indices = search(queries, corpus, k=11, metric="cosine")  # 11: a query's own id is ignored
    rankings = ranked_doc_ids(indices, retrieval_set)
    return np.array([100 * ndcg_at_k({q: rankings[q]}, {q: retrieval_set.qrels[q]}, 10, ignore_identical_ids=True)
                     for q in retrieval_set.query_ids])


def paired_interval(delta: np.ndarray, resamples: int = 2000, seed: int = 0) -> list[float]:
    rng = np.random.default_rng(seed)
    means = delta[rng.integers(0, len(delta), size=(resamples, len(delta)))].mean(axis=1)
    return [round(float(np.percentile(means, 2.5)), 2), round(float(np.percentile(means, 97.5)), 2)]


def mean_sd(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--split", default="dev", choices=("dev", "test"))
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--pretrain-batch-size", type=int, default=8)
    parser.add_argument("--pretrain-steps", type=int, default=60)
    parser.add_argument("--pretrain-lr", type=float, default=2e-5)
    parser.add_argument("--pretrain-length", type=int, default=128, help="tokens of a (word set, passage) pair")
    parser.add_argument("--finetune-steps", type=int, default=40)
    parser.add_argument("--lrs", type=float, nargs="+", default=[2e-5, 5e-5], help="the fine-tuning grid")
    parser.add_argument("--claim-length", type=int, default=64)
    parser.add_argument("--document-length", type=int, default=128)
    parser.add_argument("--eval-documents", type=int, default=1200)
    parser.add_argument("--pretrain-only", action="store_true", help="only the B-PROP runs of --seeds (e.g. in parallel)")
    parser.add_argument("--base-grid-only", action="store_true",
                        help="only the fine-tuning runs from the base, for --lrs and --seeds (e.g. in parallel)")
    parser.add_argument("--encode-only", nargs="+", help="only embed the evaluation corpus with these models")
    parser.add_argument("--bprop-grid-only", action="store_true", help="... or only those from the B-PROP runs")
    args = parser.parse_args()
    if args.pretrain_only:
        for seed in args.seeds:
            pretrain(seed, args)
        return
    if args.encode_only:  # fill the corpus-embedding cache of these models (e.g. in parallel)
        rows = evaluation_corpus(data_root() / "scifact", args.eval_documents)
        for model in args.encode_only:
            encode_corpus(TextEncoder.from_folder(model), restricted(read_beir(data_root() / "scifact", "dev"), rows),
                          Path(args.out) / "cache", precision="bf16")
        return
    if args.base_grid_only or args.bprop_grid_only:  # the fine-tuning runs alone, for --lrs and --seeds
        for seed in args.seeds:
            for lr in args.lrs:
                start = pretrain(seed, args) if args.bprop_grid_only else "minilm"
                fine_tune("bprop-ft" if args.bprop_grid_only else "ft", start, lr, seed,
                          claim_rows(data_root() / "scifact"), args)
        return
    out, scifact, started = Path(args.out), data_root() / "scifact", time.time()
    out.mkdir(parents=True, exist_ok=True)
    corpus_rows = evaluation_corpus(scifact, args.eval_documents)
    dev = restricted(read_beir(scifact, "dev"), corpus_rows)
    rows = claim_rows(scifact)
    starts = {"fine-tuned": {s: "minilm" for s in args.seeds},
              "bprop + fine-tuned": {s: pretrain(s, args) for s in args.seeds}}

    chosen_file = out / "results-dev.json"
    if args.split == "dev":
        # every seed at every rate, so the rate is chosen by the mean over the seeds
        grid = {name: {lr: [round(float(per_claim_ndcg(fine_tune(_slug(name), starts[name][s], lr, s, rows, args),
                                                       dev, args).mean()), 2)
                            for s in args.seeds] for lr in args.lrs} for name in starts}
        chosen = {name: max(by_lr, key=lambda lr: statistics.mean(by_lr[lr])) for name, by_lr in grid.items()}
        results = {"settings": vars(args), "rows": len(rows), "dev_queries": len(dev.query_ids),
                   "dev_documents": len(dev.doc_ids),
                   "grid": {n: {f"{lr:g}": v for lr, v in g.items()} for n, g in grid.items()},
                   "chosen_lr": chosen}
        evaluated = dev
    else:
        if not chosen_file.is_file():
            raise SystemExit(f"{chosen_file} is missing: run the dev split first (the choice).")
        chosen = {n: float(lr) for n, lr in json.loads(chosen_file.read_text())["chosen_lr"].items()}
        evaluated = restricted(read_beir(scifact, "test"), corpus_rows)
        print("scoring the test claims once, with the settings chosen on dev", flush=True)
        results = {"settings": vars(args), "test_queries": len(evaluated.query_ids),
                   "test_documents": len(evaluated.doc_ids), "chosen_lr": chosen}

    base = per_claim_ndcg("minilm", evaluated, args)
    library = 100 * evaluate_retrieval(TextEncoder.from_folder("minilm"), evaluated, cache_dir=out / "cache",
                                       precision="bf16")["ndcg@10"]
    assert abs(base.mean() - library) < 1e-6, "the per-claim scores are the library's metric, claim by claim"
    per_claim = {"base (all-MiniLM-L6-v2)": [base],
                 "bprop (no fine-tuning)": [per_claim_ndcg(starts["bprop + fine-tuned"][s], evaluated, args)
                                            for s in args.seeds]}
    for name in starts:
        per_claim[name] = [per_claim_ndcg(fine_tune(_slug(name), starts[name][s], chosen[name], s, rows, args),
                                          evaluated, args) for s in args.seeds]
    scores = {"BM25": [round(100 * evaluate_bm25(evaluated)["ndcg@10"], 2)],
              **{name: [round(float(v.mean()), 2) for v in values] for name, values in per_claim.items()}}
    # B-PROP's claim, paired claim by claim (each claim's nDCG@10 averaged over the seeds first)
    delta = np.mean(per_claim["bprop + fine-tuned"], axis=0) - np.mean(per_claim["fine-tuned"], axis=0)
    results["paired"] = {"bprop + fine-tuned - fine-tuned": {
        "mean": round(float(delta.mean()), 2), "ci95": paired_interval(delta),
        "up": int((delta > 0).sum()), "down": int((delta < 0).sum())}}
    results["ndcg@10"] = scores
    results["seconds"] = round(time.time() - started)
    (out / f"results-{args.split}.json").write_text(json.dumps(results, indent=2))
    print(format_table(results, args))


def _slug(name: str) -> str:
    return {"fine-tuned": "ft", "bprop + fine-tuned": "bprop-ft"}[name]


def format_table(results: dict, args) -> str:
    split = "dev carve" if args.split == "dev" else "test"
    lines = [f"| model | seeds | fine-tuning lr | SciFact {split} nDCG@10 |", "|---|---|---|---|"]
    for name, values in results["ndcg@10"].items():
        lr = f"{results['chosen_lr'][name]:g}" if name in results["chosen_lr"] else "-"
        lines.append(f"| {name} | {len(values) if len(values) > 1 else '-'} | {lr} | {mean_sd(values)} |")
    for comparison, d in results["paired"].items():
        lines += ["", f"paired over the claims, {comparison}: {d['mean']:+.2f} [95 % CI {d['ci95'][0]:+.2f}, "
                  f"{d['ci95'][1]:+.2f}] (claims up / down: {d['up']} / {d['down']})"]
    if "grid" in results:
        lines += ["", "| fine-tuning lr (dev carve nDCG@10, mean ± sd over seeds) | "
                  + " | ".join(results["grid"]["fine-tuned"]) + " |", "|---|" + "---|" * len(args.lrs)]
        for name, by_lr in results["grid"].items():
            lines.append(f"| {name} | " + " | ".join(mean_sd(v) for v in by_lr.values()) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
