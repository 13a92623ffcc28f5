"""Token-level views of tokenised text batches: the augmentations of SimCSE, Contriever and CoCoSoDa.

A batch of tokens is the tokenizer's dict: ``input_ids`` (B, L), ``attention_mask`` (B, L) and,
for BERT-like models, ``token_type_ids`` (B, L); rows are right-padded. Every view returns a new
dict of the same keys (the input is never modified) in which

- special tokens ([CLS], [SEP], [PAD], ...) are never altered, removed or moved relative to the
  content: only *content tokens* (attention mask 1 and not a special id) change;
- the attention mask is 1 exactly on the real tokens of each row, which come first, followed by
  padding (``pad_token_id``, mask 0, token type 0); views that drop tokens re-pad the batch to its
  new longest row.

All randomness comes from ``generator`` (a ``torch.Generator`` on the tokens' device; ``None``
draws from torch's global generator), so the same seed gives the same views.

The views, for a row whose content tokens are ``c_1 .. c_n``:

- identity (SimCSE, Gao et al. 2021): the tokens unchanged. Two forward passes in train mode
  differ only by dropout, which is SimCSE's "minimal data augmentation".
- random crop (Contriever, Izacard et al. 2022, Sec. 3.2 "independent cropping"):
  ``c_s .. c_{s+m-1}`` with ``m = max(1, round(r * n))``, ``r ~ U[min_ratio, max_ratio]`` (10 %
  to 50 % in the paper) and ``s ~ U{1 .. n - m + 1}``. Cropping is done *after* tokenisation, on
  word pieces, as Contriever's own code does (its spans are counted in tokens, not words); two
  calls give two independent crops, which may or may not overlap.
- deletion: each content token is dropped independently with probability ``rate`` (Contriever's
  ``delete`` augmentation, 0.1 in its pre-training); a row never loses all its content (if every
  token was drawn for deletion, the one with the highest draw stays).
- replacement: each content token becomes, with probability ``rate``, a token drawn uniformly from
  the vocabulary's non-special ids.
- masking: each content token becomes the tokenizer's mask token with probability ``rate``.
- shuffling: each content token is selected with probability ``rate`` and the selected tokens are
  permuted uniformly among their own positions (``rate = 1`` shuffles the whole row, as in
  ConSERT's token shuffle; Yan et al. 2021).
- soft augmentation (CoCoSoDa, Shi et al. 2023): exactly ``round(rate * n)`` tokens masked or
  replaced, from :func:`contrastkit.modalities.text.soft_augment.soft_augment`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
from torch import Tensor

from contrastkit.core.errors import ConfigError, DataError, unknown_name_message

Tokens = dict[str, Tensor]


@dataclass(frozen=True)
class TokenVocabulary:
    """What the views need to know about a tokenizer.

    Attributes:
        special_ids: ids that are never altered ([CLS], [SEP], [PAD], [MASK], [UNK], ...).
        pad_id: the id written into padding positions.
        mask_id: the mask token's id, or None when the tokenizer has none.
        ordinary_ids: the non-special ids, from which replacements are drawn.
        tokenizer: the tokenizer itself (soft augmentation asks it directly).
    """

    special_ids: Tensor
    pad_id: int
    mask_id: int | None
    ordinary_ids: Tensor
    tokenizer: object = None

    @classmethod
    def from_tokenizer(cls, tokenizer) -> TokenVocabulary:
        special = sorted(set(tokenizer.all_special_ids))
        size = len(tokenizer)
        ordinary = torch.ones(size, dtype=torch.bool)
        ordinary[[i for i in special if i < size]] = False
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        return cls(
            special_ids=torch.tensor(special, dtype=torch.long),
            pad_id=int(pad_id),
            mask_id=tokenizer.mask_token_id,
            ordinary_ids=ordinary.nonzero().squeeze(1),
            tokenizer=tokenizer,
        )


# ------------------------------------------------------------------------------------- helpers


def _check_tokens(tokens: Mapping[str, Tensor]) -> None:
    if "input_ids" not in tokens or "attention_mask" not in tokens:
        raise DataError(f"Text views need 'input_ids' and 'attention_mask', got keys {sorted(tokens)}.")
    ids, mask = tokens["input_ids"], tokens["attention_mask"]
    if ids.dim() != 2 or ids.shape != mask.shape:
        raise DataError(
            f"Text views need (batch, length) input_ids and attention_mask of the same shape, got "
            f"{tuple(ids.shape)} and {tuple(mask.shape)}."
        )


def _check_rate(rate: float, view: str) -> float:
    if not 0.0 <= rate <= 1.0:
        raise ConfigError(f"The {view} rate must be a probability in [0, 1], got {rate}; typical values are 0.1-0.2.")
    return float(rate)


def content_positions(tokens: Mapping[str, Tensor], vocabulary: TokenVocabulary) -> Tensor:
    """Boolean (B, L): real tokens (mask 1) that are not special -- the only ones views touch."""
    ids = tokens["input_ids"]
    return tokens["attention_mask"].bool() & ~torch.isin(ids, vocabulary.special_ids.to(ids.device))


def _uniform(shape: torch.Size, generator: torch.Generator | None, device: torch.device) -> Tensor:
    return torch.rand(shape, generator=generator, device=device)


def keep_positions(tokens: Mapping[str, Tensor], keep: Tensor, vocabulary: TokenVocabulary) -> Tokens:
    """The batch with only the positions where ``keep`` (B, L) is true, in order, re-padded.

    Special tokens among the real ones are always kept. Implemented as one stable sort per row
    that moves kept positions to the front, so it stays vectorised.
    """
    mask = tokens["attention_mask"].bool()
    keep = (keep & mask) | (mask & ~content_positions(tokens, vocabulary))
    order = torch.argsort((~keep).to(torch.int8), dim=1, stable=True)
    length = max(int(keep.sum(1).max()), 1)
    order = order[:, :length]
    kept = torch.gather(keep, 1, order)
    result = {}
    for name, value in tokens.items():
        gathered = torch.gather(value, 1, order)
        fill = vocabulary.pad_id if name == "input_ids" else 0
        result[name] = gathered.masked_fill(~kept, fill)
    result["attention_mask"] = kept.to(tokens["attention_mask"].dtype)
    return result


# --------------------------------------------------------------------------------------- views


def identity(tokens: Mapping[str, Tensor]) -> Tokens:
    """SimCSE's view: the same tokens (a copy); dropout makes the two encodings differ."""
    _check_tokens(tokens)
    return {name: value.clone() for name, value in tokens.items()}


