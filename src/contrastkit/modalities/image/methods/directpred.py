"""DirectPred (Tian, Chen & Ganguli, "Understanding self-supervised learning dynamics without
contrastive pairs", ICML 2021, Sec. 5) and DirectCopy (Wang, Chen, Du & Tian, "Towards
demystifying representation learning with non-contrastive self-supervision", 2021).

BYOL (or, with ``target: online``, SimSiam) whose linear predictor is not trained but set from the
statistics of its input ``f`` (the online projection)::

    F <- rho F + (1 - rho) E_B[f f^T]                       every step, over the global batch
    F = U diag(s) U^T  (s_j < 0 set to 0)                   every `frequency` steps
    W_p = U diag(p) U^T,  p_j = sqrt(s_j / max_k s_k) + eps     (DirectPred)
    W_p = F / ||F||_2 + eps I                                   (DirectCopy, `directcopy: true`)

The paper's result: this predictor matches BYOL's trained two-layer predictor and beats a trained
linear one; its analysis shows that a trained linear predictor's eigenvectors align with F's
(logged each epoch as ``diag/predictor_eigen_alignment``).

Options (YAML ``extra: {directpred: {...}}``):
    rho: averaging rate of F (paper: 0.3).
    eps: eigenvalue boost (paper: 0.1).
    frequency: steps between recomputations of W_p (default 1: every step; d x d eigh is cheap
        next to a backbone pass).
    directcopy: use DirectCopy's W_p (default false).
    target: ``ema`` (BYOL's EMA target, the paper's setting; default) or ``online`` (SimSiam's
        stop-gradient on the online network).
    momentum: BYOL's base EMA rate m_0 (default 0.99, see :mod:`contrastkit.modalities.image.methods.byol`).
"""

from __future__ import annotations

from torch import nn

from contrastkit.core.errors import ConfigError
from contrastkit.nn.momentum import check_momentum
from contrastkit.modalities.image.methods.parts import DataInfo, method_options
from contrastkit.nn.predictors import DirectPredictor
from contrastkit.modalities.image.methods.byol import BYOL, byol_parts
from contrastkit.modalities.image.methods.simsiam import SimSiam

DEFAULTS = {"rho": 0.3, "eps": 0.1, "frequency": 1, "directcopy": False, "target": "ema", "momentum": 0.99}


def build(config, data: DataInfo) -> nn.Module:
    options = method_options(config, "directpred", DEFAULTS)
    backbone, projection, views, eval_view, _ = byol_parts(config, data, predictor_hidden_dim=None)
    predictor = DirectPredictor(config.projection_dim, rho=options["rho"], eps=options["eps"],
                                frequency=options["frequency"], directcopy=bool(options["directcopy"]))
    if options["target"] == "ema":
        # One pass over both views (DirectPredictor updates its estimate once per call).
        return BYOL(backbone, projection, predictor, views, eval_view,
                    base_momentum=check_momentum(options["momentum"], "extra.directpred.momentum"),
                    separate_view_passes=False)
    if options["target"] == "online":
        # One pass over both views, as measured so far (DirectPredictor updates its estimate once per call).
        return SimSiam(backbone, projection, predictor, views, eval_view, stop_gradient=True,
                       separate_view_passes=False)
    raise ConfigError(f"extra.directpred.target must be 'ema' (BYOL) or 'online' (SimSiam), got {options['target']!r}.")
