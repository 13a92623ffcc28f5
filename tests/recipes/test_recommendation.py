"""Two-tower retrieval with the item-tower SSL regulariser: losses, masks, ranking metrics."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from contrastkit import objectives
from contrastkit.engine import EpochShuffleSampler, step_seed
from contrastkit.core.errors import ConfigError
from contrastkit.evaluation.retrieval import recall_at_k
from contrastkit.recipes.recommendation import (
    CorrelatedMasks,
    FeatureTower,
    TwoTowerConfig,
    TwoTowerModel,
    complementary_random_masks,
    fit_two_tower,
    item_ssl_loss,
    rank_items,
)
from contrastkit.objectives.query_key import in_batch_softmax_loss
from contrastkit.core.seeding import seeded
from tests.resume_harness import ENV, assert_kill_and_resume_is_exact


def test_in_batch_softmax_matches_a_naive_loop_with_logq_and_duplicates():
    torch.manual_seed(0)
    q, v = (
        torch.randn(5, 3, dtype=torch.float64),
        torch.randn(5, 3, dtype=torch.float64),
    )
    ids = torch.tensor([7, 2, 7, 4, 2])
    log_p = torch.log(torch.tensor([0.3, 0.1, 0.3, 0.05, 0.1], dtype=torch.float64))
    total = 0.0
    for i in range(5):

        def s(j, i=i):
            dot = sum(q[i, k] * v[j, k] for k in range(3)) / (q[i].norm() * v[j].norm())
            return float(dot) / 0.2 - float(log_p[j])

        negatives = [j for j in range(5) if j == i or ids[j] != ids[i]]
        total += -(s(i) - math.log(sum(math.exp(s(j)) for j in negatives)))
    got = in_batch_softmax_loss(q, v, 0.2, item_ids=ids, log_item_probability=log_p)
    assert got.item() == pytest.approx(total / 5, rel=1e-10)


def test_in_batch_softmax_both_directions_is_the_catalogue_clip():
    torch.manual_seed(1)
    q, v = torch.randn(6, 4), torch.randn(6, 4)
    symmetric = (
        in_batch_softmax_loss(q, v, 0.1) + in_batch_softmax_loss(v, q, 0.1)
    ) / 2
    clip = objectives.get("clip", init_temperature=0.1, learn_scale=False)(q, v)
    assert symmetric.item() == pytest.approx(clip.item(), rel=1e-5)


def test_ssl_term_is_the_catalogue_infonce_on_the_two_views():
    torch.manual_seed(2)
    tower = FeatureTower([5, 7, 3, 4], embedding_dim=4, hidden_dim=8, output_dim=6)
    features = torch.stack([torch.randint(c, (10,)) for c in (5, 7, 3, 4)], dim=1)
    first, second = complementary_random_masks(
        10, 4, 0.5, torch.Generator().manual_seed(0)
    )
    got = item_ssl_loss(tower, features, (first, second), 0.2)
    expected = objectives.get("infonce", temperature=0.2)(
        tower(features, first), tower(features, second)
    )
    assert got.item() == pytest.approx(expected.item(), rel=1e-6)


def test_masked_feature_embedding_is_zeroed():
    tower = FeatureTower([5, 7], embedding_dim=3, hidden_dim=4, output_dim=2)
    features = torch.tensor([[1, 2], [3, 4]])
    masked = torch.tensor([[True, False], [False, False]])
    zeroed = torch.cat([torch.zeros(3), tower.embeddings[1](features[0, 1])])
    assert torch.allclose(tower(features, masked)[0], tower.mlp(zeroed))
    assert torch.allclose(tower(features, masked)[1], tower(features)[1])


def test_random_masking_rates():
    first, second = complementary_random_masks(
        20000, 6, 0.5, torch.Generator().manual_seed(0)
    )
    assert (first.sum(dim=1) == 3).all() and torch.equal(second, ~first)
    # Each feature is masked in the first view with probability 3/6; 5 sigma of a binomial.
    rates = first.double().mean(dim=0)
    assert (rates - 0.5).abs().max() < 5 * math.sqrt(0.25 / 20000)
    # Every one of the C(6,3) = 20 subsets is drawn about equally often (uniform subsets).
    counts = torch.unique(first.long() @ (2 ** torch.arange(6)), return_counts=True)[1]
    assert len(counts) == 20 and counts.min() > 0.8 * 1000


def test_correlated_masking_masks_the_correlated_features_together():
    rng = np.random.default_rng(0)
    category = rng.integers(0, 8, 4000)
    subcategory = category * 3 + rng.integers(
        0, 3, 4000
    )  # determined by category up to 3 values
    independent = rng.integers(0, 5, (4000, 2))
    features = np.column_stack(
        [category, independent[:, 0], subcategory, independent[:, 1]]
    )
    masks = CorrelatedMasks(features, mask_fraction=0.5)
    first, second = masks(5000, torch.Generator().manual_seed(0))
    assert (first.sum(dim=1) == 2).all() and torch.equal(second, ~first)
    # Seeded at category or subcategory, the other one is its partner of highest MI.
    assert (first[:, 0] == first[:, 2]).float().mean() > 0.45
    assert (
        (first[:, 0] & first[:, 2]) | ~(first[:, 0] | first[:, 2])
    ).float().mean() > 0.45
    seeds_at_category = first[:, 0] & ~first[:, 1] & ~first[:, 3]
    assert torch.equal(
        first[seeds_at_category][:, 2],
        torch.ones(int(seeds_at_category.sum()), dtype=torch.bool),
    )


def test_rank_items_and_recall_against_a_hand_computed_ranking():
    class Identity(torch.nn.Module):
        def __init__(self, table):
            super().__init__()
            self.table = table

        def forward(self, features, masked=None):
            return self.table[features[:, 0]]

    model = torch.nn.Module()
    model.query_tower = Identity(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    model.item_tower = Identity(
        torch.tensor([[1.0, 0.1], [0.6, 0.8], [0.0, 1.0], [-1.0, 0.0]])
    )
    queries, items = torch.tensor([[0], [1]]), torch.arange(4)[:, None]
    # Cosines: query 0 -> items (0.995, 0.6, 0, -1); query 1 -> (0.0995, 0.8, 1, 0).
    assert rank_items(model, queries, items, k=4).tolist() == [
        [0, 1, 2, 3],
        [2, 1, 0, 3],
    ]
    exclude = torch.tensor([[True, False, False, False], [False, False, False, False]])
    ranked = rank_items(model, queries, items, exclude=exclude, k=2)
    assert ranked.tolist() == [[1, 2], [2, 1]]
    assert recall_at_k(ranked.numpy(), np.array([2, 0]), k=2) == pytest.approx(0.5)
    assert recall_at_k(ranked.numpy(), np.array([2, 0]), k=1) == pytest.approx(0.0)


def test_fit_learns_and_is_reproducible():
    rng = np.random.default_rng(0)
    n_users, n_items = 40, 30
    item_features = torch.as_tensor(
        np.column_stack([np.arange(n_items), np.arange(n_items) % 3])
    )
    user_group = rng.integers(0, 3, n_users)
    pairs = torch.as_tensor(
        [
            (u, i)
            for u in range(n_users)
            for i in rng.choice(
                np.flatnonzero(np.arange(n_items) % 3 == user_group[u]), 4
            )
        ]
    )
    config = TwoTowerConfig(
        steps=60,
        batch_size=32,
        ssl_batch_size=16,
        ssl_weight=0.3,
        embedding_dim=4,
        hidden_dim=8,
        output_dim=8,
    )
    fit = lambda: fit_two_tower(
        pairs,
        torch.arange(n_users)[:, None],
        item_features,
        [n_users],
        [n_items, 3],
        config,
    )
    a, b = fit(), fit()
    for (name, x), (_, y) in zip(
        a.state_dict().items(), b.state_dict().items(), strict=True
    ):
        assert torch.equal(x, y), name
    top = rank_items(a, torch.arange(n_users)[:, None], item_features, k=5)
    hits = (
        (item_features[top][..., 1] == torch.as_tensor(user_group)[:, None])
        .float()
        .mean()
    )
    assert hits > 0.6  # chance is 1/3


def test_fit_equals_a_plain_adam_loop_over_the_same_batches_and_step_seeds():
    """The engine's fit against the loop it replaced, written out: Adam at lr, constant; epochs of
    60 // 16 = 3 batches of pairs (12 steps, four epochs); per step, uniform SSL items then random
    masks drawn from torch's generator, reseeded before every step as the engine does."""
    rng = np.random.default_rng(2)
    n_users, n_items = 12, 20
    item_features = torch.as_tensor(np.column_stack([np.arange(n_items), np.arange(n_items) % 4]))
    pairs = torch.as_tensor(np.column_stack([np.repeat(np.arange(n_users), 5), rng.integers(0, n_items, 60)]))
    query_features = torch.arange(n_users)[:, None]
    config = TwoTowerConfig(steps=12, batch_size=16, ssl_batch_size=8, ssl_weight=0.3, masking="random",
                            embedding_dim=4, hidden_dim=8, output_dim=8, seed=7)
    trained = fit_two_tower(pairs, query_features, item_features, [n_users], [n_items, 4], config)

    counts = torch.bincount(pairs[:, 1], minlength=n_items).double()
    log_p = (counts / counts.sum()).clamp_min(1e-12).log().float()
    with seeded(config.seed):
        model = TwoTowerModel([n_users], [n_items, 4], embedding_dim=4, hidden_dim=8, output_dim=8)
        optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
        sampler = EpochShuffleSampler(len(pairs), config.batch_size, config.seed)
        step = 0
        for epoch in range(4):
            sampler.set_epoch(epoch)
            for positions in sampler:
                torch.manual_seed(step_seed(config.seed, step, 0))
                batch = pairs[positions]
                items = batch[:, 1]
                loss = in_batch_softmax_loss(model.query_tower(query_features[batch[:, 0]]),
                                             model.item_tower(item_features[items]), config.temperature,
                                             item_ids=items, log_item_probability=log_p[items])
                ssl_items = torch.randint(n_items, (8,))
                masks = complementary_random_masks(8, 2, config.mask_fraction)
                loss = loss + 0.3 * item_ssl_loss(model.item_tower, item_features[ssl_items], masks, 0.1)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                step += 1
    assert step == config.steps
    for (name, a), b in zip(trained.state_dict().items(), model.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)


