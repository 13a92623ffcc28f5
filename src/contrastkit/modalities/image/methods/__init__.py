"""Methods: each one short file composing views, encoder, heads and objective with its paper's recipe.

A method is an ``nn.Module`` with
- ``training_loss(batch) -> (loss, logs)``: ``batch`` holds ``image`` (uint8 (B, C, H, W), on the
  training device), ``index`` (the samples' stable ids) and ``label`` (-1 when unknown, never used
  for self-supervised losses);
- ``embed(images) -> Tensor``: the representation used downstream (backbone features, eval view);
- ``project_embedding(embedding) -> Tensor``: from ``embed``'s output to the space where the
  objective acts (the projection head), where collapse diagnostics are measured; the two are
  computed in one pass;
- optionally ``projection_max_rank``: the most rank ``project_embedding``'s outputs can have by
  construction, where it is below their width (DINO's logits, a linear map of a narrower
  bottleneck), so that the effective-rank floor is 2 % of what is attainable;
- optionally ``after_optimizer_step(step, total_steps)`` for momentum (EMA) updates;
- optionally ``objective_distributions(images) -> {name: (B, K) tensor}``: distributions over K
  outputs that the objective compares (OBoW's, DINO's and MSN's targets, SwAV's predictions), whose
  collapse (the same distribution for every image) the diagnostics also flag.

Each method module has ``build(config, data) -> method``: the builder turns the run's
configuration into the method's explicit constructor arguments, so the method itself never sees the
config object. The builders are registered, by name and without being imported, in the one method
registry (:data:`contrastkit.core.registry.METHODS`, from :mod:`contrastkit.modalities.image.plugin`);
:func:`build_method` imports the one a run needs.
"""

from __future__ import annotations

from typing import Any

from contrastkit.core.registry import METHODS
from contrastkit.modalities.image import plugin as _plugin  # noqa: F401  (registers the image methods)


def image_builder(name: str):
    """The builder ``build(config, data)`` of the image method ``name`` (ConfigError if unknown)."""
    return METHODS.load("image", name)


def build_method(name: str, config: Any, data: Any):
    """The image method ``name`` for ``config`` and ``data`` (a :class:`~.parts.DataInfo`)."""
    return image_builder(name)(config=config, data=data)


def image_method_names() -> list[str]:
    return METHODS.names("image")
