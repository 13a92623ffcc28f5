"""Views: random (training) and deterministic (evaluation) transforms applied to whole batches on
the training device. Image views live in :mod:`contrastkit.modalities.image.views.image`; each other modality has
its own module beside it."""

from __future__ import annotations

from contrastkit.modalities.image.views.image import BYOLViews, EvalView, SimCLRViews, defaults_for

__all__ = ["BYOLViews", "EvalView", "SimCLRViews", "defaults_for"]
