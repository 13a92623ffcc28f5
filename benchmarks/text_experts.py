"""Domain experts (mnrl-moe) against one model per domain and one shared model: Hallee et al. 2024's claim
that N experts on one model reach the efficacy of N single-domain models.

Three domains, each scored in its own metric:
    scifact   claim -> abstract (BEIR SciFact), nDCG@10 x100
    code      docstring summary -> function (CPython code-docstring pairs), MRR x100 (benchmarks/code_search.py's)
    stsb      STS-B pairs scored >= 4 as (anchor, positive) rows; STS Spearman x100

Arms, all from all-MiniLM-L6-v2 with mnrl's loss (in-batch negatives, t = 0.05) and the same rows:
    base      all-MiniLM-L6-v2 as is
    single    one model per domain, trained on that domain's rows only (3 models)
    shared    one model trained on the rows of all domains, batches of one domain each (plain mnrl)
    experts   mnrl-moe: one model with one expert MLP per domain in every layer, the same batches as shared

Every domain gives the same number of training rows (``--steps`` x ``--batch-size``, a seeded draw from its
train split; SciFact has 608 train rows outside its dev carve, so at most 38 x 16), trained once (one epoch): a
single-domain model takes ``--steps`` steps, shared and experts ``3 x --steps``; so each domain's rows get
the same steps in every arm. Choices: the learning rate of each arm from ``--lrs``, by the mean of its dev
scores (texts cut at ``--max-length`` tokens in training and evaluation; SciFact: the 268 claims of the dev
carve of the train queries against 400 documents -- their relevant ones and random others; code: 200 pairs
spread over the valid split; STS-B: 500 pairs spread over sts-dev); then the test split is scored once with
the chosen model (SciFact: the 300 test claims against 1,000 documents, their relevant ones and random
others -- higher than full-corpus figures, comparable only within this table; code: the whole test split,
354 pairs; STS-B: the whole sts-test).

With one learning rate (``--lrs 1e-4``) nothing is chosen and the dev sets are not scored: the test split is
still scored once, with settings fixed before any score was seen (what docs/benchmarks.md reports: the grid
did not fit the shared machine's time).

    OMP_NUM_THREADS=1 python benchmarks/text_experts.py --seed 0 --out runs/text_experts-0.json
    OMP_NUM_THREADS=1 python benchmarks/text_experts.py --seed 1 --no-base --out runs/text_experts-1.json
    OMP_NUM_THREADS=1 python benchmarks/text_experts.py --seed 0 --lrs 1e-4 --out runs/text_experts-0.json  # no choice
    python benchmarks/text_experts.py --table runs/text_experts-0.json runs/text_experts-1.json
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from contrastkit.core.paths import data_root
from contrastkit.modalities.pairs.pairs import read_code_docstring
from contrastkit.modalities.pairs.retrieval import pair_retrieval
from contrastkit.modalities.text.encoders import TextEncoder
from contrastkit.modalities.text.evaluation import evaluate_retrieval, sts_spearman, subsample_retrieval_set
from contrastkit.modalities.text.methods import build_text_method
from contrastkit.modalities.text.mining import beir_training_rows
from contrastkit.modalities.text.pair_data import PairData
from contrastkit.modalities.text.sources import read_beir, read_sts
from contrastkit.modalities.text.tables import TrainingPairs
from contrastkit.modalities.text.train import fit_text

DOMAINS = ("scifact", "code", "stsb")
METRICS = {"scifact": "nDCG@10", "code": "MRR", "stsb": "Spearman"}
ARMS = ("base", "single", "shared", "experts")
STS_POSITIVE = 4.0  # STS-B pairs scored at least this (of 5) are positives


def training_rows(domain: str, rows: int, seed: int) -> tuple[list[str], list[str]]:
    """``rows`` (anchor, positive) pairs drawn from the domain's train split (its dev carve left out)."""
    root = data_root()
    if domain == "scifact":
        data, _ = beir_training_rows(root / "scifact", "train")
        documents = {d: f"{title} {text}".strip() for d, title, text in zip(data.doc_ids, data.titles, data.texts)}
        pairs = [(query, documents[doc]) for q, query in zip(data.query_ids, data.queries) for doc in data.qrels[q]
                 if doc in documents]
    elif domain == "code":
        code = read_code_docstring("train")
        pairs = list(zip(code.first, code.second))
    else:
        sts = read_sts(root / "stsb" / "sts-train.csv")
        pairs = [(a, b) for a, b, s in zip(sts.first, sts.second, sts.scores) if s >= STS_POSITIVE]
    if len(pairs) < rows:
        raise SystemExit(f"{domain} has {len(pairs)} training rows, fewer than {rows}: lower --steps.")
    chosen = random.Random(seed).sample(pairs, rows)
    return [a for a, _ in chosen], [p for _, p in chosen]


