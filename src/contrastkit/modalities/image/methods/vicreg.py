"""VICReg (Bardes, Ponce & LeCun, "VICReg: Variance-Invariance-Covariance Regularization for
Self-Supervised Learning", ICLR 2022).

Barlow Twins' architecture (:class:`~contrastkit.modalities.image.methods.barlowtwins.JointEmbedding`:
one backbone and an expander, each view in its own pass as in the paper's code) with VICReg's loss
(:class:`contrastkit.objectives.vicreg.VICReg`): the mean squared error between the views'
embeddings, a hinge that keeps every dimension's batch std at or above 1, and a penalty on the
off-diagonal covariances. No negatives, no predictor, no momentum encoder.

Recipe, scaled to the image size:
    views: BYOL's asymmetric views (the paper follows BYOL's augmentations; blur dropped below 96 px).
    expander: Linear-BN-ReLU blocks then a Linear; three layers 2048 -> 8192 -> 8192 -> 8192 in
        the paper (ImageNet), two up to 64 pixels (as for Barlow Twins); hidden width 4x the
        backbone's output or ``--projection-hidden-dim``, output ``--projection-dim`` (the
        paper's output is as wide as the hidden layers).
    loss: lambda, mu, nu = 25, 25, 1 (the paper's, LightlySSL's ``VICRegLoss`` defaults).
        VICReg is not in LightlySSL's CIFAR-10 benchmark; its ImageNet benchmark uses a
        two-layer expander and LARS (base rate 0.2-0.8 by batch size, weight decay 1e-6).

Data parallelism: the variance and covariance are statistics of the global batch, gathered with
gradient (:class:`~contrastkit.nn.distributed.GatheredObjective`) as in the paper's code, which also
uses global (synchronised) BatchNorm.

Options (YAML ``extra: {vicreg: {...}}``):
    invariance_weight, variance_weight, covariance_weight: lambda, mu, nu (25, 25, 1). With
        ``variance_weight: 0, covariance_weight: 0`` only the invariance term is left, and the
        embeddings collapse (tests/modalities/image/test_methods_redundancy.py).
"""

from __future__ import annotations

from contrastkit.modalities.image.methods.barlowtwins import JointEmbedding, joint_embedding_parts
from contrastkit.modalities.image.methods.parts import DataInfo, method_options
from contrastkit.nn.distributed import GatheredObjective
from contrastkit.objectives.vicreg import VICReg

DEFAULTS = {"invariance_weight": 25.0, "variance_weight": 25.0, "covariance_weight": 1.0}


def build(config, data: DataInfo) -> JointEmbedding:
    options = method_options(config, "vicreg", DEFAULTS)
    backbone, projection, views, eval_view = joint_embedding_parts(config, data)
    return JointEmbedding(backbone, projection, views, eval_view, GatheredObjective(VICReg(**options)),
                          config.grad_cache_chunk)
