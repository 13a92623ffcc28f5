"""Representation diagnostics: is the embedding spread out, or has it collapsed?

All functions take (n, d) embeddings as numpy arrays or torch tensors; torch tensors stay on their
device (the trainer calls these every epoch on the training device). Computation is in float32
under ``torch.no_grad``; results are returned as Python floats. ``normalize(z)_i = z_i / ||z_i||``.

- alignment (Wang & Isola, "Understanding Contrastive Representation Learning through Alignment
  and Uniformity on the Hypersphere", ICML 2020):
      A = mean_i || normalize(z_a)_i - normalize(z_b)_i ||_2^alpha         (lower = better aligned)
- uniformity (same paper):
      U = log mean_{i != j} exp(-t || normalize(z)_i - normalize(z)_j ||_2^2)
  between 0 (all points equal) and about -2t for uniform points on a high-dimensional sphere.
- effective rank / RankMe (Garrido et al., "RankMe: Assessing the Downstream Performance of
  Pretrained Self-Supervised Representations by Their Rank", ICML 2023), on the raw embedding
  matrix (not centred, not normalised, as in the paper):
      p_k = sigma_k / sum_l sigma_l + eps,     RankMe = exp(-sum_k p_k log p_k)
  between 1 (one direction) and min(n, d) (all singular values equal).
- per-dimension std (SimSiam, Chen & He 2021, section 4.1): the standard deviation over samples of
  each coordinate of normalize(z), averaged over the d coordinates. About 1/sqrt(d) for an
  isotropic Gaussian; 0 when every sample maps to the same point.
- isotropy (Su et al., "A Contrastive Framework for Neural Text Generation", NeurIPS 2022):
  the average cosine similarity over distinct pairs; about 0 when directions are spread evenly,
  1 when all vectors point the same way. Computed exactly over *all* distinct pairs in O(n d):
      sum_{i != j} u_i . u_j = ||sum_i u_i||^2 - sum_i ||u_i||^2.

Collapse thresholds of :func:`collapse_report` (each one that trips adds a reason):

- ``per_dimension_std < 0.2 / sqrt(d)``: the normalised embeddings vary five times less than an
  isotropic Gaussian's; since mean_j Var_j = (1 - ||mean_i u_i||^2) / d, this corresponds to an
  average pairwise cosine above about 0.96 -- complete collapse (SimSiam's failure mode).
- ``effective_rank < max(1.5, 0.02 * min(n, d, r))``: the spectrum has fewer than 1.5 effective
  directions, or less than 2 % of the attainable ones -- dimensional collapse. 1.5 (not 2) so
  that a healthy 2-D embedding (RankMe just under 2) is not flagged, while rank-1 data (RankMe
  about 1) is. ``r`` (``max_rank``, default d) is the most rank the embedding can have by
  construction, where a method knows it is below d: DINO's K = 2048 logits are a linear map of a
  128-wide bottleneck, so their rank is at most 128, and a floor of 2 % of 2048 flagged healthy
  runs (RankMe 18.8 on CIFAR-10 after 25 epochs, 8-10 kNN points above the untrained encoder).
- ``uniformity > -0.1`` (t = 2): the mean of exp(-2 ||u_i - u_j||^2) is above 0.9, i.e. typical
  squared distances below about 0.05; a healthy embedding sits near -2t = -4.

An isotropic Gaussian trips none; all rows equal plus tiny noise trips all three; rank-1 data
(every row a multiple of one vector) trips the effective-rank rule.

Assignments. Methods whose objective compares distributions over K outputs (OBoW's bags of visual
words, MSN's and SwAV's prototypes, DINO's outputs) collapse when every sample gets the same
distribution, whether it is uniform or peaked on one output (the two failures of DINO's Sec. 5.3,
Fig. 7). For rows ``p_i`` (distributions over K outputs) :func:`assignment_report` measures the
information the output carries about the sample (the mutual information of sample and output when
a sample is drawn uniformly and its output from ``p_i``)::

    I = H(mean_i p_i) - mean_i H(p_i),      0 <= I <= log min(n, K)

0 exactly when every row is the same distribution, log min(n, K) for distinct one-hot rows. It is
flagged below ``MIN_ASSIGNMENT_INFORMATION`` = 0.01 nats. Measured on 512 digits: DINO without
centring 5e-8 (one output for every image), DINO after 30 epochs 1.28, DINO's initialisation
1.7 with batch statistics; OBoW's teacher bags 1.1 to 1.9 after 24 steps, exactly 0 for uniform
bags (tests/modalities/image/test_objective_space_collapse.py).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from contrastkit.core.errors import ConfigError, DataError

PER_DIMENSION_STD_FRACTION = 0.2
MIN_EFFECTIVE_RANK = 1.5
EFFECTIVE_RANK_FRACTION = 0.02
MAX_UNIFORMITY = -0.1
RANKME_EPS = 1e-7
MIN_ASSIGNMENT_INFORMATION = 0.01  # nats


def as_float_tensor(z: Any, name: str = "z", min_rows: int = 1) -> torch.Tensor:
    """``z`` as a float32 (n, d) tensor, on its own device when it already is a tensor."""
    tensor = z if isinstance(z, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(z))
    tensor = tensor.detach()
    if tensor.ndim != 2 or tensor.shape[0] < min_rows or tensor.shape[1] < 1:
        raise DataError(
            f"{name} must be a matrix (n_samples, dim) with at least {min_rows} row(s), but it has "
            f"shape {tuple(tensor.shape)}."
        )
    return tensor.float()


@torch.no_grad()
def alignment(z_a: Any, z_b: Any, alpha: float = 2.0) -> float:
    """mean_i ||normalize(z_a)_i - normalize(z_b)_i||^alpha over the positive pairs (rows)."""
    a = F.normalize(as_float_tensor(z_a, "z_a"), dim=1)
    b = F.normalize(as_float_tensor(z_b, "z_b"), dim=1).to(a.device)
    if a.shape != b.shape:
        raise DataError(
            f"z_a {tuple(a.shape)} and z_b {tuple(b.shape)} must have the same shape: row i of "
            f"each is one view of sample i."
        )
    return (a - b).norm(dim=1).pow(alpha).mean().item()


@torch.no_grad()
def uniformity(
    z: Any, t: float = 2.0, max_samples: int | None = None, seed: int = 0, chunk_size: int = 2048
) -> float:
    """log mean_{i != j} exp(-t ||normalize(z)_i - normalize(z)_j||^2).

    The mean over ordered distinct pairs equals the mean over unordered pairs (pdist). Rows are
    processed ``chunk_size`` at a time and combined with log-sum-exp, so memory is
    O(chunk_size * n) and no exp underflows. With ``max_samples``, a seeded random subset of that
    many rows is used (an unbiased estimate at O(max_samples^2) cost).
    """
    u = F.normalize(_subsample(as_float_tensor(z, "z", min_rows=2), max_samples, seed), dim=1)
    n = u.shape[0]
    squared_norms = (u * u).sum(dim=1)
    block_logsumexps = []
    for start in range(0, n, chunk_size):
        block = u[start : start + chunk_size]
        squared_distances = (
            squared_norms[start : start + chunk_size, None]
            + squared_norms[None, :]
            - 2 * block @ u.T
        ).clamp_min(0)
        logits = -t * squared_distances
        rows = torch.arange(block.shape[0], device=u.device)
        logits[rows, start + rows] = -math.inf  # exclude i == j
        block_logsumexps.append(torch.logsumexp(logits.flatten(), dim=0))
    total = torch.logsumexp(torch.stack(block_logsumexps), dim=0)
    return (total - math.log(n * (n - 1))).item()


@torch.no_grad()
def singular_values(z: Any) -> np.ndarray:
    """Singular values of the (n, d) embedding matrix, in decreasing order (float64 numpy)."""
    return torch.linalg.svdvals(as_float_tensor(z, "z")).double().cpu().numpy()


def effective_rank_from_singular_values(sigma: Any, eps: float = RANKME_EPS) -> float:
    """RankMe: exp(-sum_k p_k log p_k), p_k = sigma_k / sum(sigma) + eps; 0 for a zero matrix."""
    s = np.asarray(sigma, dtype=np.float64)
    if s.sum() <= 0:
        return 0.0
    p = s / s.sum() + eps
    return float(np.exp(-np.sum(p * np.log(p))))


def effective_rank(z: Any, eps: float = RANKME_EPS) -> float:
    """RankMe effective rank of the raw (n, d) embedding matrix (see the module docstring)."""
    return effective_rank_from_singular_values(singular_values(z), eps)


@torch.no_grad()
def per_dimension_std(z: Any) -> float:
    """mean_j std_i(normalize(z)_{ij}) (population std); healthy reference about 1/sqrt(d)."""
    u = F.normalize(as_float_tensor(z, "z"), dim=1)
    return u.std(dim=0, correction=0).mean().item()


@torch.no_grad()
def isotropy(z: Any) -> float:
    """Mean cosine over all distinct pairs: (||sum_i u_i||^2 - sum_i ||u_i||^2) / (n (n - 1))."""
    u = F.normalize(as_float_tensor(z, "z", min_rows=2), dim=1)
    n = u.shape[0]
    total = u.sum(dim=0)
    return ((total @ total - (u * u).sum()) / (n * (n - 1))).item()


def collapse_report(
    z: Any, z_b: Any = None, max_samples: int | None = 8192, seed: int = 0, max_rank: int | None = None
) -> dict[str, Any]:
    """All diagnostics of ``z`` (and alignment with ``z_b`` when given), with a collapse verdict.

    Returns ``n_samples``, ``dim``, ``uniformity``, ``effective_rank``, ``per_dimension_std``,
    ``per_dimension_std_reference`` (1/sqrt(d)), ``isotropy``, ``alignment`` (only with ``z_b``),
    ``max_rank`` (only when given), ``collapsed`` (bool) and ``reasons`` (list of str, empty when
    healthy). Thresholds are the module's constants, documented in the module docstring.
    ``max_samples`` bounds the rows used for uniformity (the O(n^2) term); the other measures use
    every row. ``max_rank``: the most rank ``z`` can have by construction, when below its width d
    (the effective-rank floor is then 2 % of min(n, d, max_rank)).
    """
    tensor = as_float_tensor(z, "z", min_rows=2)
    n, d = tensor.shape
    if max_samples is not None and max_samples < 2:
        raise ConfigError(f"max_samples must be at least 2 (or None), got {max_samples}.")
    if max_rank is not None and (isinstance(max_rank, bool) or not isinstance(max_rank, int) or max_rank < 1):
        raise ConfigError(f"max_rank must be a positive integer (or None), got {max_rank!r}.")
    report: dict[str, Any] = {
        "n_samples": int(n),
        "dim": int(d),
        "uniformity": uniformity(tensor, max_samples=max_samples, seed=seed),
        "effective_rank": effective_rank(tensor),
        "per_dimension_std": per_dimension_std(tensor),
        "per_dimension_std_reference": 1.0 / math.sqrt(d),
        "isotropy": isotropy(tensor),
    }
    if z_b is not None:
        report["alignment"] = alignment(tensor, z_b)
    if max_rank is not None:
        report["max_rank"] = max_rank

    reasons = []
    std_floor = PER_DIMENSION_STD_FRACTION / math.sqrt(d)
    if report["per_dimension_std"] < std_floor:
        reasons.append(
            f"mean per-dimension std of the normalised embeddings is "
            f"{report['per_dimension_std']:.4g}, "
            f"below {PER_DIMENSION_STD_FRACTION} / sqrt(d) = {std_floor:.4g} "
            f"(about {1 / math.sqrt(d):.4g} when healthy): the embeddings have collapsed towards "
            f"one point"
        )
    attainable = min(n, d) if max_rank is None else min(n, d, max_rank)
    rank_floor = max(MIN_EFFECTIVE_RANK, EFFECTIVE_RANK_FRACTION * attainable)
    if report["effective_rank"] < rank_floor:
        bound = "min(n, d)" if max_rank is None else "min(n, d, max_rank)"
        reasons.append(
            f"effective rank (RankMe) is {report['effective_rank']:.3g}, below {rank_floor:.3g} "
            f"(max of {MIN_EFFECTIVE_RANK} and {EFFECTIVE_RANK_FRACTION:.0%} of {bound} = "
            f"{attainable}): dimensional collapse"
        )
    if report["uniformity"] > MAX_UNIFORMITY:
        reasons.append(
            f"uniformity is {report['uniformity']:.3g}, above {MAX_UNIFORMITY} (about -4 when the "
            f"embeddings spread over the sphere): the embeddings are nearly identical"
        )
    report["collapsed"] = bool(reasons)
    report["reasons"] = reasons
    return report


@torch.no_grad()
def assignment_report(probabilities: Any, name: str = "assignments") -> dict[str, Any]:
    """The information ``I = H(mean_i p_i) - mean_i H(p_i)`` (nats) of the (n, K) rows ``p_i``, each a
    distribution over K outputs (see the module docstring), with a collapse verdict.

    Returns ``{name}_information``, ``{name}_mean_entropy`` (mean_i H(p_i)), ``{name}_marginal_entropy``
    (H(mean_i p_i)), ``{name}_max_information`` (log min(n, K)), ``collapsed`` and ``reasons``.
    Entropies use ``0 log 0 = 0``; rows are not renormalised (they must sum to 1)."""
    p = as_float_tensor(probabilities, name, min_rows=2).double()
    n, k = p.shape
    if (p < 0).any() or not torch.allclose(p.sum(dim=1), torch.ones_like(p[:, 0]), atol=1e-4):
        raise DataError(f"{name}: every row must be a distribution over the {k} outputs (non-negative, sum 1).")
    mean_entropy = _entropy(p).mean().item()
    marginal_entropy = _entropy(p.mean(dim=0)).item()
    information = max(0.0, marginal_entropy - mean_entropy)  # >= 0 by concavity; clip the rounding
    report: dict[str, Any] = {f"{name}_information": information, f"{name}_mean_entropy": mean_entropy,
                              f"{name}_marginal_entropy": marginal_entropy,
                              f"{name}_max_information": math.log(min(n, k))}
    reasons = []
    if information < MIN_ASSIGNMENT_INFORMATION:
        kind = "the uniform" if mean_entropy > 0.9 * math.log(k) else "the same"
        reasons.append(
            f"the {name} carry {information:.3g} nats about the sample, below {MIN_ASSIGNMENT_INFORMATION} "
            f"(at most log min(n, K) = {math.log(min(n, k)):.3g}): every sample gets {kind} distribution over "
            f"the {k} outputs (mean entropy {mean_entropy:.3g}, entropy of the mean {marginal_entropy:.3g})")
    report["collapsed"] = bool(reasons)
    report["reasons"] = reasons
    return report


def with_assignment_checks(report: dict[str, Any], distributions: dict[str, Any]) -> dict[str, Any]:
    """``report`` (of :func:`collapse_report`) with the :func:`assignment_report` of each named (n, K)
    distribution added: its measures, its reasons, and the verdict of all of them together."""
    merged = dict(report)
    reasons = list(report["reasons"])
    for name, probabilities in distributions.items():
        assignment = assignment_report(probabilities, name)
        reasons += assignment.pop("reasons")
        assignment.pop("collapsed")
        merged.update(assignment)
    merged["collapsed"] = bool(reasons)
    merged["reasons"] = reasons
    return merged


def _entropy(p: torch.Tensor) -> torch.Tensor:
    """-sum_k p_k log p_k over the last dimension, with 0 log 0 = 0."""
    return -torch.special.xlogy(p, p).sum(dim=-1)


def _subsample(z: torch.Tensor, max_samples: int | None, seed: int) -> torch.Tensor:
    if max_samples is None or z.shape[0] <= max_samples:
        return z
    generator = torch.Generator().manual_seed(seed)
    rows = torch.randperm(z.shape[0], generator=generator)[:max_samples]
    return z[rows.to(z.device)]
