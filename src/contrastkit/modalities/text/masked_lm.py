"""Masked-language-model parts: BERT's token corruption and a prediction head over the vocabulary.

Devlin, Chang, Lee & Toutanova, "BERT: Pre-training of Deep Bidirectional Transformers for Language
Understanding", NAACL 2019, Sec. 3.1 "Task #1: Masked LM" and Appendix A.1. Each ordinary token
(not padding, not [CLS] / [SEP] / other special tokens) is chosen with probability ``p`` (0.15); a
chosen token is replaced by [MASK] with probability 0.8, by a token drawn uniformly from the
vocabulary with probability 0.1, and kept with probability 0.1. The model predicts the original
token at every chosen position, and only there (:mod:`contrastkit.objectives.masked_tokens`).

all-MiniLM-L6-v2 ships no MLM head (a sentence-transformers model keeps only the encoder), so
:class:`MaskedLMHead` starts untrained and is trained with the method that uses it (ELECTRA's
generator in ``rtd-contrastive``, B-PROP's MLM term). Its decoder shares the input embedding matrix,
as BERT's does, so only the transform and a bias are new.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from contrastkit.core.errors import ConfigError, DataError

IGNORE_INDEX = -100  # the label of an unmasked position (PyTorch's cross-entropy default ignore_index)
MASK_SHARE = 0.8  # of the chosen tokens: [MASK] ...
RANDOM_SHARE = 0.1  # ... a random token; the remaining 0.1 keep the original


def mask_tokens(input_ids: Tensor, attention_mask: Tensor, special_tokens_mask: Tensor, mask_token_id: int,
                vocab_size: int, probability: float = 0.15,
                generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """BERT's 80/10/10 corruption: ``(masked_ids, labels)``, both (B, L) int64.

    ``labels`` holds the original id at each chosen position and ``IGNORE_INDEX`` (-100) elsewhere;
    ``masked_ids`` is ``input_ids`` with the chosen positions replaced by ``mask_token_id`` (80 %), a
    uniform random id below ``vocab_size`` (10 %) or left alone (10 %). Only positions with
    ``attention_mask == 1`` and ``special_tokens_mask == 0`` can be chosen. ``generator`` (on the
    ids' device) makes the draw reproducible without touching the global random state.
    """
    if not 0.0 < probability < 1.0:
        raise ConfigError(f"mask_tokens: probability must be in (0, 1), got {probability}.")
    if attention_mask.shape != input_ids.shape or special_tokens_mask.shape != input_ids.shape:
        raise DataError(f"mask_tokens: input_ids {tuple(input_ids.shape)}, attention_mask "
                        f"{tuple(attention_mask.shape)} and special_tokens_mask {tuple(special_tokens_mask.shape)} "
                        "must have the same (batch, length) shape.")
    maskable = attention_mask.bool() & ~special_tokens_mask.bool()
    draw = torch.rand(input_ids.shape, generator=generator, device=input_ids.device)
    chosen = maskable & (draw < probability)
    # One more uniform draw splits the chosen tokens into [MASK] / random / kept.
    share = torch.rand(input_ids.shape, generator=generator, device=input_ids.device)
    to_mask = chosen & (share < MASK_SHARE)
    to_random = chosen & (share >= MASK_SHARE) & (share < MASK_SHARE + RANDOM_SHARE)
    random_ids = torch.randint(vocab_size, input_ids.shape, generator=generator, device=input_ids.device)
    masked_ids = input_ids.clone()
    masked_ids[to_mask] = mask_token_id
    masked_ids[to_random] = random_ids[to_random]
    labels = torch.where(chosen, input_ids, torch.full_like(input_ids, IGNORE_INDEX))
    return masked_ids, labels


class MaskedLMHead(nn.Module):
    """BERT's MLM head: ``logits = LayerNorm(GELU(W h + b)) E^T + bias``, (…, hidden) -> (…, vocab).

    Args:
        hidden_size: width of the token states it reads.
        vocab_size: number of output ids.
        embedding_weight: the (vocab, E) input embedding matrix to tie the decoder to (BERT ties
            them; its gradient then flows into the embeddings), or None for a decoder of its own
            with E = ``hidden_size``. When E differs from ``hidden_size`` (a narrow generator that
            shares a wide model's embeddings, as in ELECTRA) the transform maps hidden -> E.
        layer_norm_eps: BERT's 1e-12.
    """

    def __init__(self, hidden_size: int, vocab_size: int, embedding_weight: nn.Parameter | None = None,
                 layer_norm_eps: float = 1e-12) -> None:
        super().__init__()
        if embedding_weight is not None and embedding_weight.shape[0] != vocab_size:
            raise ConfigError(f"MaskedLMHead: the tied embedding matrix has {embedding_weight.shape[0]} rows but "
                              f"vocab_size is {vocab_size}; pass the input embeddings of the same tokenizer.")
        embedding_size = hidden_size if embedding_weight is None else int(embedding_weight.shape[1])
        self.transform = nn.Sequential(nn.Linear(hidden_size, embedding_size), nn.GELU(),
                                       nn.LayerNorm(embedding_size, eps=layer_norm_eps))
        self.decoder = nn.Linear(embedding_size, vocab_size, bias=False)
        if embedding_weight is not None:
            self.decoder.weight = embedding_weight  # tied: one matrix, updated by both uses
        self.bias = nn.Parameter(torch.zeros(vocab_size))

    def forward(self, hidden: Tensor) -> Tensor:
        return self.decoder(self.transform(hidden)) + self.bias