def head(pairs, n: int):
    """Every ``len / n``-th pair (an even spread over the file), ``n`` of them."""
    keep = list(range(0, len(pairs.first), max(1, len(pairs.first) // n)))[:n]
    fields = {name: [getattr(pairs, name)[i] for i in keep] for name in ("first", "second")}
    if hasattr(pairs, "scores"):
        return type(pairs)(fields["first"], fields["second"], pairs.scores[keep])
    return type(pairs)(fields["first"], fields["second"], [pairs.ids[i] for i in keep], pairs.first_name,
                       pairs.second_name, pairs.source)


class Scorer:
    """Each domain's metric on its dev or test split (x100), the evaluation sets read once."""

    def __init__(self):
        root = data_root()
        # Dev sets cut down (a loaded 2-core machine); the test sets whole, but SciFact's corpus.
        self.scifact = {"dev": subsample_retrieval_set(read_beir(root / "scifact", "dev"), 10_000, 400, seed=0),
                        "test": subsample_retrieval_set(read_beir(root / "scifact", "test"), 10_000, 1000, seed=0)}
        self.code = {"dev": head(read_code_docstring("valid"), 200), "test": read_code_docstring("test")}
        self.stsb = {"dev": head(read_sts(root / "stsb" / "sts-dev.csv"), 500),
                     "test": read_sts(root / "stsb" / "sts-test.csv")}

    def __call__(self, encoder: TextEncoder, domain: str, split: str) -> float:
        if domain == "scifact":
            return 100 * evaluate_retrieval(encoder, self.scifact[split], k_values=(10,), cache_dir=False)["ndcg@10"]
        if domain == "code":
            pairs = self.code[split]
            result = pair_retrieval(encoder.encode(pairs.first), encoder.encode(pairs.second),
                                    pairs.first, pairs.second)
            return 100 * result["first_to_second"]["mrr"]
        return sts_spearman(encoder, self.stsb[split])


def train(method_name: str, rows: dict[str, tuple[list[str], list[str]]], lr: float, args,
          work: Path) -> torch.nn.Module:
    """A method trained one epoch over ``rows`` (domain -> anchors, positives), batches of one domain."""
    domains = list(rows)
    anchors = [a for d in domains for a in rows[d][0]]
    positives = [p for d in domains for p in rows[d][1]]
    labels = [d for d in domains for _ in rows[d][0]]
    data = PairData(TrainingPairs(anchors, positives, [()] * len(anchors), name="+".join(domains), domains=labels))
    encoder = TextEncoder.from_folder("minilm", max_length=args.max_length)
    if method_name == "mnrl-moe":
        method = build_text_method("mnrl-moe", encoder, domains=domains)
    else:
        method = build_text_method("mnrl", encoder)
        method.batches_by_domain = True  # the same one-domain batches as the experts' run
    steps = len(anchors) // args.batch_size
    out = Path(tempfile.mkdtemp(dir=work))
    fit_text(method, data, batch_size=args.batch_size, lr=lr, max_steps=steps, warmup_steps=max(1, steps // 10),
             seed=args.seed, out_dir=out / "run", log_every=10_000, max_length=args.max_length, device="cpu")
    shutil.rmtree(out, ignore_errors=True)
    return method


def domain_encoders(method, domains: list[str]) -> dict[str, TextEncoder]:
    if method.name == "mnrl-moe":
        return {d: method.encoder.domain_encoder(d).eval() for d in domains}
    return {d: method.encoder.eval() for d in domains}


def run_arm(arm: str, rows, scorer: Scorer, args, work: Path) -> list[dict]:
    """The arm's rows of results: dev scores at every lr, the choice, and the chosen model's test score."""
    groups = [[d] for d in DOMAINS] if arm == "single" else [list(DOMAINS)]
    results = []
    for group in groups:
        tried = []
        for lr in args.lrs:
            started = time.perf_counter()
            method = train("mnrl-moe" if arm == "experts" else "mnrl", {d: rows[d] for d in group}, lr, args, work)
            seconds = time.perf_counter() - started
            encoders = domain_encoders(method, group)
            # One learning rate is no choice: the dev sets are then not scored (time on a loaded machine).
            dev = {d: scorer(encoders[d], d, "dev") for d in group} if len(args.lrs) > 1 else {d: None for d in group}
            tried.append({"lr": lr, "dev": dev, "train_seconds": round(seconds, 1), "encoders": encoders})
            print(f"[seed {args.seed}] {arm} {group} lr={lr}: dev {dev} ({seconds:.0f} s)", flush=True)
        best = max(tried, key=lambda t: statistics.mean(t["dev"].values())) if len(tried) > 1 else tried[0]
        test = {d: scorer(best["encoders"][d], d, "test") for d in group}  # once, after the choice
        print(f"[seed {args.seed}] {arm} {group}: chose lr={best['lr']}, test {test}", flush=True)
        for d in group:
            results.append({"arm": arm, "domain": d, "seed": args.seed, "lr": best["lr"], "test": test[d],
                            "dev": {str(t["lr"]): t["dev"][d] for t in tried},
                            "train_seconds": {str(t["lr"]): t["train_seconds"] for t in tried}})
    return results


def measure(args) -> None:
    torch.manual_seed(args.seed)
    scorer = Scorer()
    rows = {d: training_rows(d, args.steps * args.batch_size, args.seed) for d in DOMAINS}
    results = []
    started = time.perf_counter()
    if args.base:
        base = TextEncoder.from_folder("minilm", max_length=args.max_length).eval()
        for d in DOMAINS:
            results.append({"arm": "base", "domain": d, "seed": None, "lr": None,
                            "dev": {"-": scorer(base, d, "dev") if len(args.lrs) > 1 else None},
                            "test": scorer(base, d, "test")})
    with tempfile.TemporaryDirectory() as work:
        for arm in args.arms:
            results += run_arm(arm, rows, scorer, args, Path(work))
    record = {"command": " ".join(sys.argv), "seed": args.seed, "steps_per_domain": args.steps,
              "batch_size": args.batch_size, "max_length": args.max_length, "lrs": args.lrs,
              "seconds": round(time.perf_counter() - started, 1), "results": results}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(record, indent=2))
    print(table([record]))


def table(records: list[dict]) -> str:
    """Markdown: test score per arm and domain (mean over seeds, each seed's value), the chosen lrs."""
    results = [r for record in records for r in record["results"]]
    lines = ["| arm | " + " | ".join(f"{d} {METRICS[d]}" for d in DOMAINS) + " | mean | lr (per seed) |",
             "|---|" + "---:|" * (len(DOMAINS) + 1) + "---|"]
    for arm in ARMS:
        cells, means, lrs = [], [], []
        for d in DOMAINS:
            found = sorted((r for r in results if r["arm"] == arm and r["domain"] == d),
                           key=lambda r: (r["seed"] is None, r["seed"]))
            if not found:
                cells.append("-")
                continue
            values = [r["test"] for r in found]
            means.append(statistics.mean(values))
            each = " / ".join(f"{v:.2f}" for v in values)
            cells.append(f"{means[-1]:.2f}" + (f" ({each})" if len(values) > 1 else ""))
            lrs += [f"{d}: " + " / ".join(f"{r['lr']:g}" for r in found)] if arm == "single" else \
                [" / ".join(f"{r['lr']:g}" for r in found)] if d == DOMAINS[0] and found[0]["lr"] is not None else []
        if any(c != "-" for c in cells):
            mean = f"{statistics.mean(means):.2f}" if len(means) == len(DOMAINS) else "-"
            lines.append(f"| {arm} | " + " | ".join(cells) + f" | {mean} | {'; '.join(lrs) or '-'} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=20, help="steps per domain (rows per domain: steps x batch)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--lrs", type=lambda s: [float(v) for v in s.split(",")], default=[5e-5, 2e-4])
    parser.add_argument("--arms", type=lambda s: [a for a in s.split(",") if a],
                        default=["single", "shared", "experts"], help="'' with the base: the base row only")
    parser.add_argument("--no-base", dest="base", action="store_false", help="skip the base model's row")
    parser.add_argument("--out", default="runs/text_experts.json")
    parser.add_argument("--table", nargs="+", metavar="JSON", help="print the table of these results files")
    args = parser.parse_args()
    if args.table:
        print(table([json.loads(Path(p).read_text()) for p in args.table]))
    else:
        measure(args)


if __name__ == "__main__":
    main()
