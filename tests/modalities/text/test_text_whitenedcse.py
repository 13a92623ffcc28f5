"""WhitenedCSE: shuffled group whitening against numpy closed forms, and the loss against a naive loop."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from contrastkit.core.errors import ConfigError
from contrastkit.modalities.text.methods import whitenedcse
from contrastkit.objectives.query_key import query_key_infonce
from contrastkit.modalities.text.methods._whitening import (
    group_whiten,
    inverse_permutation,
    shuffled_group_whiten,
    whitening_matrices,
)
from tests.conftest import requires_minilm, requires_transformers
from tests.text_method_fakes import SENTENCES, BagOfWordsEncoder


def _correlated(n: int = 64, d: int = 12, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    mixing = torch.randn(d, d, generator=generator, dtype=torch.float64)
    return torch.randn(n, d, generator=generator, dtype=torch.float64) @ mixing + 3.0


def _numpy_zca(x: np.ndarray) -> np.ndarray:
    centred = x - x.mean(0)
    values, vectors = np.linalg.eigh(centred.T @ centred / len(x))
    return centred @ vectors @ np.diag(values ** -0.5) @ vectors.T


def _numpy_cholesky_whitening(x: np.ndarray) -> np.ndarray:
    centred = x - x.mean(0)
    lower = np.linalg.cholesky(centred.T @ centred / len(x))
    return centred @ np.linalg.inv(lower).T


@pytest.mark.parametrize("method", ["zca", "cholesky"])
def test_each_shuffled_group_has_identity_covariance(method):
    x = _correlated()
    permutation = torch.randperm(12, generator=torch.Generator().manual_seed(1))
    y = shuffled_group_whiten(x, num_groups=3, permutation=permutation, method=method, eps=1e-12)
    for g in range(3):
        columns = permutation[4 * g : 4 * (g + 1)]  # the original features that formed group g
        block = y[:, columns] - y[:, columns].mean(0)
        torch.testing.assert_close(block.T @ block / len(x), torch.eye(4, dtype=torch.float64), atol=1e-8, rtol=0)
    # Features of different groups are not decorrelated: the full covariance is not the identity.
    full = (y - y.mean(0)).T @ (y - y.mean(0)) / len(x)
    assert (full - torch.eye(12, dtype=torch.float64)).abs().max() > 0.05


def test_inverse_permutation_is_exact():
    permutation = torch.randperm(50, generator=torch.Generator().manual_seed(3))
    inverse = inverse_permutation(permutation)
    x = torch.randn(4, 50)
    assert torch.equal(x[:, permutation][:, inverse], x)
    assert torch.equal(permutation[inverse], torch.arange(50))


def test_group_whitening_matches_numpy_per_group_loop():
    x = _correlated(n=40, d=12, seed=2)
    for method, reference in (("zca", _numpy_zca), ("cholesky", _numpy_cholesky_whitening)):
        y = group_whiten(x, num_groups=4, method=method, eps=0.0).numpy()
        expected = np.concatenate([reference(x.numpy()[:, 3 * g : 3 * (g + 1)]) for g in range(4)], axis=1)
        np.testing.assert_allclose(y, expected, atol=1e-9)


def test_zca_on_one_group_ignores_the_permutation():
    # ZCA(x P) = ZCA(x) P for a permutation matrix P, so after un-permuting every shuffle agrees.
    x = _correlated(n=50, d=6, seed=4)
    expected = _numpy_zca(x.numpy())
    for seed in range(3):
        permutation = torch.randperm(6, generator=torch.Generator().manual_seed(seed))
        y = shuffled_group_whiten(x, 1, permutation, "zca", eps=0.0)
        np.testing.assert_allclose(y.numpy(), expected, atol=1e-9)


def test_whitening_matrices_satisfy_definition():
    x = _correlated(n=30, d=5, seed=5)
    centred = x - x.mean(0)
    sigma = (centred.T @ centred / 30)[None]
    for method in ("zca", "cholesky"):
        w = whitening_matrices(sigma, method, eps=0.0)[0]
        torch.testing.assert_close(w.T @ sigma[0] @ w, torch.eye(5, dtype=torch.float64), atol=1e-9, rtol=0)
    zca = whitening_matrices(sigma, "zca", eps=0.0)[0]
    torch.testing.assert_close(zca, zca.T)  # ZCA's matrix is symmetric


def test_infonce_against_naive_loop():
    generator = torch.Generator().manual_seed(0)
    q, k = torch.randn(5, 4, generator=generator, dtype=torch.float64), torch.randn(5, 4, generator=generator,
                                                                                    dtype=torch.float64)
    t = 0.1
    total = 0.0
    for i in range(5):
        logits = [float(torch.cosine_similarity(q[i], k[j], dim=0)) / t for j in range(5)]
        total += -logits[i] + math.log(sum(math.exp(v) for v in logits))
    assert float(query_key_infonce(q, k, t)) == pytest.approx(total / 5, rel=1e-10)


def test_training_loss_is_the_sum_over_positive_copies():
    encoder = BagOfWordsEncoder(dim=8)
    method = whitenedcse.build(encoder, num_groups=2, num_positives=3, temperature=0.2,
                                eps=1e-12).double()
    torch.manual_seed(7)
    loss, logs = method.training_loss({"texts": SENTENCES})
    # Recompute: the encoder has no dropout, so every copy is f(x); the method draws one
    # permutation per copy, in order, from torch's generator.
    torch.manual_seed(7)
    permutations = [torch.randperm(8) for _ in range(3)]
    f = encoder(encoder.tokenize(SENTENCES)).detach().numpy()
    weight = method.head[0].weight.detach().double().numpy()
    bias = method.head[0].bias.detach().double().numpy()
    views = []
    for p in permutations:
        shuffled = f[:, p.numpy()]
        whitened = np.concatenate([_numpy_zca(shuffled[:, 4 * g : 4 * (g + 1)]) for g in range(2)], axis=1)
        views.append(np.tanh(whitened[:, np.argsort(p.numpy())] @ weight.T + bias))
    expected = 0.0
    for positive in views[1:]:
        for i in range(len(SENTENCES)):
            logits = [views[0][i] @ positive[j] / np.linalg.norm(views[0][i]) / np.linalg.norm(positive[j]) / 0.2
                      for j in range(len(SENTENCES))]
            expected += (-logits[i] + np.log(np.sum(np.exp(logits)))) / len(SENTENCES)
    assert loss.item() == pytest.approx(expected, rel=1e-8)
    assert -1.0 <= logs["positive_cosine"] <= 1.0


def test_options_are_checked():
    encoder = BagOfWordsEncoder(dim=8)
    with pytest.raises(ConfigError, match="num_groups"):
        whitenedcse.build(encoder, num_groups=3)
    with pytest.raises(ConfigError, match="num_positive"):
        whitenedcse.build(encoder, num_positive=3)
    with pytest.raises(ConfigError, match="num_positives"):
        whitenedcse.build(encoder, num_positives=1, num_groups=2)


@requires_transformers
@requires_minilm
def test_smoke_small_random_encoder_backward():
    from contrastkit.modalities.text.encoders import small_random_encoder

    encoder = small_random_encoder(hidden_size=32, layers=1, heads=2)
    method = whitenedcse.build(encoder, num_groups=8)
    method.train()
    loss, _ = method.training_loss({"texts": SENTENCES, "indices": torch.arange(len(SENTENCES))})
    loss.backward()
    assert torch.isfinite(loss)
    gradients = [p.grad for p in method.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in gradients)
    assert method.head[0].weight.grad.abs().sum() > 0
