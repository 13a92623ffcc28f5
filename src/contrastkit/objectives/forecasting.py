"""Forecasting with a contrastive term: the MSE of the forecasts plus a weighted NT-Xent of two views.

Yan, Zhang, Meng and Sylvain, "What Constitutes Good Contrastive Learning in Time-Series
Forecasting?", IJCAI 2023 AI4TS workshop (https://arxiv.org/abs/2306.12086): a Transformer
trained end to end on ``MSE + contrastive_weight * InfoNCE`` forecasts best. Used by
:mod:`contrastkit.recipes.forecasting`; the InfoNCE is the catalogue's
:func:`~contrastkit.objectives.infonce.ntxent_terms`.
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from contrastkit.core.errors import ConfigError, DataError
from contrastkit.objectives.registry import OBJECTIVES
from contrastkit.objectives.base import ContrastiveObjective, LossTerms, anchor_range, check_temperature
from contrastkit.objectives.infonce import ntxent_terms


def forecast_contrastive_loss(
    forecast: Tensor,
    target: Tensor,
    z_a: Tensor | None,
    z_b: Tensor | None,
    contrastive_weight: float,
    temperature: float,
) -> tuple[Tensor, Tensor, Tensor]:
    """``(loss, mse, contrastive)`` with ``loss = mse + contrastive_weight * contrastive``.

    ``mse = mean((forecast - target)^2)``; ``contrastive`` is NT-Xent/InfoNCE between the two
    views' projections ``z_a``, ``z_b`` (rows i = the two views of window i), see
    :class:`contrastkit.objectives.InfoNCE`. With ``contrastive_weight == 0`` (or no views)
    the loss is exactly the MSE and the contrastive term is reported as 0.
    """
    mse = F.mse_loss(forecast, target)
    if contrastive_weight == 0 or z_a is None or z_b is None:
        return mse, mse, torch.zeros((), device=mse.device)
    contrastive = ntxent_terms(z_a, z_b, temperature).mean()
    return mse + contrastive_weight * contrastive, mse, contrastive


def forecast_contrastive_terms(
    forecast: Tensor,
    target: Tensor,
    z_a: Tensor,
    z_b: Tensor,
    contrastive_weight: float,
    temperature: float,
    anchor_rows: slice | None = None,
) -> LossTerms:
    """The terms of the windows ``anchor_rows`` (all when None), over ``2N``.

    Window ``i`` contributes ``2 * mean_h (forecast_ih - target_ih)^2`` and the NT-Xent terms of its
    two views times ``contrastive_weight``; their sum over all windows divided by ``2N`` is the loss of
    :func:`forecast_contrastive_loss`.
    """
    if forecast.shape != target.shape or forecast.dim() < 1 or forecast.shape[0] != z_a.shape[0]:
        raise DataError(
            f"forecast_contrastive: forecast {tuple(forecast.shape)} and target {tuple(target.shape)} must have "
            f"the same shape, with one row per window of the views {tuple(z_a.shape)}."
        )
    n = forecast.shape[0]
    rows = anchor_range(anchor_rows, n, forecast.device)
    values_per_window = forecast.numel() // n
    total = 2 * (forecast[rows] - target[rows]).pow(2).sum() / values_per_window  # 2 x the rows' mean squared errors
    if contrastive_weight != 0:
        total = total + contrastive_weight * ntxent_terms(z_a, z_b, temperature, anchor_rows=anchor_rows).total
    return LossTerms(total, 2 * n)


@OBJECTIVES.register("forecast_contrastive")
class ForecastContrastive(ContrastiveObjective):
    r"""MSE of the forecasts plus ``contrastive_weight`` times NT-Xent of two views of each window.

    For N windows with forecasts ``f_i`` and targets ``y_i`` (H values each) and the projections
    ``z_a``, ``z_b`` of two augmented views of the same windows::

        loss = 1/(N H) sum_{i, h} (f_ih - y_ih)^2  +  contrastive_weight * NTXent_temperature(z_a, z_b)

    with NT-Xent as in :class:`~contrastkit.objectives.infonce.InfoNCE` (the two views of a window
    are positives, the other windows' views negatives). ``contrastive_weight = 0`` is plain MSE.

    Called as ``objective(z_a, z_b, forecast=f, target=y)``; ``forecast`` and ``target`` are
    per-sample inputs (gathered across processes, the forecasts with their gradient), so the
    loss of two processes is that of one on the concatenated windows.

    Args:
        contrastive_weight: ``lambda`` (the paper's recipe: about 0.1).
        temperature: of the NT-Xent.

    References:
        - Yan, Zhang, Meng & Sylvain, "What Constitutes Good Contrastive Learning in Time-Series
          Forecasting?", IJCAI 2023 AI4TS workshop. https://arxiv.org/abs/2306.12086
        - Chen et al., "A Simple Framework for Contrastive Learning of Visual Representations",
          ICML 2020 (NT-Xent). https://arxiv.org/abs/2002.05709
    """

    per_sample_inputs: ClassVar[tuple[str, ...]] = ("forecast", "target")
    not_for_view_pairs = "it is a forecasting loss: it needs the forecasts and their targets beside the two views"

    def __init__(self, contrastive_weight: float = 0.1, temperature: float = 0.2):
        super().__init__()
        if not contrastive_weight >= 0:
            raise ConfigError(f"forecast_contrastive: contrastive_weight must be >= 0, got {contrastive_weight}.")
        self.contrastive_weight = float(contrastive_weight)
        self.temperature = check_temperature(temperature)

    def forward(self, z_a: Tensor, z_b: Tensor, *, forecast: Tensor, target: Tensor) -> Tensor:
        return forecast_contrastive_loss(forecast, target, z_a, z_b, self.contrastive_weight, self.temperature)[0]

    def loss_terms(self, z_a: Tensor, z_b: Tensor, *, forecast: Tensor, target: Tensor,
                   anchor_rows: slice | None = None) -> LossTerms:
        return forecast_contrastive_terms(forecast, target, z_a, z_b, self.contrastive_weight, self.temperature,
                                          anchor_rows)

    def extra_repr(self) -> str:
        return f"contrastive_weight={self.contrastive_weight}, temperature={self.temperature}"
