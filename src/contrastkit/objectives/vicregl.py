"""VICRegL: VICReg on the global embeddings plus VICReg on matched local features."""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from contrastkit.core.errors import ConfigError, DataError
from contrastkit.objectives.base import ContrastiveObjective, LossTerms, anchor_range, in_float32
from contrastkit.objectives.registry import OBJECTIVES
from contrastkit.objectives.vicreg import VARIANCE_EPS

MATCH_ORDERS = ("index", "distance")


def batch_statistics(x: Tensor, eps: float = VARIANCE_EPS) -> tuple[Tensor, Tensor]:
    """VICReg's variance hinge and covariance penalty of (N, d) or (N, M, d) features, over the batch.

    For (N, M, d) each of the M positions is its own set of N samples, as in VICRegL's code:
    ``v = mean_{m,k} max(0, 1 - sqrt(Var_i x_imk + eps))`` and
    ``c = mean_m (1 / d) sum_{k != l} Cov_i(x_im)_kl^2`` (divisor N - 1).
    """
    if x.dim() == 2:
        x = x.unsqueeze(1)
    n, _, d = x.shape
    centred = x - x.mean(dim=0)
    covariance = torch.einsum("nmk,nml->mkl", centred, centred) / (n - 1)  # (M, d, d)
    variances = torch.diagonal(covariance, dim1=1, dim2=2)  # Var_i x_imk, read off the diagonal
    variance = F.relu(1.0 - torch.sqrt(variances + eps)).mean()
    off_diagonal = covariance.pow(2).sum(dim=(1, 2)) - variances.pow(2).sum(dim=1)
    return variance, (off_diagonal / d).mean()


def nearest_matches(inputs: Tensor, candidates: Tensor, distances: Tensor, num_matches: int | None,
                    order: str = "index") -> tuple[Tensor, Tensor]:
    """Each input position's nearest candidate; the ``num_matches`` closest such pairs per sample.

    ``inputs`` (N, P, D), ``candidates`` (N, Q, D), ``distances`` (N, P, Q). Returns the kept
    inputs and their nearest candidates, both (N, M, D) with ``M = min(num_matches, P)`` (all P
    when ``num_matches`` is None). ``order``: ``index`` keeps the kept pairs in the inputs'
    position order (the authors' code), ``distance`` sorts them by distance (LightlySSL's).
    Ties go to the lower index. The choice matters: the variance and covariance are taken over
    the batch at each of the M positions.
    """
    nearest_distance, nearest = distances.min(dim=2)  # (N, P)
    keep = inputs.shape[1] if num_matches is None else min(num_matches, inputs.shape[1])
    kept = torch.sort(nearest_distance, dim=1, stable=True).indices[:, :keep]
    if order == "index":
        kept = kept.sort(dim=1).values
    matched = nearest.gather(1, kept)
    dim = inputs.shape[2]
    return (inputs.gather(1, kept.unsqueeze(-1).expand(-1, -1, dim)),
            candidates.gather(1, matched.unsqueeze(-1).expand(-1, -1, dim)))


def _matched_terms(x: Tensor, y: Tensor, samples: Tensor, weights: tuple[float, float, float],
                   eps: float) -> Tensor:
    """VICReg on matched (N, M, D) features, summed over ``samples``: each sample's own squared
    error (over M D) plus its share of the batch statistics; averaged over the two sides as the
    authors' ``_vicreg_loss`` (``v(x) / 2 + v(y) / 2``, ``c(x) / 2 + c(y) / 2``)."""
    invariance_weight, variance_weight, covariance_weight = weights
    invariance = (x[samples] - y[samples]).pow(2).sum() / (x.shape[1] * x.shape[2])
    variance_x, covariance_x = batch_statistics(x, eps)
    variance_y, covariance_y = batch_statistics(y, eps)
    statistics = (variance_weight * (variance_x + variance_y) / 2
                  + covariance_weight * (covariance_x + covariance_y) / 2)
    return invariance_weight * invariance + samples.numel() * statistics


def _check_local_inputs(maps: Tensor, grid: Tensor, n: int, name: str) -> None:
    if maps.dim() != 4 or grid.dim() != 4 or grid.shape[-1] != 2 or maps.shape[:3] != grid.shape[:3]:
        raise DataError(
            f"vicregl: maps_{name} must be (N, H, W, D) and grid_{name} (N, H, W, 2) with the same N, H, W; "
            f"got {tuple(maps.shape)} and {tuple(grid.shape)}."
        )
    if maps.shape[0] != n:
        raise DataError(f"vicregl: maps_{name} has {maps.shape[0]} samples, the embeddings {n}.")