def test_unknown_masking():
    with pytest.raises(ConfigError, match="Valid maskings"):
        fit_two_tower(
            torch.zeros(4, 2, dtype=torch.long),
            torch.zeros(1, 1, dtype=torch.long),
            torch.zeros(1, 1, dtype=torch.long),
            [1],
            [1],
            TwoTowerConfig(masking="dropout"),
        )


def test_normalised_dependence_pairs_category_with_subcategory_not_with_the_id():
    rng = np.random.default_rng(0)
    category = rng.integers(0, 8, 2000)
    subcategory = category * 3 + rng.integers(0, 3, 2000)
    features = np.column_stack(
        [np.arange(2000), category, subcategory, rng.integers(0, 5, 2000)]
    )
    # Raw MI: the id determines every feature, MI(category, id) = H(category) = MI(category, subcategory),
    # and the tie goes to the id (lower index); normalised, subcategory is the partner.
    assert CorrelatedMasks(features, 0.5, normalize=False).groups[1].tolist() == [1, 0]
    assert CorrelatedMasks(features, 0.5).groups[1].tolist() == [1, 2]
    assert CorrelatedMasks(features, 0.5).groups[2].tolist() == [2, 1]


@pytest.mark.slow
def test_a_two_tower_run_killed_between_checkpoints_resumes_exactly(tmp_path):
    """In-batch softmax + item SSL under correlated masking (tests/recipes/recommendation_resume_run.py),
    killed with SIGKILL after its checkpoint of step 10; resumed, both towers and the Adam state
    must equal the uninterrupted run's."""
    script = [sys.executable, str(Path(__file__).with_name("recommendation_resume_run.py"))]
    subprocess.run([*script, str(tmp_path / "whole")], check=True, env=ENV, capture_output=True)
    run_dir = tmp_path / "killed"
    assert_kill_and_resume_is_exact([*script, str(run_dir)], [*script, str(run_dir), "--resume"], run_dir,
                                    tmp_path / "whole", kill_after_step=10, seed=4)
