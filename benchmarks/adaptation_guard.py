"""Domain adaptation that keeps general quality (issue 31): hybrid-distill's term residual on SciFact,
SciFact development nDCG@10 against the general guard's loss, for settings that restrict the residual.

For each seed, one residual is trained with the README's recipe (388 steps of 256 corpus sentences,
lr 3e-3, 10 warm-up steps, 64 tokens, bf16; optionally with an L2 pull on its own sentences, ``--l2``,
an L2 pull on general reference sentences (WikiText-2's), ``--reference-l2``, or restricted to the
domain's tokens during training, ``--train-ratio``), then restricted afterwards without retraining
(:meth:`TermResidual.restrict`):

- ``alpha``: the residual scaled by alpha (mixing the base embedding with the adapted one);
- ``cap``: its norm capped at c;
- ``ratio``: only the tokens over-represented in SciFact's abstracts against WikiText-2 by that ratio
  (:func:`~contrastkit.modalities.text.term_residual.over_represented_tokens`);
- ``min m tokens``: the length ramp, a text of n < m distinct tokens keeps n/m of its residual;
- ``gate q``: the corpus gate at quantile q (``fit_corpus_gate`` of hybrid-distill, from SciFact's documents
  and WikiText-2's sentences): the residual in proportion to how close a text's base embedding is to the
  documents' mean direction.

Each setting is scored on SciFact's development claims (the fixed third of the train claims,
``read_beir(..., "dev")``; queries with the residual, documents with the base model) and on the
general guard's **dev** splits (:mod:`contrastkit.modalities.text.general_guard`). The choice reads dev
only: among the settings that lose at most 1 point (``--margin M``: 1 - M) on every guard set for every
seed, the highest mean development gain (ties: the smaller max, then mean, loss). ``--test`` then scores
the chosen setting, once, on SciFact's test claims and on the guard's test splits (STS-B test among them),
and the unrestricted residual beside it for reference -- only if the chosen setting gains at least 3
points on dev for every seed. ``--check`` adds the WordNet sets' third, unread sample (the guard's
``check`` split) for the chosen setting.

    python benchmarks/adaptation_guard.py --seeds 0 1 [--l2 0.5] [--train-ratio 8] [--reference-l2 1 4]
        [--margin 0.3] [--test [--check]]

The corpus sentences' pooled states are computed once (bf16, 64 tokens) into ``--out``, and shared by
every training run (they are what the method's own cache holds); each row is appended to
``--out/results.jsonl`` and not recomputed by a later call, so seeds can run in separate processes
(``--seeds 0`` beside ``--seeds 1``) and a last call with every seed prints the tables. Prints
Markdown tables.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from contrastkit.core.paths import data_root
from contrastkit.modalities.text.data import SentenceData
from contrastkit.modalities.text.encoders import TextEncoder
from contrastkit.modalities.text.evaluation import DOCUMENT_SEPARATOR, autocast, encode_corpus, evaluate_retrieval
from contrastkit.modalities.text.general_guard import CHECK_SETS, FrozenBaseCache, guard_loss, measure_guard
from contrastkit.modalities.text.methods import build_text_method
from contrastkit.modalities.text.methods.hybrid_distill import domain_tokens, fit_corpus_gate
from contrastkit.modalities.text.sources import read_beir
from contrastkit.modalities.text.train import fit_text

RECIPE = {"batch_size": 256, "lr": 3e-3, "warmup_steps": 10, "max_steps": 388, "max_length": 64,
          "weight_decay": 0.01, "precision": "bf16"}
ALPHAS = (1.0, 0.75, 0.5, 0.35, 0.25)
CAPS = (0.3, 0.2, 0.1)
RATIOS = (2.0, 8.0, 16.0, 32.0)
# The length ramp's m: the table's training sentences almost never have so few distinct tokens (0.4 % of
# SciFact's sentences have 7 or fewer; half of the guard's WordNet lemmas have 1 or 2).
RAMPS = (4, 8)
GATES = (0.05, 0.1, 0.2)  # the corpus gate's quantiles (fit_corpus_gate)
MAX_GUARD_LOSS = 1.0  # points, on every set (the bar)
MIN_GAIN = 3.0  # SciFact development nDCG@10 points, for every seed (the bar)
Training = tuple[float, float, float]  # residual_l2, restrict_tokens, reference_l2 (0: off)


def training_name(training: Training) -> float | str:
    """A training's name in the results and tables: ``MU`` (residual_l2 alone, a float as earlier rows
    record it), else ``"MU, ratio R"`` / ``"MU, reference NU"``."""
    l2, ratio, reference_l2 = training
    if not ratio and not reference_l2:
        return l2
    return (f"{l2:g}" + (f", ratio {ratio:g}" if ratio else "")
            + (f", reference {reference_l2:g}" if reference_l2 else ""))


def pooled_sentences(encoder: TextEncoder, texts: list[str], path: Path) -> dict:
    """``{(64, text): pooled}``: the method's cache of the base model's pooled states, computed once."""
    if not path.is_file():
        order = sorted(dict.fromkeys(texts), key=len, reverse=True)
        rows = []
        with torch.inference_mode(), autocast(RECIPE["precision"]):
            for start in range(0, len(order), 128):
                rows.append(encoder.pooled(encoder.tokenize(order[start:start + 128], RECIPE["max_length"])).float())
                print(f"pooled {start + 128}/{len(order)}", file=sys.stderr, flush=True)
        torch.save({"texts": order, "pooled": torch.cat(rows)}, path)
    saved = torch.load(path)
    return {(RECIPE["max_length"], t): row for t, row in zip(saved["texts"], saved["pooled"], strict=True)}


def train(seed: int, training: Training, out: Path, sentences: SentenceData, pooled: dict,
          options: dict | None = None) -> TextEncoder:
    """The run folder's trained encoder, trained now if the folder has none (``options``: more hybrid-distill
    options, named in the folder)."""
    l2, ratio, reference_l2 = training
    folder = out / (f"hd-l2-{l2:g}" + (f"-ratio-{ratio:g}" if ratio else "")
                    + (f"-reference-l2-{reference_l2:g}" if reference_l2 else "")
                    + "".join(f"-{name}-{value:g}" for name, value in (options or {}).items()) + f"-seed{seed}")
    if not (folder / "encoder").is_dir():
        encoder = TextEncoder.from_folder("minilm")
        method = build_text_method("hybrid-distill", encoder, corpus=str(data_root() / "scifact"),
                                   corpus_precision="fp32", residual_l2=l2, restrict_tokens=ratio,
                                   reference_l2=reference_l2, **(options or {}))
        method.pooled_cache = dict(pooled)  # the base's states of every sentence: no Transformer pass
        fit_text(method, sentences, batch_size=RECIPE["batch_size"], lr=RECIPE["lr"], max_steps=RECIPE["max_steps"],
                 max_minutes=None, warmup_steps=RECIPE["warmup_steps"], weight_decay=RECIPE["weight_decay"],
                 seed=seed, out_dir=folder, log_every=50, max_length=RECIPE["max_length"],
                 precision=RECIPE["precision"],
                 extra_summary={"benchmark": "adaptation_guard", "residual_l2": l2, "restrict_tokens": ratio,
                                "reference_l2": reference_l2, **(options or {})})
    return TextEncoder.from_folder(folder / "encoder")


def ramp_and_gate_settings(gates: dict[float, tuple]) -> list[tuple[str, dict]]:
    """The length ramp (``min_tokens``) and the corpus gate, alone and with the scale or the cap, swept on
    every training."""
    rows = []
    for m in RAMPS:
        rows += [(f"min {m} tokens", {"min_tokens": m}),
                 (f"min {m} tokens + alpha 0.75", {"min_tokens": m, "scale": 0.75})]
    rows += [("alpha 0.6", {"scale": 0.6}), ("min 8 tokens + alpha 0.6", {"min_tokens": 8, "scale": 0.6}),
             ("min 8 tokens + cap 0.3", {"min_tokens": 8, "max_norm": 0.3})]
    for q, gate in gates.items():
        rows += [(f"gate {q:g}", {"gate": gate}), (f"gate {q:g} + min 8 tokens", {"gate": gate, "min_tokens": 8}),
                 (f"gate {q:g} + alpha 0.75", {"gate": gate, "scale": 0.75})]
    return rows


def settings(ratios_tokens: dict[float, list[int]], gates: dict[float, tuple],
             full: bool = True) -> list[tuple[str, dict]]:
    """The restrictions applied after training (``full``: all; else the few swept on retrained residuals)."""
    if not full:
        return [(f"alpha {a:g}", {"scale": a}) for a in ALPHAS[:3]] + [
            ("cap 0.3", {"max_norm": 0.3}), ("ratio 8", {"allowed": ratios_tokens[8.0]}),
            ("ratio 8 + alpha 0.75", {"allowed": ratios_tokens[8.0], "scale": 0.75})] + ramp_and_gate_settings(gates)
    rows = [(f"alpha {a:g}", {"scale": a}) for a in ALPHAS] + ramp_and_gate_settings(gates)
    rows += [(f"cap {c:g}", {"max_norm": c}) for c in CAPS]
    rows += [(f"ratio {r:g}", {"allowed": ratios_tokens[r]}) for r in RATIOS]
    rows += [(f"ratio {r:g} + alpha 0.5", {"allowed": ratios_tokens[r], "scale": 0.5}) for r in (2.0, 8.0)]
    rows += [("ratio 8 + alpha 0.75", {"allowed": ratios_tokens[8.0], "scale": 0.75}),
             ("ratio 8 + cap 0.3", {"allowed": ratios_tokens[8.0], "max_norm": 0.3}),
             ("ratio 16 + cap 0.3", {"allowed": ratios_tokens[16.0], "max_norm": 0.3})]
    return rows


def training_settings(ratios_tokens: dict[float, list[int]], gates: dict[float, tuple],
                      training: Training) -> list[tuple[str, dict]]:
    """The restrictions swept on one training: all on the plain recipe, the few on the others (no token
    restriction on a residual restricted to the domain's tokens in training: it has one)."""
    rows = settings(ratios_tokens, gates, full=training == (0.0, 0.0, 0.0))
    return [(name, rule) for name, rule in rows if not (training[1] and "allowed" in rule)]


def row_key(row: dict) -> tuple:
    """A result row's key: (split, seed, training name, setting)."""
    return row["split"], row["seed"], row["l2"], row["setting"]


def read_results(out: Path) -> dict[tuple, dict]:
    """The rows of ``out/results.jsonl`` by :func:`row_key` (a later row of the same key wins)."""
    results_file = out / "results.jsonl"
    if not results_file.is_file():
        return {}
    return {row_key(row): row for row in map(json.loads, results_file.read_text().splitlines())}


def restrict(residual, restriction: dict, trained_allowed) -> None:
    """Apply one setting's restrictions to a trained residual; a token restriction learnt in training
    (``trained_allowed``) stays unless the setting has its own."""
    residual.allowed = trained_allowed
    residual.restrict(scale=restriction.get("scale", 1.0), max_norm=restriction.get("max_norm"),
                      allowed=restriction.get("allowed", False), min_tokens=restriction.get("min_tokens"),
                      gate=restriction.get("gate"))


def score(model, base: TextEncoder, retrieval_set, guard_split: str, cache: FrozenBaseCache) -> dict:
    wrapped = cache.wrap(model)
    retrieval = evaluate_retrieval(wrapped, retrieval_set, k_values=(10,), document_encoder=base, precision="fp32")
    return {"ndcg@10": 100.0 * retrieval["ndcg@10"], "guard": measure_guard(model, guard_split, cache=cache)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--l2", type=float, nargs="*", default=[], help="residual_l2 values to train too")
    parser.add_argument("--train-ratio", type=float, nargs="*", default=[],
                        help="restrict_tokens values to train with too")
    parser.add_argument("--reference-l2", type=float, nargs="*", default=[],
                        help="reference_l2 values (the pull on general sentences) to train with too")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--out", default="runs/adaptation-guard")
    parser.add_argument("--margin", type=float, default=0.0,
                        help="choose among settings that lose at most 1 - MARGIN points on every dev guard set")
    parser.add_argument("--test", action="store_true", help="score the chosen setting once on the test splits")
    parser.add_argument("--check", action="store_true",
                        help="with --test: the chosen setting on the WordNet sets' unread 'check' sample too")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results_file = out / "results.jsonl"
    done = read_results(out)

    def record(row: dict) -> dict:
        done[row_key(row)] = row
        with results_file.open("a") as handle:
            handle.write(json.dumps(row) + "\n")
        return row

    base = TextEncoder.from_folder("minilm").eval()
    cache = FrozenBaseCache()
    cache_file = out / "guard-pooled.pt"  # the guard texts' pooled states, kept between calls
    if cache_file.is_file():
        cache.pooled.update(torch.load(cache_file))
    scifact = data_root() / "scifact"
    sentences = SentenceData.from_file(scifact / "sentences.txt.gz")
    pooled = pooled_sentences(base, sentences.texts, out / "sentences-pooled.pt")
    corpus_documents = read_beir(scifact, "dev").documents(DOCUMENT_SEPARATOR)
    tokens = {r: domain_tokens(base, corpus_documents, r) for r in RATIOS}
    # The corpus gates: SciFact's documents (base model, fp32, the evaluation's cached embeddings) against
    # WikiText-2's sentences; nothing of the guard or of the claims is read.
    documents = torch.from_numpy(encode_corpus(base, read_beir(scifact, "dev"), None, precision="fp32"))
    gates = {q: fit_corpus_gate(base, documents, q) for q in GATES}
    dev = read_beir(scifact, "dev")

    def measured(split, seed, l2, name, model, retrieval_set, guard_split):
        key = (split, seed, l2, name)
        if key not in done:
            print(f"scoring {key}", file=sys.stderr, flush=True)
            record({"split": split, "seed": seed, "l2": l2, "setting": name,
                    **score(model, base, retrieval_set, guard_split, cache)})
        return done[key]

    for seed in args.seeds:
        measured("dev", seed, None, "base", base, dev, "dev")
    torch.save(cache.pooled, cache_file)  # a process started beside this one reuses it
    trained = {}
    # A training is named in the results by training_name: the plain recipe and each option alone beside
    # it (not their product: each training costs minutes).
    plain = (0.0, 0.0, 0.0)
    trainings = list(dict.fromkeys([plain] + [(l2, 0.0, 0.0) for l2 in args.l2]
                                   + [(0.0, r, 0.0) for r in args.train_ratio]
                                   + [(0.0, 0.0, nu) for nu in args.reference_l2]))
    for training in trainings:
        for seed in args.seeds:
            encoder = trained[(training_name(training), seed)] = train(seed, training, out, sentences, pooled)
            residual = encoder.term_residual
            trained_allowed = residual.allowed  # a restriction learnt in training stays under the others
            for name, restriction in training_settings(tokens, gates, training):
                restrict(residual, restriction, trained_allowed)
                measured("dev", seed, training_name(training), name, encoder, dev, "dev")
            restrict(residual, {}, trained_allowed)

    # The table: one row per (training, setting), dev only; the choice reads nothing else.
    table = []
    for training in trainings:
        l2 = training_name(training)
        for name, _ in training_settings(tokens, gates, training):
            gains, means, worst = [], [], []
            for seed in args.seeds:
                row, reference = done[("dev", seed, l2, name)], done[("dev", seed, None, "base")]
                loss = guard_loss(reference["guard"], row["guard"])
                gains.append(row["ndcg@10"] - reference["ndcg@10"])
                means.append(loss["mean"])
                worst.append((loss["max"], loss["worst"]))
            max_loss, worst_set = max(worst)
            table.append({"l2": l2, "setting": name, "ndcg": np.mean([done[("dev", s, l2, name)]["ndcg@10"]
                                                                      for s in args.seeds]),
                          "gain": float(np.mean(gains)), "gain_min": float(min(gains)),
                          "mean_loss": float(np.mean(means)),
                          "max_loss": max_loss, "worst": worst_set})
    base_ndcg = np.mean([done[("dev", s, None, "base")]["ndcg@10"] for s in args.seeds])
    print(f"SciFact development claims (268, carved from train), base nDCG@10 {base_ndcg:.2f}; guard dev splits; "
          f"seeds {', '.join(map(str, args.seeds))} (mean; 'min gain' and 'max loss' over seeds)\n")
    print("| training: residual_l2 (, restrict_tokens or reference_l2) | after training | dev nDCG@10 | gain | "
          "min gain | guard mean loss | guard max loss (set) |")
    print("|---:|---|---:|---:|---:|---:|---|")
    for row in table:
        print(f"| {row['l2']} | {row['setting']} | {row['ndcg']:.2f} | {row['gain']:+.2f} | {row['gain_min']:+.2f} | "
              f"{row['mean_loss']:.2f} | {row['max_loss']:.2f} ({row['worst']}) |")
    torch.save(cache.pooled, cache_file)
    bar = MAX_GUARD_LOSS - args.margin
    keeping = [row for row in table if row["max_loss"] <= bar]
    if not keeping:
        print(f"\nNo setting loses at most {bar:g} point on every dev guard set for every seed.")
        return
    # Ties in gain (a restriction that leaves SciFact's claims alone, such as the length ramp) go to the
    # smaller guard loss.
    chosen = max(keeping, key=lambda row: (round(row["gain"], 6), -row["max_loss"], -row["mean_loss"]))
    print(f"\nChosen on dev (every set's loss at most {bar:g} for every seed): residual_l2 {chosen['l2']}, "
          f"{chosen['setting']} (gain {chosen['gain']:+.2f}, min over seeds {chosen['gain_min']:+.2f}; "
          f"max guard loss {chosen['max_loss']:.2f}).")
    if not args.test:
        return
    if chosen["gain_min"] < MIN_GAIN:
        # A test reading spent on a setting that cannot meet the bar on dev teaches nothing the dev table
        # does not, and makes the next reading less fresh.
        print(f"Not scoring the test splits: the chosen setting gains less than {MIN_GAIN:g} on dev for some seed.")
        return
    print("scoring the test split: choose settings on dev first", file=sys.stderr)
    test = read_beir(scifact, "test")
    restriction = dict(settings(tokens, gates))[chosen["setting"]]
    print("\n| seed | model | SciFact test nDCG@10 | " + " | ".join(
        f"{n} loss" for n in ("stsb", "mrpc", "wordnet-supersenses", "code-docstring", "wordnet-definitions",
                              "coco-captions")) + " | mean loss |")
    print("|---:|---|---:|" + "---:|" * 7)
    for seed in args.seeds:
        reference = measured("test", seed, None, "base", base, test, "test")
        print(f"| {seed} | base | {reference['ndcg@10']:.2f} |" + " |" * 7)
        encoder = trained[(chosen["l2"], seed)]
        trained_allowed = encoder.term_residual.allowed  # every setting was undone after the dev sweep
        for name, setting in (("unrestricted", {}), (chosen["setting"], restriction)):
            restrict(encoder.term_residual, setting, trained_allowed)
            row = measured("test", seed, chosen["l2"], name, encoder, test, "test")
            loss = guard_loss(reference["guard"], row["guard"])
            print(f"| {seed} | l2 {chosen['l2']}, {name} | {row['ndcg@10']:.2f} | " + " | ".join(
                f"{loss[n]:+.2f}" for n in ("stsb", "mrpc", "wordnet-supersenses", "code-docstring",
                                            "wordnet-definitions", "coco-captions")) + f" | {loss['mean']:+.2f} |")
        restrict(encoder.term_residual, {}, trained_allowed)
    torch.save(cache.pooled, cache_file)
    if not args.check:
        return
    # The re-check on WordNet synsets no choice or test reading has seen (general_guard's "check" sample).
    print("\n| seed | model | " + " | ".join(f"{n} loss (check sample)" for n in CHECK_SETS) + " |")
    print("|---:|---|" + "---:|" * len(CHECK_SETS))
    for seed in args.seeds:
        key = ("check", seed, None, "base")
        if key not in done:
            record({"split": "check", "seed": seed, "l2": None, "setting": "base",
                    "guard": measure_guard(base, "check", CHECK_SETS, cache=cache)})
        encoder = trained[(chosen["l2"], seed)]
        trained_allowed = encoder.term_residual.allowed
        for name, setting in (("unrestricted", {}), (chosen["setting"], restriction)):
            restrict(encoder.term_residual, setting, trained_allowed)
            if ("check", seed, chosen["l2"], name) not in done:
                record({"split": "check", "seed": seed, "l2": chosen["l2"], "setting": name,
                        "guard": measure_guard(encoder, "check", CHECK_SETS, cache=cache)})
            loss = guard_loss(done[key]["guard"], done[("check", seed, chosen["l2"], name)]["guard"])
            print(f"| {seed} | l2 {chosen['l2']}, {name} | "
                  + " | ".join(f"{loss[n]:+.2f}" for n in CHECK_SETS) + " |")
    torch.save(cache.pooled, cache_file)


if __name__ == "__main__":
    main()
