"""Soft data augmentation of token sequences (CoCoSoDa): dynamic masking and replacement.

CoCoSoDa (Shi et al. 2023) augments code on the fly, at every step, by changing a small share of
its tokens: *dynamic masking* replaces a token by the tokenizer's mask token, *dynamic replacement*
by another token of the vocabulary. Unlike a fixed augmented copy, each step sees a new variant,
and the sequence keeps its length, its special tokens and its padding, so the attention mask is
unchanged.

For row ``i`` with ``n_i`` eligible tokens (attention mask 1, not a special token)::

    k_i      = round(rate * n_i)                      tokens are chosen, uniformly without repetition
    chosen t -> mask token        with probability mask_share
             -> a different non-special vocabulary token, uniformly, otherwise

so exactly ``k_i`` positions of row ``i`` differ from the input (a replacement never draws the
original token). A tokenizer without a mask token only replaces.

References:
    - Shi et al., "CoCoSoDa: Effective Contrastive Learning for Code Search", ICSE 2023.
      https://arxiv.org/abs/2204.03293
"""

from __future__ import annotations

import torch
from torch import Tensor

from contrastkit.core.errors import ConfigError, DataError


def eligible_positions(input_ids: Tensor, attention_mask: Tensor, special_ids: Tensor) -> Tensor:
    """Boolean (B, L): tokens that are real (mask 1) and not special ([CLS], [SEP], [PAD], ...)."""
    return attention_mask.bool() & ~torch.isin(input_ids, special_ids)


def _choose_exactly(eligible: Tensor, rate: float, generator: torch.Generator | None) -> Tensor:
    # Random scores, ineligible positions pushed last; the k_i smallest scores of row i win.
    scores = torch.rand(eligible.shape, generator=generator, device=eligible.device)
    scores = scores.masked_fill(~eligible, 2.0)
    counts = torch.round(eligible.sum(1).to(torch.float64) * rate).long()  # k_i
    ranks = scores.argsort(dim=1).argsort(dim=1)  # rank of each position's score in its row
    return ranks < counts[:, None]


def soft_augment(
    input_ids: Tensor,
    attention_mask: Tensor,
    rate: float,
    tokenizer,
    generator: torch.Generator | None = None,
    *,
    mask_share: float = 0.5,
) -> Tensor:
    """A copy of ``input_ids`` (B, L) with ``round(rate * n_i)`` eligible tokens of each row masked
    or replaced (see the module docstring); the input is not modified.

    Args:
        input_ids: (B, L) token ids from ``tokenizer``.
        attention_mask: (B, L) 0/1 mask; padding (0) is never changed.
        rate: share of each row's eligible tokens to change, in [0, 1] (CoCoSoDa: 0.1-0.2).
        tokenizer: a Hugging Face tokenizer (``all_special_ids``, ``mask_token_id``, ``len()``).
        generator: a ``torch.Generator`` for reproducible draws (on ``input_ids``' device);
            None uses torch's global generator.
        mask_share: probability that a chosen token becomes the mask token rather than a random one.
    """
    if not 0.0 <= rate <= 1.0:
        raise ConfigError(f"soft_augment: rate must be in [0, 1], got {rate}; CoCoSoDa uses 0.1-0.2.")
    if not 0.0 <= mask_share <= 1.0:
        raise ConfigError(f"soft_augment: mask_share must be in [0, 1], got {mask_share}.")
    if input_ids.shape != attention_mask.shape or input_ids.dim() != 2:
        raise DataError(
            f"soft_augment: input_ids {tuple(input_ids.shape)} and attention_mask "
            f"{tuple(attention_mask.shape)} must both be (batch, length)."
        )
    device = input_ids.device
    vocabulary_size = len(tokenizer)
    special_ids = torch.tensor(sorted(set(tokenizer.all_special_ids)), dtype=input_ids.dtype, device=device)
    eligible = eligible_positions(input_ids, attention_mask, special_ids)
    augmented = input_ids.clone()
    if rate == 0.0 or not eligible.any():
        return augmented
    chosen = _choose_exactly(eligible, rate, generator)

    # Replacement: the non-special vocabulary as a list; an original at list index p becomes the
    # entry p + o (mod V') with o uniform in [1, V' - 1], which is never the original itself.
    ordinary = torch.ones(vocabulary_size, dtype=torch.bool, device=device)
    ordinary[special_ids[special_ids < vocabulary_size]] = False
    ordinary_ids = ordinary.nonzero().squeeze(1).to(input_ids.dtype)
    if ordinary_ids.numel() < 2:
        raise ConfigError("soft_augment: the tokenizer has fewer than two non-special tokens to replace with.")
    list_index = torch.cumsum(ordinary.long(), 0) - 1  # token id -> its index in ordinary_ids
    originals = input_ids[chosen]
    offsets = torch.randint(1, ordinary_ids.numel(), originals.shape, generator=generator, device=device)
    replacements = ordinary_ids[(list_index[originals] + offsets) % ordinary_ids.numel()]

    mask_id = tokenizer.mask_token_id
    if mask_id is not None and mask_share > 0:
        masked = torch.rand(originals.shape, generator=generator, device=device) < mask_share
        replacements = torch.where(masked, torch.full_like(replacements, mask_id), replacements)
    augmented[chosen] = replacements
    return augmented
