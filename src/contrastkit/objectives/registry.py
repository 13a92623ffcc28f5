"""The registry of objectives by name (``--objective NAME``): a leaf module, so that the objective
modules register themselves without importing the package that imports them."""

from __future__ import annotations

from contrastkit.core.registry import Registry

OBJECTIVES = Registry("objective")
