"""Any backbone from timm (``timm:NAME``), randomly initialised, as a contrastkit encoder.

timm is optional and imported only when a ``timm:`` name is asked for. Models are created with
``pretrained=False`` (nothing is downloaded at run time) and ``num_classes=0``, which makes timm
return pooled features of size ``model.num_features``.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from contrastkit.core.errors import ConfigError

PREFIX = "timm:"


class TimmEncoder(nn.Module):
    """Wraps a timm model so that it exposes ``output_dim`` like the built-in encoders."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.output_dim = int(model.num_features)

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)


def timm_encoder(model_name: str, in_channels: int, image_size: int, **kwargs: Any) -> TimmEncoder:
    """Build timm model ``model_name`` for ``in_channels``-channel images.

    ``image_size`` is not passed on (most CNNs do not take it); give ``img_size=...`` in
    ``kwargs`` for models that need it, such as vision transformers. ``kwargs`` go to
    ``timm.create_model``.
    """
    try:
        import timm
    except ImportError as error:
        raise ConfigError(
            f"Backbone '{PREFIX}{model_name}' needs the optional package timm, which is not "
            "installed. Install it with `pip install timm` (keeping your torch version), or choose "
            "a built-in backbone: small-cnn, resnet18 or resnet50."
        ) from error
    if not timm.is_model(model_name):
        raise ConfigError(
            f"timm has no model named '{model_name}' (backbone '{PREFIX}{model_name}'). List the "
            "names with `python -c \"import timm; print(timm.list_models('*resnet*'))\"`."
        )
    model = timm.create_model(
        model_name, pretrained=False, num_classes=0, in_chans=in_channels, **kwargs
    )
    return TimmEncoder(model)
