"""A two-tower run with the item SSL term for the SIGKILL test in tests/recipes/test_recommendation.py.

    python tests/recipes/recommendation_resume_run.py OUT [--resume]

The interactions are the test file's kind of synthetic log (no recommendation data set is on
disk): 200 users who each like one of three item groups, 5 pairs each, 90 items with features
(id, group, id mod 5). Batches of 32 pairs (31 steps an epoch) plus 16 uniform items under
correlated feature masking, 150 steps, a checkpoint every 5 steps.
"""

from __future__ import annotations

import sys

import numpy as np
import torch

from contrastkit.recipes.recommendation import TwoTowerConfig, fit_two_tower

CONFIG = TwoTowerConfig(steps=150, batch_size=32, ssl_batch_size=16, ssl_weight=0.3, embedding_dim=4, hidden_dim=8,
                        output_dim=8, masking="correlated", seed=5)


def main(out: str, resume: bool) -> None:
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    n_users, n_items = 200, 90
    item_ids = np.arange(n_items)
    item_features = torch.as_tensor(np.column_stack([item_ids, item_ids % 3, item_ids % 5]))
    group = rng.integers(0, 3, n_users)
    pairs = torch.as_tensor([(u, i) for u in range(n_users) for i in rng.choice(item_ids[item_ids % 3 == group[u]], 5)])
    fit_two_tower(pairs, torch.arange(n_users)[:, None], item_features, [n_users], [n_items, 3, 5], CONFIG,
                  out=out, resume=resume, checkpoint_every_steps=5)


if __name__ == "__main__":
    main(sys.argv[1], resume="--resume" in sys.argv[2:])
