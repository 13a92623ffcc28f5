"""Image encoders (backbones): a normalised float batch (B, C, H, W) -> features (B, output_dim).

Built-in names: ``small-cnn`` (tiny images), ``resnet18``, ``resnet50`` (the CIFAR 3x3 stem without
max-pool is used when ``image_size <= 64``; pass ``cifar_stem=True/False`` to force it), the vision
transformers ``vit-micro``, ``vit-tiny``, ``vit-small`` (:mod:`.vit`: any image size, ``patch_size``,
``pooling``, ``positions``; ``tokens(images, keep_index)`` for masked methods), and ``timm:NAME``
for any timm model when timm is installed. Every encoder has an ``output_dim`` attribute and ends
with a global pooling. Example::

    encoder = build_encoder("resnet18", in_channels=3, image_size=32, width=0.5)
    features = encoder(images)  # (B, encoder.output_dim) = (B, 256)
"""

from __future__ import annotations

import inspect
from typing import Any

from torch import nn

from contrastkit.modalities.image.encoders.cnn import SmallCNN
from contrastkit.modalities.image.encoders.resnet import ResNet, resnet18, resnet50
from contrastkit.modalities.image.encoders.timm_adapter import PREFIX as TIMM_PREFIX
from contrastkit.modalities.image.encoders.timm_adapter import timm_encoder
from contrastkit.modalities.image.encoders.vit import VisionTransformer, vit_micro, vit_sized, vit_small, vit_tiny
from contrastkit.core.errors import ConfigError
from contrastkit.core.registry import Registry

ENCODERS = Registry("backbone")
ENCODERS.register("small-cnn")(SmallCNN)
ENCODERS.register("resnet18")(resnet18)
ENCODERS.register("resnet50")(resnet50)
ENCODERS.register("vit-micro")(vit_micro)
ENCODERS.register("vit-tiny")(vit_tiny)
ENCODERS.register("vit-small")(vit_small)
ENCODERS.register("vit")(vit_sized)  # explicit dim / depth / heads: exports of --backbone auto ViTs


def build_encoder(
    name: str, in_channels: int, image_size: int, width: float = 1.0, **kwargs: Any
) -> nn.Module:
    """The encoder called ``name`` for ``in_channels``-channel images of side ``image_size``.

    ``width`` multiplies the channels of the built-in encoders (ignored by ``timm:`` models);
    ``kwargs`` go to the encoder's constructor (``cifar_stem``, ``zero_init_residual`` for the
    ResNets; ``timm.create_model`` options for ``timm:`` names). Unknown names raise
    ``ConfigError`` with the closest valid names.
    """
    if in_channels < 1 or image_size < 1:
        raise ConfigError(
            f"Encoder '{name}' needs positive in_channels and image_size, got in_channels="
            f"{in_channels}, image_size={image_size}; take them from the image source's shape."
        )
    if name.startswith(TIMM_PREFIX):
        return timm_encoder(name[len(TIMM_PREFIX) :], in_channels, image_size, **kwargs)
    try:
        factory = ENCODERS.factory(name)
    except ConfigError as error:
        raise ConfigError(f"{error} Any timm model is available as 'timm:NAME'.") from None
    options = dict(in_channels=in_channels, image_size=image_size, width=width, **kwargs)
    try:
        inspect.signature(factory).bind(**options)
    except TypeError as error:
        raise ConfigError(
            f"Backbone '{name}' does not take the options {sorted(kwargs)} ({error}); its "
            f"options are: {', '.join(inspect.signature(factory).parameters)}."
        ) from None
    return factory(**options)


__all__ = ["ENCODERS", "ResNet", "SmallCNN", "VisionTransformer", "build_encoder", "resnet18", "resnet50"]
