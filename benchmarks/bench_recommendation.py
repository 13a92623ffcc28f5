"""Two-tower retrieval with and without the item-tower SSL term (Yao et al. 2021) on SYNTHETIC data.

No recommendation data set is on disk and nothing may download, so this benchmark generates a
synthetic but statistically shaped long-tail interaction log (printed as SYNTHETIC in the output):

* items: features (item id, category 20, subcategory 100 nested in the category, creator 300 each
  working in one category, decade 8); popularity Zipf with exponent ``--zipf`` over a random
  order of items;
* users: sparse Dirichlet preferences over subcategories (through categories) and decades;
* interactions: ``P(i | u) ∝ popularity(i) * pref_u(subcategory(i)) * pref_u(decade(i))``, drawn
  without replacement (Gumbel top-k), ``--per-user`` per user; one per user is held out for
  validation (choice of ``ssl_weight``), one for test.

Query tower: the user id. Item tower: the five item features. Head items = the most frequent
10 % of items in the training interactions; tail = the rest. Recall@K over held-out pairs whose
item is head / tail, each user's training (and validation) items excluded from the ranking.
The paper's claim: the SSL term helps tail items most.

    python benchmarks/bench_recommendation.py            # defaults, 1 torch thread
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import numpy as np
import torch

from contrastkit.evaluation.retrieval import recall_at_k
from contrastkit.recipes.recommendation import TwoTowerConfig, fit_two_tower, rank_items

ITEM_CARDINALITIES_WITHOUT_ID = (20, 100, 300, 8)


def synthetic_long_tail(
    n_users: int, n_items: int, per_user: int, zipf: float, seed: int
) -> dict:
    rng = np.random.default_rng(seed)
    creator = rng.integers(0, 300, n_items)
    category = creator % 20
    subcategory = category * 5 + rng.integers(0, 5, n_items)
    decade = rng.integers(0, 8, n_items)
    items = np.column_stack(
        [np.arange(n_items), category, subcategory, creator, decade]
    )
    popularity = 1.0 / (1.0 + rng.permutation(n_items)) ** zipf

    category_pref = rng.dirichlet(
        np.full(20, 0.1), n_users
    )  # (U, 20), a few favourite categories
    within = rng.dirichlet(np.full(5, 0.5), (n_users, 20))  # (U, 20, 5)
    subcategory_pref = (category_pref[:, :, None] * within).reshape(n_users, 100)
    decade_pref = rng.dirichlet(np.full(8, 0.5), n_users)
    log_p = (
        np.log(popularity)[None, :]
        + np.log(subcategory_pref[:, subcategory] + 1e-12)
        + np.log(decade_pref[:, decade] + 1e-12)
    )
    gumbel = rng.gumbel(size=log_p.shape)
    chosen = np.argsort(-(log_p + gumbel), axis=1)[
        :, :per_user
    ]  # P(i|u) without replacement
    return {"items": items, "interactions": chosen}


def recall_by_group(model, users, items, exclude, targets, is_head, ks) -> dict:
    ranked = rank_items(
        model,
        torch.as_tensor(users)[:, None],
        torch.as_tensor(items),
        torch.as_tensor(exclude),
        max(ks),
    )
    ranked = ranked.numpy()
    out = {}
    for k in ks:
        for name, rows in (
            ("all", slice(None)),
            ("head", is_head[targets]),
            ("tail", ~is_head[targets]),
        ):
            out[(name, k)] = recall_at_k(ranked[rows], targets[rows], k=k)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--users", type=int, default=3000)
    parser.add_argument("--items", type=int, default=2000)
    parser.add_argument("--per-user", type=int, default=12)
    parser.add_argument("--zipf", type=float, default=1.0)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--ssl-weights", type=float, nargs="+", default=[0.1, 0.3, 1.0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--k", type=int, nargs="+", default=[10, 50])
    args = parser.parse_args()
    torch.set_num_threads(1)
    started = time.perf_counter()

    data = synthetic_long_tail(
        args.users, args.items, args.per_user, args.zipf, seed=12345
    )
    items, chosen = data["items"], data["interactions"]
    n_users = args.users
    order = np.random.default_rng(0).permuted(chosen, axis=1)
    validation_items, test_items, train_items = order[:, 0], order[:, 1], order[:, 2:]
    pairs = torch.as_tensor(
        np.column_stack(
            [np.repeat(np.arange(n_users), train_items.shape[1]), train_items.ravel()]
        )
    )
    counts = np.bincount(train_items.ravel(), minlength=args.items)
    is_head = np.zeros(args.items, dtype=bool)
    is_head[np.argsort(-counts, kind="stable")[: args.items // 10]] = True
    seen = np.zeros((n_users, args.items), dtype=bool)
    seen[np.arange(n_users)[:, None], train_items] = True
    seen_with_validation = seen.copy()
    seen_with_validation[np.arange(n_users), validation_items] = True
    users = np.arange(n_users)
    item_cardinalities = (args.items, *ITEM_CARDINALITIES_WITHOUT_ID)

    print(
        f"SYNTHETIC long-tail interactions (no real data): {n_users} users, {args.items} items, Zipf {args.zipf}, "
        f"{len(pairs)} training pairs; head = top 10% items = {counts[is_head].sum() / counts.sum():.0%} of training "
        f"interactions; tail items with <= 2 training interactions: {(counts[~is_head] <= 2).mean():.0%} of tail; "
        f"held-out pairs with a tail item: test {(~is_head[test_items]).mean():.0%}"
    )
    base = TwoTowerConfig(steps=args.steps)
    print(
        f"model: towers emb {base.embedding_dim} -> MLP {base.hidden_dim} -> {base.output_dim}; {base.steps} steps, "
        f"batch {base.batch_size} pairs (+ {base.ssl_batch_size} uniform items for SSL), logQ correction on"
    )

    def fit(ssl_weight: float, masking: str, seed: int):
        config = dataclasses.replace(
            base, ssl_weight=ssl_weight, masking=masking, seed=seed
        )
        return fit_two_tower(
            pairs,
            torch.as_tensor(users)[:, None],
            torch.as_tensor(items),
            [n_users],
            item_cardinalities,
            config,
        )

    k_sel = max(args.k)
    print(
        f"\nssl_weight selection on validation (CFM, seed {args.seeds[0]}): Recall@{k_sel} all / tail"
    )
    print(f"{'alpha':>6} {'all':>7} {'tail':>7}")
    best, best_value = None, -1.0
    for weight in [0.0, *args.ssl_weights]:
        model = fit(weight, "correlated", args.seeds[0])
        scores = recall_by_group(
            model, users, items, seen, validation_items, is_head, [k_sel]
        )
        print(
            f"{weight:>6g} {scores[('all', k_sel)]:>7.4f} {scores[('tail', k_sel)]:>7.4f}"
        )
        if weight > 0 and scores[("all", k_sel)] > best_value:
            best, best_value = weight, scores[("all", k_sel)]
    print(
        f"chosen alpha (best validation Recall@{k_sel} overall among alpha > 0): {best:g}"
    )

    variants = (
        ("two-tower, no SSL", 0.0, "random"),
        (f"+ SSL RFM, alpha={best:g}", best, "random"),
        (f"+ SSL CFM, alpha={best:g}", best, "correlated"),
    )
    header = " ".join(f"{g}@{k:<3}" for k in args.k for g in ("all", "head", "tail"))
    print(f"\ntest Recall@K, mean +- std over seeds {args.seeds}")
    print(f"{'variant':<26} " + " ".join(f"{h:>15}" for h in header.split()))
    for label, weight, masking in variants:
        runs = [
            recall_by_group(
                fit(weight, masking, s),
                users,
                items,
                seen_with_validation,
                test_items,
                is_head,
                args.k,
            )
            for s in args.seeds
        ]
        cells = []
        for k in args.k:
            for group in ("all", "head", "tail"):
                values = np.array([r[(group, k)] for r in runs])
                cells.append(f"{values.mean():.4f}+-{values.std():.4f}")
        print(f"{label:<26} " + " ".join(f"{c:>15}" for c in cells))
    print(f"\ntotal time {time.perf_counter() - started:.0f} s (1 torch thread)")


if __name__ == "__main__":
    main()