def random_crop(tokens: Mapping[str, Tensor], vocabulary: TokenVocabulary, min_ratio: float = 0.1,
                max_ratio: float = 0.5, generator: torch.Generator | None = None,
                max_length: int | None = None) -> Tokens:
    """One random contiguous span of each row's content tokens (Contriever's cropping).

    Each row keeps ``m = max(1, round(r * n))`` consecutive content tokens starting at a uniform
    position, ``r ~ U[min_ratio, max_ratio]``; with ``max_length`` the span is also capped so the
    row (specials included) fits in ``max_length`` tokens. Specials stay around the span.
    """
    _check_tokens(tokens)
    if not 0.0 < min_ratio <= max_ratio <= 1.0:
        raise ConfigError(
            f"Crop ratios must satisfy 0 < min_ratio <= max_ratio <= 1, got min_ratio={min_ratio}, "
            f"max_ratio={max_ratio} (Contriever: 0.1 and 0.5)."
        )
    ids = tokens["input_ids"]
    content = content_positions(tokens, vocabulary)
    n = content.sum(1)  # (B,)
    ratio = min_ratio + (max_ratio - min_ratio) * _uniform(n.shape, generator, ids.device)
    span = torch.round(ratio * n).long().clamp_min(1)
    if max_length is not None:
        specials = tokens["attention_mask"].bool().sum(1) - n
        span = torch.minimum(span, (max_length - specials).clamp_min(1))
    span = torch.minimum(span, n)
    start = torch.floor(_uniform(n.shape, generator, ids.device) * (n - span + 1)).long()
    rank = torch.cumsum(content.long(), dim=1) - 1  # index of each content token within its row
    keep = content & (rank >= start[:, None]) & (rank < (start + span)[:, None])
    return keep_positions(tokens, keep, vocabulary)


def delete_tokens(tokens: Mapping[str, Tensor], vocabulary: TokenVocabulary, rate: float,
                  generator: torch.Generator | None = None) -> Tokens:
    """Drop each content token with probability ``rate``; at least one content token stays."""
    _check_tokens(tokens)
    rate = _check_rate(rate, "deletion")
    content = content_positions(tokens, vocabulary)
    draw = _uniform(content.shape, generator, content.device)
    keep = content & (draw >= rate)
    # A row that would lose all its content keeps its highest draw (a uniformly random token).
    emptied = content.any(1) & ~keep.any(1)
    survivor = torch.zeros_like(keep)
    survivor.scatter_(1, draw.masked_fill(~content, -1.0).argmax(1, keepdim=True), True)
    keep = keep | (survivor & emptied[:, None])
    return keep_positions(tokens, keep, vocabulary)


