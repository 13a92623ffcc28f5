"""Contriever (Izacard, Caron, Hosseini, Riedel, Bojanowski, Joulin & Grave, "Unsupervised Dense
Information Retrieval with Contrastive Learning", TMLR 2022, https://arxiv.org/abs/2112.09118).

Positive pairs are two *independent random crops* of the same text (Sec. 3.2): each view is a
random contiguous span of 10 % to 50 % of its tokens (:func:`contrastkit.modalities.text.views.random_crop`),
then a light token augmentation (word deletion with probability 0.1 in the released pre-training
recipe; ``replace``, ``mask``, ``shuffle``, ``soft`` or ``none`` can be chosen). With
``q_i = f(crop_a(x_i))``, ``k_i = f(crop_b(x_i))``, both L2-normalised, and ``t = 0.05``:

- in-batch negatives (``queue_size = 0``, default): the catalogue's ``infonce`` on ``(q, k)``
  -- the positive ``k_i`` against the other crops of the batch (both views are anchors, as in
  NT-Xent; Contriever's in-batch loss uses ``q`` as anchors only, against ``k``).
- MoCo (``queue_size > 0``; Sec. 3.3): keys come from a momentum copy ``f_k`` of the encoder,
  ``theta_k <- m theta_k + (1 - m) theta`` after each step, and the negatives are a queue of the
  keys of past batches (:class:`contrastkit.nn.queue.MemoryQueue`)::

      loss_i = -log exp(q_i . k_i / t) / ( exp(q_i . k_i / t) + sum_{n in queue} exp(q_i . n / t) )

  (the catalogue's ``mochi`` objective without synthetic negatives, as methods/moco.py uses it).
  Under several processes the in-batch variant's negatives are the crops of every process
  (gathered with gradient); the queue stores the keys of every process.
  The queue starts empty and fills with the batches' keys. The key encoder runs in the same mode
  as the method (train mode during training, so its dropout is on, as in the reference code).

Contriever crops *documents* (256-token chunks), where two spans of one text overlap little and
read like a query and a passage. A corpus of single sentences gives short spans; with
``use_context`` the crops are taken from the sentence followed by its neighbouring lines (the
batch's ``contexts``; the anchor first, then the window in file order), tokenised up to
``source_length`` tokens, and each crop is capped at the encoder's ``max_length``.

Options (``build(encoder, **options)``):
    temperature: ``t`` (0.05).
    min_ratio, max_ratio: crop length as a share of the tokens (0.1, 0.5).
    augmentation, augmentation_rate: token augmentation after cropping ("delete", 0.1).
    queue_size: 0 for in-batch negatives, else the number of queued keys (paper: 131,072).
    momentum: ``m`` of the key encoder (0.999; the paper's 0.9995 is for 500k steps, a run of a
        few thousand steps needs a key encoder that follows faster).
    use_context: crop from the sentence and its neighbouring window (False).
    source_length: tokens kept before cropping (None: the encoder's max_length, or 256 with
        ``use_context``).
    objective: catalogue objective of the in-batch variant ("infonce").
    grad_cache_chunk: rows per forward pass with GradCache (None); the queries only in the MoCo
        variant (the keys take no gradient).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from contrastkit import objectives
from contrastkit.core.errors import ConfigError
from contrastkit.nn.momentum import check_momentum, ema_update_, momentum_copy
from contrastkit.nn.queue import MemoryQueue
from contrastkit.modalities.text.encoders import TextEncoder
from contrastkit.nn.gradcache import embed_tokens
from contrastkit.modalities.text.methods import check_options
from contrastkit.modalities.text.methods._parts import (
    pair_cosines,
    pair_objective,
    positive_int_or_none,
)
from contrastkit.modalities.text.views import (
    TokenVocabulary,
    augment,
    check_augmentation,
    random_crop,
)

DEFAULTS = {
    "temperature": 0.05,
    "min_ratio": 0.1,
    "max_ratio": 0.5,
    "augmentation": "delete",
    "augmentation_rate": 0.1,
    "queue_size": 0,
    "momentum": 0.999,
    "use_context": False,
    "source_length": None,
    "objective": "infonce",
    "grad_cache_chunk": None,
}
CONTEXT_SOURCE_LENGTH = 256  # Contriever's chunk length


class Contriever(nn.Module):
    """Two independent crops (+ augmentation) per text; in-batch negatives or a MoCo queue."""

    def __init__(self, encoder: TextEncoder, objective: nn.Module, *, min_ratio: float, max_ratio: float,
                 augmentation: str, augmentation_rate: float, source_length: int | None = None,
                 queue: MemoryQueue | None = None, momentum: float = 0.999, use_context: bool = False,
                 grad_cache_chunk: int | None = None):
        super().__init__()
        self.encoder = encoder
        self.objective = objective
        self.vocabulary = TokenVocabulary.from_tokenizer(encoder.tokenizer)
        self.min_ratio, self.max_ratio = min_ratio, max_ratio
        self.augmentation, self.augmentation_rate = augmentation, augmentation_rate
        self.source_length = source_length
        self.queue = queue
        self.key_encoder = momentum_copy(encoder) if queue is not None else None
        self.momentum = momentum
        self.needs_context = use_context
        self.grad_cache_chunk = grad_cache_chunk
        # Matryoshka nests the in-batch objective (modalities/text/matryoshka.py); the queue's keys are not nested.
        self.supports_matryoshka = queue is None
        self.matryoshka_refusal = "with a MoCo queue (queue_size > 0) its loss is not an in-batch objective"

    def sources(self, batch: dict) -> list[str]:
        """The texts the crops are taken from: the anchors, or each anchor and its context."""
        if not self.needs_context:
            return list(batch["texts"])
        return [f"{text} {context}".strip() for text, context in zip(batch["texts"], batch["contexts"], strict=True)]

    def source_tokens(self) -> int:
        """Tokens kept before cropping: ``source_length``, else the encoder's current max_length
        (the training length), or at least 256 when cropping from the context window."""
        if self.source_length is not None:
            return self.source_length
        length = self.encoder.max_length
        return max(length, CONTEXT_SOURCE_LENGTH) if self.needs_context else length

    def view(self, tokens: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        cropped = random_crop(tokens, self.vocabulary, self.min_ratio, self.max_ratio,
                              max_length=self.encoder.max_length)
        return augment(cropped, self.vocabulary, self.augmentation, self.augmentation_rate)

    def training_loss(self, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        tokens = self.encoder.tokenize(self.sources(batch), max_length=self.source_tokens())
        view_a, view_b = self.view(tokens), self.view(tokens)
        device = self.encoder.device
        q = embed_tokens(self.encoder, view_a, self.grad_cache_chunk, device)
        logs = {"view_tokens": float(view_a["attention_mask"].sum(1).float().mean())}
        if self.queue is None:
            k = embed_tokens(self.encoder, view_b, self.grad_cache_chunk, device)
            loss = self.objective(q, k)
        else:
            with torch.no_grad():
                k = F.normalize(self.key_encoder(view_b), dim=1)
            # A copy: enqueue overwrites rows that the backward pass would otherwise read.
            loss = self.objective(q, k, keys=self.queue.keys().clone())
            self.queue.enqueue(k)
            logs["queue_length"] = float(len(self.queue))
        return loss, {**pair_cosines(q, k), **logs}

    @torch.no_grad()
    def after_optimizer_step(self, step: int, total_steps: int) -> None:
        if self.key_encoder is not None:
            ema_update_(self.key_encoder, self.encoder, self.momentum)


def build(encoder: TextEncoder, **options) -> Contriever:
    settings = check_options("contriever", options, DEFAULTS)
    queue_size = settings["queue_size"]
    if isinstance(queue_size, bool) or not isinstance(queue_size, int) or queue_size < 0:
        raise ConfigError(f"Option 'queue_size' of contriever must be 0 (in-batch negatives) or a positive "
                          f"number of keys, got {queue_size!r}.")
    source_length = positive_int_or_none(settings["source_length"], "source_length")
    temperature = settings["temperature"]
    if queue_size:
        # MoCo's InfoNCE over [positive key, queue]: the mochi objective with no synthetic negatives.
        objective = objectives.get("mochi", temperature=temperature, num_mixed=0, num_query_mixed=0)
        queue = MemoryQueue(queue_size, encoder.output_dim)
    else:
        objective = pair_objective(settings["objective"], temperature, "contriever")
        queue = None
    if not 0.0 < settings["min_ratio"] <= settings["max_ratio"] <= 1.0:
        raise ConfigError(f"contriever needs 0 < min_ratio <= max_ratio <= 1, got {settings['min_ratio']} "
                          f"and {settings['max_ratio']} (the paper: 0.1 and 0.5).")
    rate = settings["augmentation_rate"]
    if not 0.0 <= rate <= 1.0:
        raise ConfigError(f"Option 'augmentation_rate' of contriever must be in [0, 1], got {rate!r}.")
    return Contriever(
        encoder,
        objective,
        min_ratio=float(settings["min_ratio"]),
        max_ratio=float(settings["max_ratio"]),
        augmentation=check_augmentation(settings["augmentation"]),
        augmentation_rate=float(rate),
        source_length=source_length,
        queue=queue,
        momentum=check_momentum(settings["momentum"], "contriever option 'momentum'"),
        use_context=bool(settings["use_context"]),
        grad_cache_chunk=positive_int_or_none(settings["grad_cache_chunk"], "grad_cache_chunk"),
    )
