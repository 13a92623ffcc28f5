"""The catalogue of objectives: embeddings in, scalar loss out.

``get(name, **kwargs)`` builds an objective by its registered name; ``OBJECTIVES.names()`` lists
them. Two-view objectives are called ``loss = objective(z_a, z_b, **extra)`` where row ``i`` of
``z_a`` and ``z_b`` are two views (or two modalities) of sample ``i``; extra inputs (``labels``,
``indices``, ``weights``, ``keys``) are explicit keyword arguments. Each module wraps a pure
function whose docstring gives the formula and the paper.

Adding an objective: create a module in this package (its name must not start with ``_``) and
decorate the class with ``@OBJECTIVES.register("name", "alias")`` (``OBJECTIVES`` from
:mod:`contrastkit.objectives.registry`); every module here is imported
when the package is, so nothing needs to be edited in this file. To be usable under
data-parallel training, follow the ``loss_terms`` / ``per_sample_inputs`` protocol described in
:mod:`contrastkit.nn.distributed` (the base :class:`ContrastiveObjective` implements ``forward`` from
``loss_terms``), and add a case to ``tests/objective_cases.py`` if it needs extra inputs.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Any

from torch import nn

from contrastkit.objectives.registry import OBJECTIVES


def get(name: str, **kwargs: Any) -> nn.Module:
    """Build the objective registered as ``name`` (unknown names raise ConfigError with suggestions)."""
    return OBJECTIVES.build(name, **kwargs)


# Import every public module so that its @OBJECTIVES.register decorators run (the modules import
# OBJECTIVES from the leaf module objectives.registry, never from this package).
for _module in pkgutil.iter_modules(__path__):
    if not _module.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_module.name}")

from contrastkit.objectives.base import ContrastiveObjective, LossTerms  # noqa: E402
from contrastkit.objectives.chunked import masked_logsumexp  # noqa: E402
from contrastkit.objectives.clip import CLIPLoss, SigLIPLoss, clip_terms, siglip_terms  # noqa: E402
from contrastkit.objectives.clustering import (  # noqa: E402
    DeepClusteringKL,
    deep_clustering_kl,
    student_t_assignments,
    target_distribution,
)
from contrastkit.objectives.dcl import DCL, DCLW, dcl_terms  # noqa: E402
from contrastkit.objectives.distillation import ListwiseDistillation, listwise_distillation  # noqa: E402
from contrastkit.objectives.forecasting import ForecastContrastive, forecast_contrastive_loss  # noqa: E402
from contrastkit.objectives.hcl import HCL, hcl_terms  # noqa: E402
from contrastkit.objectives.infonce import InfoNCE, ntxent_terms  # noqa: E402
from contrastkit.objectives.masked_prediction import MaskedTokenRegression, masked_token_regression  # noqa: E402
from contrastkit.objectives.neighbour import NeighbourContrast, neighbour_contrastive_loss  # noqa: E402
from contrastkit.objectives.predictive import (  # noqa: E402
    NegativeCosine,
    NormalizedMSE,
    negative_cosine,
    normalized_mse,
)
from contrastkit.objectives.query_key import (  # noqa: E402
    InBatchSoftmax,
    QueryKeyInfoNCE,
    in_batch_softmax_loss,
    query_key_infonce,
    query_key_terms,
)
from contrastkit.objectives.queued_clip import QueuedCLIP, queued_clip_terms  # noqa: E402
from contrastkit.objectives.reconstruction import ScaledCosineError, scaled_cosine_error  # noqa: E402
from contrastkit.objectives.supcon import SupCon, supcon_terms  # noqa: E402

__all__ = [
    "OBJECTIVES",
    "get",
    "ContrastiveObjective",
    "LossTerms",
    "masked_logsumexp",
    "InfoNCE",
    "ntxent_terms",
    "DCL",
    "DCLW",
    "dcl_terms",
    "HCL",
    "hcl_terms",
    "SupCon",
    "supcon_terms",
    "CLIPLoss",
    "clip_terms",
    "SigLIPLoss",
    "siglip_terms",
    "QueuedCLIP",
    "queued_clip_terms",
    "QueryKeyInfoNCE",
    "query_key_infonce",
    "query_key_terms",
    "InBatchSoftmax",
    "in_batch_softmax_loss",
    "NormalizedMSE",
    "normalized_mse",
    "NegativeCosine",
    "negative_cosine",
    "ScaledCosineError",
    "scaled_cosine_error",
    "NeighbourContrast",
    "neighbour_contrastive_loss",
    "ForecastContrastive",
    "forecast_contrastive_loss",
    "DeepClusteringKL",
    "deep_clustering_kl",
    "student_t_assignments",
    "target_distribution",
    "MaskedTokenRegression",
    "masked_token_regression",
    "ListwiseDistillation",
    "listwise_distillation",
]