def replace_tokens(tokens: Mapping[str, Tensor], vocabulary: TokenVocabulary, rate: float,
                   generator: torch.Generator | None = None) -> Tokens:
    """Replace each content token, with probability ``rate``, by a uniform non-special token."""
    _check_tokens(tokens)
    rate = _check_rate(rate, "replacement")
    ids = tokens["input_ids"]
    chosen = content_positions(tokens, vocabulary) & (_uniform(ids.shape, generator, ids.device) < rate)
    ordinary = vocabulary.ordinary_ids.to(ids.device)
    picks = torch.randint(0, ordinary.numel(), ids.shape, generator=generator, device=ids.device)
    result = identity(tokens)
    result["input_ids"] = torch.where(chosen, ordinary[picks].to(ids.dtype), ids)
    return result


def mask_tokens(tokens: Mapping[str, Tensor], vocabulary: TokenVocabulary, rate: float,
                generator: torch.Generator | None = None) -> Tokens:
    """Replace each content token by the mask token with probability ``rate``."""
    _check_tokens(tokens)
    rate = _check_rate(rate, "masking")
    if vocabulary.mask_id is None:
        raise ConfigError("The masking view needs a tokenizer with a mask token; this one has none. "
                          "Use the 'replace' or 'delete' augmentation instead.")
    ids = tokens["input_ids"]
    chosen = content_positions(tokens, vocabulary) & (_uniform(ids.shape, generator, ids.device) < rate)
    result = identity(tokens)
    result["input_ids"] = ids.masked_fill(chosen, vocabulary.mask_id)
    return result


def shuffle_tokens(tokens: Mapping[str, Tensor], vocabulary: TokenVocabulary, rate: float = 1.0,
                   generator: torch.Generator | None = None) -> Tokens:
    """Select each content token with probability ``rate`` and permute the selected tokens
    uniformly among their own positions (``rate=1``: the whole content of each row)."""
    _check_tokens(tokens)
    rate = _check_rate(rate, "shuffling")
    ids = tokens["input_ids"]
    length = ids.shape[1]
    selected = content_positions(tokens, vocabulary) & (_uniform(ids.shape, generator, ids.device) < rate)
    positions = torch.arange(length, device=ids.device).expand_as(ids).to(torch.float64)
    # Both sort keys put the selected positions first (keys < 1) and the others after, in the
    # same order (keys 1 + position); so target[:, j] <- source[:, j] moves selected tokens only.
    tail = 1.0 + positions
    target = torch.argsort(torch.where(selected, positions / length, tail), dim=1)
    draw = _uniform(ids.shape, generator, ids.device).to(torch.float64)
    source = torch.argsort(torch.where(selected, draw, tail), dim=1)
    result = identity(tokens)
    result["input_ids"] = ids.scatter(1, target, torch.gather(ids, 1, source))
    return result


def soft_augment_tokens(tokens: Mapping[str, Tensor], vocabulary: TokenVocabulary, rate: float,
                        generator: torch.Generator | None = None) -> Tokens:
    """CoCoSoDa's soft augmentation (exactly ``round(rate * n)`` tokens masked or replaced)."""
    from contrastkit.modalities.text.soft_augment import soft_augment

    _check_tokens(tokens)
    result = identity(tokens)
    result["input_ids"] = soft_augment(tokens["input_ids"], tokens["attention_mask"], rate,
                                       vocabulary.tokenizer, generator=generator)
    return result


AugmentationFn = Callable[..., Tokens]
AUGMENTATIONS: dict[str, AugmentationFn | None] = {
    "none": None,
    "delete": delete_tokens,
    "replace": replace_tokens,
    "mask": mask_tokens,
    "shuffle": shuffle_tokens,
    "soft": soft_augment_tokens,
}


def check_augmentation(name: str) -> str:
    if name not in AUGMENTATIONS:
        raise ConfigError(unknown_name_message("text augmentation", name, AUGMENTATIONS))
    return name


def augment(tokens: Mapping[str, Tensor], vocabulary: TokenVocabulary, name: str, rate: float,
            generator: torch.Generator | None = None) -> Tokens:
    """Apply the token augmentation called ``name`` (one of :data:`AUGMENTATIONS`) at ``rate``."""
    view = AUGMENTATIONS[check_augmentation(name)]
    if view is None or rate == 0.0:
        return identity(tokens)
    return view(tokens, vocabulary, rate, generator=generator)
