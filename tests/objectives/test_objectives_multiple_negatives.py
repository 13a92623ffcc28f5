"""objectives/multiple_negatives.py against a naive loop over anchors and candidates; with no
negatives it is the query-key InfoNCE; two processes (hard negatives gathered as a per-sample input,
also inside a Matryoshka wrapper) equal one process on the concatenated batch."""

from __future__ import annotations

import pytest
import torch

from contrastkit import objectives
from contrastkit.nn.distributed import GatheredObjective
from contrastkit.objectives.matryoshka import matryoshka_loss
from contrastkit.objectives.query_key import query_key_infonce
from tests.ddp import run_distributed


def _rows(n=4, k=2, d=6, seed=0):
    generator = torch.Generator().manual_seed(seed)
    anchors = torch.randn(n, d, generator=generator, dtype=torch.float64)
    positives = anchors + 0.8 * torch.randn(n, d, generator=generator, dtype=torch.float64)
    negatives = anchors.unsqueeze(1) + 1.2 * torch.randn(n, k, d, generator=generator, dtype=torch.float64)
    return anchors, positives, negatives


def naive_loss(anchors, positives, negatives, temperature):
    """Anchor by anchor: its positive against every positive and every hard negative of the batch."""
    def cos(x, y):
        return (x @ y) / (x.norm() * y.norm())

    n, k = negatives.shape[:2]
    candidates = [positives[j] for j in range(n)] + [negatives[j, l] for j in range(n) for l in range(k)]
    total = 0.0
    for i in range(n):
        denominator = sum(torch.exp(cos(anchors[i], c) / temperature) for c in candidates)
        total = total - cos(anchors[i], positives[i]) / temperature + torch.log(denominator)
    return total / n


def test_loss_and_gradients_equal_a_naive_loop():
    anchors, positives, negatives = (x.requires_grad_(True) for x in _rows())
    objective = objectives.get("multiple_negatives", temperature=0.1)
    loss = objective(anchors, positives, negatives=negatives)
    expected = naive_loss(anchors, positives, negatives, 0.1)
    torch.testing.assert_close(loss, expected)
    for got, want in zip(torch.autograd.grad(loss, (anchors, positives, negatives)),
                         torch.autograd.grad(expected, (anchors, positives, negatives))):
        torch.testing.assert_close(got, want)


def test_without_negatives_it_is_the_query_key_infonce():
    anchors, positives, _ = _rows(n=5, seed=1)
    objective = objectives.get("multiple_negatives", temperature=0.05)
    torch.testing.assert_close(objective(anchors, positives), query_key_infonce(anchors, positives, 0.05))
    torch.testing.assert_close(objective(anchors, positives, negatives=anchors.new_zeros(5, 0, 6)),
                               query_key_infonce(anchors, positives, 0.05))


def _objective(local_loss: bool, matryoshka: bool):
    inner = objectives.get("multiple_negatives", temperature=0.1)
    return GatheredObjective(matryoshka_loss(inner, [6, 3], [1.0, 0.5]) if matryoshka else inner, local_loss)


def _worker(rank: int, world: int, n_per_rank: int) -> dict:
    anchors, positives, negatives = _rows(n=world * n_per_rank, seed=2)
    rows = slice(rank * n_per_rank, (rank + 1) * n_per_rank)
    results = {}
    for local_loss in (False, True):
        for matryoshka in (False, True):
            inputs = [x[rows].clone().requires_grad_(True) for x in (anchors, positives, negatives)]
            loss = _objective(local_loss, matryoshka)(inputs[0], inputs[1], negatives=inputs[2])
            loss.backward()
            results[local_loss, matryoshka] = (loss.detach(), [x.grad / world for x in inputs])
    return results


@pytest.mark.distributed
def test_two_processes_equal_one_process_on_the_whole_batch():
    n_per_rank = 3
    per_rank = run_distributed(_worker, n_per_rank)
    for matryoshka in (False, True):
        inputs = [x.requires_grad_(True) for x in _rows(n=2 * n_per_rank, seed=2)]
        loss = _objective(False, matryoshka)(inputs[0], inputs[1], negatives=inputs[2])
        grads = torch.autograd.grad(loss, inputs)
        if matryoshka:
            torch.testing.assert_close(loss, naive_loss(*[x[..., :6] for x in inputs], 0.1)
                                       + 0.5 * naive_loss(*[x[..., :3] for x in inputs], 0.1))
        for rank, results in enumerate(per_rank):
            rows = slice(rank * n_per_rank, (rank + 1) * n_per_rank)
            for local_loss in (False, True):
                got_loss, got_grads = results[local_loss, matryoshka]
                torch.testing.assert_close(got_loss, loss.detach())
                for got, want in zip(got_grads, grads):
                    torch.testing.assert_close(got, want[rows])
