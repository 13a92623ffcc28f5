"""contrastkit: self-supervised representation learning with contrastive and related objectives.

    import contrastkit
    run = contrastkit.fit(method="simclr", data="digits", max_epochs=5, out="runs/simclr-digits")
    model = contrastkit.load(run["out"])          # the trained method, ready to embed
    loss = contrastkit.objectives.get("dcl", temperature=0.1)

``contrastkit.fit`` mirrors ``contrastkit fit`` (the same methods, data and options; the method
registry is :data:`contrastkit.METHODS`). The estimators (``TS2Vec``, ``SCARF``, ``CLAN``) train
in-process on arrays. Names resolve on first use, so ``import contrastkit`` is light.
"""

__version__ = "0.1.0"

from contrastkit.core.lazy import lazy_attributes  # noqa: E402

_EXPORTS = {
    "fit": ("contrastkit.fit_command", "fit"),
    "load": ("contrastkit.loading", "load"),
    "METHODS": ("contrastkit.core.registry", "METHODS"),
    "TS2Vec": ("contrastkit.modalities.timeseries.ts2vec", "TS2Vec"),
    "SCARF": ("contrastkit.modalities.tabular.estimators", "SCARF"),
    "CLAN": ("contrastkit.modalities.tabular.estimators", "CLAN"),
    "TextEncoder": ("contrastkit.modalities.text.encoders", "TextEncoder"),
    "ContrastkitError": ("contrastkit.core.errors", "ContrastkitError"),
    "ConfigError": ("contrastkit.core.errors", "ConfigError"),
    "DataError": ("contrastkit.core.errors", "DataError"),
}
_SUBMODULES = ("objectives", "engine", "evaluation", "modalities", "nn", "core", "report", "recipes")

__all__ = ["__version__", *_EXPORTS, *_SUBMODULES]


__getattr__, __dir__ = lazy_attributes(__name__, _EXPORTS, _SUBMODULES)
