"""Methods: each one short file composing views, encoder, heads and objective with its paper's recipe.

A method is an ``nn.Module`` with
- ``training_loss(batch) -> (loss, logs)``: ``batch`` holds ``image`` (uint8 (B, C, H, W), on the
  training device), ``index`` (the samples' stable ids) and ``label`` (-1 when unknown, never used
  for self-supervised losses);
- ``embed(images) -> Tensor``: the representation used downstream (backbone features, eval view);
- ``project_embedding(embedding) -> Tensor``: from ``embed``'s output to the space where the
  objective acts (the projection head), where collapse diagnostics are measured; the two are
  computed in one pass;
- optionally ``after_optimizer_step(step, total_steps)`` for momentum (EMA) updates.

``METHODS`` maps a name to ``build(config, data) -> method``: the builder turns the run's
configuration into the method's explicit constructor arguments, so the method itself never sees the
config object.
"""

from __future__ import annotations

import importlib
import pkgutil

from contrastkit.core.registry import Registry

METHODS = Registry("method")

for _module in pkgutil.iter_modules(__path__):
    if not _module.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_module.name}")