@in_float32
def vicregl_terms(z_a: Tensor, z_b: Tensor, maps_a: Tensor, maps_b: Tensor, grid_a: Tensor, grid_b: Tensor,
                  invariance_weight: float = 25.0, variance_weight: float = 25.0, covariance_weight: float = 1.0,
                  alpha: float = 0.75, num_matches: tuple[int, int] = (20, 4), l2_all_matches: bool = True,
                  match_order: str = "index", eps: float = VARIANCE_EPS,
                  anchor_rows: slice | None = None) -> LossTerms:
    """VICRegL's terms of the samples ``anchor_rows`` (all when None), count N; see :class:`VICRegL`."""
    n, d = z_a.shape
    if n < 2 or z_b.shape != z_a.shape:
        raise DataError(f"vicregl needs two (N, d) embeddings with N >= 2, got {tuple(z_a.shape)} and {tuple(z_b.shape)}.")
    _check_local_inputs(maps_a, grid_a, n, "a")
    _check_local_inputs(maps_b, grid_b, n, "b")
    samples = anchor_range(anchor_rows, n, z_a.device)
    weights = (invariance_weight, variance_weight, covariance_weight)

    # Global: VICReg between the two views; v and c averaged over the views (the authors' global_loss).
    variance_a, covariance_a = batch_statistics(z_a, eps)
    variance_b, covariance_b = batch_statistics(z_b, eps)
    global_total = (invariance_weight * (z_a[samples] - z_b[samples]).pow(2).sum() / d
                    + samples.numel() * (variance_weight * (variance_a + variance_b) / 2
                                         + covariance_weight * (covariance_a + covariance_b) / 2))

    features = {"a": maps_a.flatten(1, 2), "b": maps_b.flatten(1, 2)}
    locations = {"a": grid_a.flatten(1, 2), "b": grid_b.flatten(1, 2)}
    with torch.no_grad():  # the matching is a selection: no gradient flows through it
        feature_distances = {("a", "b"): torch.cdist(features["a"], features["b"])}
        location_distances = {("a", "b"): torch.cdist(locations["a"], locations["b"])}
    feature_distances[("b", "a")] = feature_distances[("a", "b")].transpose(1, 2)
    location_distances[("b", "a")] = location_distances[("a", "b")].transpose(1, 2)
    l2_matches = (None, None) if l2_all_matches else num_matches

    computed: dict[tuple, Tensor] = {}

    def one_way(first: str, second: str, count: int | None, distances: dict) -> Tensor:
        # The same matching recurs across the two ordered pairs (always, for feature matching over
        # every cell; for location matching when a count covers the whole map): computed once.
        kept = features[first].shape[1] if count is None else min(count, features[first].shape[1])
        key = (first, second, kept, distances is feature_distances)
        if key not in computed:
            x, y = nearest_matches(features[first], features[second], distances[(first, second)], kept, match_order)
            computed[key] = _matched_terms(x, y, samples, weights, eps)
        return computed[key]

    local_total = 0.0
    for first, second in (("a", "b"), ("b", "a")):  # ordered pairs of views, averaged
        feature_based = (one_way(first, second, l2_matches[0], feature_distances)
                         + one_way(second, first, l2_matches[1], feature_distances)) / 2
        location_based = (one_way(first, second, num_matches[0], location_distances)
                          + one_way(second, first, num_matches[1], location_distances)) / 2
        local_total = local_total + (feature_based + location_based) / 2
    return LossTerms(alpha * global_total + (1 - alpha) * local_total, n)


