"""What a tower needs besides its encoder: turning raw samples into a batch, an optional
augmentation of that batch, and the projection head into the joint space.

A *tower encoder* is any ``nn.Module`` that maps a batch to a (B, D) tensor (a
:class:`~contrastkit.modalities.text.encoders.TextEncoder` maps a dict of token tensors; an image CNN maps a
(B, C, H, W) tensor). Its *input* is an object with two methods:

- ``collate(samples) -> batch``: a list of raw samples (texts, tensors) to what the encoder takes;
- ``augment(batch, generator) -> batch``: a randomly changed copy (the momentum encoder's and the
  in-modality loss's view); returning the batch itself means "no augmentation" -- dropout then
  makes the second view differ (SimCSE).

:class:`TextInput` tokenizes and applies CoCoSoDa's soft augmentation; :class:`TensorInput` stacks
tensors (images, precomputed features) and applies any batch transform.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from contrastkit.core.errors import ConfigError, DataError
from contrastkit.nn.heads import ProjectionHead
from contrastkit.modalities.text.soft_augment import soft_augment

HEADS = ("linear", "mlp", "none")


class TowerInput(Protocol):
    def collate(self, samples: Sequence[Any]) -> Any: ...

    def augment(self, batch: Any, generator: torch.Generator | None) -> Any: ...


@dataclass
class TextInput:
    """Texts -> token tensors (padded to the batch's longest, cut at ``max_length`` tokens);
    augmentation: :func:`~contrastkit.modalities.text.soft_augment.soft_augment` at ``augment_rate``."""

    tokenizer: Any
    max_length: int
    augment_rate: float = 0.0

    def __post_init__(self) -> None:
        if self.max_length < 2:
            raise ConfigError(f"A text tower's max_length must be at least 2 tokens, got {self.max_length}.")
        if not 0.0 <= self.augment_rate <= 1.0:
            raise ConfigError(f"A text tower's augment rate must be in [0, 1], got {self.augment_rate}.")

    def collate(self, samples: Sequence[Any]) -> dict[str, Tensor]:
        bad = next((i for i, s in enumerate(samples) if not isinstance(s, str)), None)
        if bad is not None:
            raise DataError(f"A text tower got a {type(samples[bad]).__name__} instead of a string (item {bad} "
                            "of the batch); choose a text field for this side of the pairs.")
        return dict(self.tokenizer(list(samples), padding=True, truncation=True,
                                   max_length=self.max_length, return_tensors="pt"))

    def augment(self, batch: dict[str, Tensor], generator: torch.Generator | None) -> dict[str, Tensor]:
        if self.augment_rate == 0.0:
            return batch
        ids = soft_augment(batch["input_ids"], batch["attention_mask"], self.augment_rate, self.tokenizer, generator)
        return {**batch, "input_ids": ids}


@dataclass
class TensorInput:
    """Tensors (or arrays) of one shape -> a stacked batch of ``dtype`` (None: the samples' own, e.g.
    uint8 images for an image method's ``embed``, which reads uint8 as 0..255 and floats as 0..1);
    ``transform(batch, generator)`` (optional) makes the augmented view."""

    transform: Callable[[Tensor, torch.Generator | None], Tensor] | None = None
    dtype: torch.dtype | None = torch.float32

    def collate(self, samples: Sequence[Any]) -> Tensor:
        try:
            batch = torch.stack([torch.as_tensor(s) for s in samples])
            return batch if self.dtype is None else batch.to(self.dtype)
        except (RuntimeError, TypeError) as error:
            raise DataError(f"A tensor tower could not stack its samples into one batch: {error}. "
                            "Every sample must be an array of the same shape.") from error

    def augment(self, batch: Tensor, generator: torch.Generator | None) -> Tensor:
        return batch if self.transform is None else self.transform(batch, generator)


class EmbeddingTower(nn.Module):
    """A self-supervised method of any modality as a tower encoder: ``forward(batch)`` is
    ``method.embed(batch)`` with gradients (an image method's backbone over its evaluation view, an
    audio method's pooled frames, ...), so a pretrained encoder (``contrastkit.load(RUN)``) or a freshly
    built one (the random-initialisation baseline) trains inside a two-tower model as it embeds
    after pretraining. The method's other parts (projection heads, targets) get no gradient and so
    do not move. ``output_dim``: given, else the method's (or its ``encoder``'s / ``backbone``'s)."""

    def __init__(self, method: nn.Module, output_dim: int | None = None):
        super().__init__()
        self.method = method
        if output_dim is None:
            owners = (method, getattr(method, "encoder", None), getattr(method, "backbone", None))
            output_dim = next((o.output_dim for o in owners if isinstance(getattr(o, "output_dim", None), int)), None)
        if output_dim is None:
            raise ConfigError(f"{type(method).__name__} says nothing of its embedding size (no output_dim on it, its "
                              "encoder or its backbone); pass output_dim.")
        self.output_dim = int(output_dim)

    def forward(self, batch: Any) -> Tensor:
        return self.method.embed(batch)


def output_dim_of(encoder: nn.Module, given: int | None, side: str) -> int:
    """The encoder's embedding size: ``given``, else its ``output_dim`` attribute."""
    if given is not None:
        return int(given)
    dim = getattr(encoder, "output_dim", None)
    if not isinstance(dim, int):
        raise ConfigError(f"The {side} tower's encoder ({type(encoder).__name__}) has no integer 'output_dim'; "
                          f"pass its embedding size (dim_{side}).")
    return dim


def projection_head(kind: str, in_dim: int, out_dim: int) -> nn.Module:
    """The head from a tower's features into the joint space.

    - ``linear``: CLIP's bias-free linear projection; initialised at the identity when
      ``in_dim == out_dim``, so a pretrained tower starts from its own embedding space (a random
      projection would first scramble it).
    - ``mlp``: ``Linear -> ReLU -> Linear`` with hidden size ``in_dim`` (no BatchNorm: batch
      statistics would differ between training batches and retrieval batches).
    - ``none``: the identity (needs ``in_dim == out_dim``).
    """
    if kind == "linear":
        head = nn.Linear(in_dim, out_dim, bias=False)
        if in_dim == out_dim:
            with torch.no_grad():
                head.weight.copy_(torch.eye(in_dim))
        return head
    if kind == "mlp":
        return ProjectionHead(in_dim, in_dim, out_dim, num_layers=2, batch_norm=False)
    if kind == "none":
        if in_dim != out_dim:
            raise ConfigError(f"head 'none' keeps the tower's {in_dim} features, but the joint space has "
                              f"{out_dim} dimensions; use head 'linear' or 'mlp' to project.")
        return nn.Identity()
    raise ConfigError(f"Unknown projection head '{kind}'. Valid heads: {', '.join(HEADS)}.")
