"""Two text towers from local model folders: the usual setup for code search (docstring and code)
and for any text-text pair set."""

from __future__ import annotations

from torch import nn

from contrastkit.core.errors import ConfigError
from contrastkit.modalities.pairs.towers import TextInput
from contrastkit.modalities.pairs.two_tower import TwoTower, TwoTowerOptions, build_two_tower
from contrastkit.modalities.text.encoders import TextEncoder


def freeze_unused_pooler(encoder: TextEncoder) -> TextEncoder:
    """Stop training the Transformer's pooler (BERT's dense layer over [CLS]), in place.

    A :class:`TextEncoder` pools the last hidden states itself, so the pooler never gets a
    gradient; DDP, which expects a gradient of every trainable parameter, would fail at the next step."""
    pooler = getattr(encoder.transformer, "pooler", None)
    if isinstance(pooler, nn.Module):
        pooler.requires_grad_(False)
    return encoder


def text_two_tower(options: TwoTowerOptions, backbone_a: str = "minilm", backbone_b: str | None = None,
                   shared: bool = True, max_length_a: int = 64, max_length_b: int = 128,
                   augment_rate_a: float = 0.0, augment_rate_b: float = 0.0
                   ) -> tuple[TwoTower, TextInput, TextInput]:
    """A :class:`TwoTower` over :class:`TextEncoder` towers, with the tower inputs.

    ``shared=True`` uses one encoder for both sides (``backbone_b`` must then be unset or equal);
    otherwise side b loads ``backbone_b`` (default: the same folder, as an independent copy).
    ``augment_rate_*`` is the soft-augmentation rate of each side's second view.
    """
    if shared and backbone_b not in (None, backbone_a):
        raise ConfigError(f"Shared towers use one backbone, but a second one was given ({backbone_b!r}); "
                          "use separate towers (--separate-towers) or drop the second backbone.")
    encoder_a = freeze_unused_pooler(TextEncoder.from_folder(backbone_a))
    encoder_b = None if shared else freeze_unused_pooler(TextEncoder.from_folder(backbone_b or backbone_a))
    model = build_two_tower(encoder_a, encoder_b, options)
    input_a = TextInput(encoder_a.tokenizer, max_length_a, augment_rate_a)
    input_b = TextInput((encoder_b or encoder_a).tokenizer, max_length_b, augment_rate_b)
    return model, input_a, input_b