@OBJECTIVES.register("vicregl")
class VICRegL(ContrastiveObjective):
    r"""VICRegL: VICReg between the views' global embeddings and between their matched local features.

    For two views a, b of N images: global embeddings ``z`` (N, d) and local feature maps ``Z``
    (N, H, W, D), with ``grid`` (N, H, W, 2) the position in the source image of each map cell's
    centre. With VICReg's ``V(x, y) = lambda MSE(x, y) + mu (v(x) + v(y)) / 2 + nu (c(x) + c(y)) / 2``
    (:func:`batch_statistics`; for (N, M, D) inputs v and c are taken over the batch at each of
    the M positions and averaged)::

        global     = V(z_a, z_b)
        NN_f(a, b) = V over the pairs (cell p of a, the cell of b nearest to it in feature space)
        NN_g(a, b) = V over the pairs (cell p of a, the cell of b nearest to it in the image),
                     keeping the gamma_1 closest pairs per image (gamma_2 for the reverse direction)
        local(a, b) = (NN_f(a, b) + NN_f(b, a)) / 2 + (NN_g(a, b) + NN_g(b, a)) / 2
        loss       = alpha global + (1 - alpha) (local(a, b) + local(b, a)) / 2

    Bardes, Ponce & LeCun, "VICRegL: Self-Supervised Learning of Local Visual Features", NeurIPS
    2022, Sec. 3 (eq. 4-6). Details follow the authors' code (main_vicregl.py): feature-based
    matching keeps every cell (``l2_all_matches=1``), location-based keeps (gamma_1, gamma_2) =
    ``num_matches`` = (20, 4), the kept pairs stay in position order, v and c are averaged over
    the two sides. One departure: the code's ``local_loss`` overwrites its sum over view pairs
    (``inv_loss, var_loss, cov_loss = self._local_loss(...)``) and divides by the number of
    pairs, so with two views it returns half of local(b, a); here the pairs are averaged, as the
    paper's sum over views says and as LightlySSL does.

    LightlySSL's ``VICRegLLoss`` differs in two settings, both exposed here:
    ``l2_all_matches=False`` (it keeps ``num_matches`` pairs in feature space too) and
    ``match_order="distance"`` (its kept pairs are sorted by distance). With both it gives
    LightlySSL's value (benchmarks/lightly_losses.py).

    Data parallelism: the matching is within an image, so every per-sample input (the embeddings,
    maps and grids) is gathered and each rank sums its own samples' squared errors plus their
    share of the global batch statistics, count N (as :class:`~contrastkit.objectives.vicreg.VICReg`).

    Args:
        invariance_weight, variance_weight, covariance_weight: lambda, mu, nu (25, 25, 1).
        alpha: weight of the global term (0.75: the authors' default; they also publish 0.9).
        num_matches: (gamma_1, gamma_2), pairs kept per image by location-based matching in the
            directions a -> b and b -> a (and by feature-based matching when ``l2_all_matches`` is off).
        l2_all_matches: keep every cell in feature-based matching (the authors' default).
        match_order: ``index`` (the authors' code) or ``distance`` (LightlySSL's).
        eps: added to the variance before the square root.

    Inputs:
        z_a, z_b: (N, d) global embeddings of the two views.
        maps_a, maps_b: (N, H, W, D) local embeddings (H, W may differ between the views).
        grid_a, grid_b: (N, H, W, 2) source-image coordinates of the cells' centres, in the same
            units for both views (e.g. pixels of the source image).
    """

    per_sample_inputs: ClassVar[tuple[str, ...]] = ("maps_a", "maps_b", "grid_a", "grid_b")
    not_for_view_pairs: ClassVar[str] = (
        "it needs each view's local feature maps and their image grids (maps_a, maps_b, grid_a, grid_b); "
        "use --method vicregl"
    )

    def __init__(self, invariance_weight: float = 25.0, variance_weight: float = 25.0,
                 covariance_weight: float = 1.0, alpha: float = 0.75, num_matches: tuple[int, int] = (20, 4),
                 l2_all_matches: bool = True, match_order: str = "index", eps: float = VARIANCE_EPS):
        super().__init__()
        for name, value in (("invariance_weight", invariance_weight), ("variance_weight", variance_weight),
                            ("covariance_weight", covariance_weight), ("eps", eps)):
            if not value >= 0:
                raise ConfigError(f"vicregl: {name} must be >= 0, got {value} (the paper: 25, 25, 1, eps 1e-4).")
        if not 0.0 <= alpha <= 1.0:
            raise ConfigError(f"vicregl: alpha weighs the global against the local loss and must be in [0, 1], got {alpha}.")
        num_matches = tuple(int(count) for count in num_matches)
        if len(num_matches) != 2 or min(num_matches) < 1:
            raise ConfigError(f"vicregl: num_matches must be two positive counts (the paper: 20, 4), got {num_matches}.")
        if match_order not in MATCH_ORDERS:
            raise ConfigError(f"vicregl: match_order must be one of {MATCH_ORDERS}, got {match_order!r}.")
        self.invariance_weight = float(invariance_weight)
        self.variance_weight = float(variance_weight)
        self.covariance_weight = float(covariance_weight)
        self.alpha = float(alpha)
        self.num_matches = num_matches
        self.l2_all_matches = bool(l2_all_matches)
        self.match_order = match_order
        self.eps = float(eps)

    def loss_terms(self, z_a: Tensor, z_b: Tensor, *, maps_a: Tensor, maps_b: Tensor, grid_a: Tensor,
                   grid_b: Tensor, anchor_rows: slice | None = None) -> LossTerms:
        return vicregl_terms(z_a, z_b, maps_a, maps_b, grid_a, grid_b, self.invariance_weight,
                             self.variance_weight, self.covariance_weight, self.alpha, self.num_matches,
                             self.l2_all_matches, self.match_order, self.eps, anchor_rows)

    def extra_repr(self) -> str:
        return (f"invariance_weight={self.invariance_weight}, variance_weight={self.variance_weight}, "
                f"covariance_weight={self.covariance_weight}, alpha={self.alpha}, num_matches={self.num_matches}, "
                f"l2_all_matches={self.l2_all_matches}, match_order={self.match_order!r}")
