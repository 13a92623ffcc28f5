"""CCP: contrastive context prediction -- neighbouring sentences of a document are positives.

Wu, Liang, Ren, Shou, Duan, Gong & Jiang, "Unsupervised Context Aware Sentence Representation
Pretraining for Multi-lingual Dense Retrieval", IJCAI 2022 (https://arxiv.org/abs/2206.03281;
the released code, github.com/wuning0929/CCP_IJCAI22, holds only the retrieval fine-tuning, not
the pre-training). A document is a sequence of sentences; a sentence ``c`` and a sentence ``x``
from the window around it are a positive pair, and the model must pick ``x`` out of many
negatives given ``c``, "and vice versa". The paper names two parts as essential:

- a language-specific memory bank: negatives come from a queue of earlier embeddings of the
  *same* language (here: language or domain), so the model cannot tell positives from negatives
  by language alone, which the paper found makes training collapse;
- asymmetric batch normalisation: BatchNorm on one side of the pair only, which the paper found
  prevents information leakage through batch statistics (the cheat MoCo's shuffling BN avoids).

Our reading, since the pre-training code is not public: a shared projector ``g`` (one Linear)
maps encoder outputs to keys, and a predictor ``q`` (``Linear -> BatchNorm -> ReLU -> Linear``,
BYOL/SimSiam's) maps keys to queries, so BatchNorm is on the query side only::

    k_c = g(f(c)),  k_x = g(f(x)),  q_c = q(k_c),  q_x = q(k_x)
    loss = ( L(q_c, k_x, Q_d) + L(q_x, k_c, Q_d) ) / 2        (symmetric: "and vice versa")

with ``L`` the query-key InfoNCE of :mod:`contrastkit.objectives.query_key` (cosine / temperature;
in-batch keys of the same domain and the domain's queue ``Q_d`` as negatives), averaged over the
batch's rows. After the loss, the batch's keys (detached, unit norm) are pushed into their domain's
:class:`~contrastkit.nn.queue.MemoryQueue` (FIFO). Keys come from the trained encoder
itself (no momentum encoder): the queue holds slightly stale keys, as in a memory bank.

Batches: ``texts`` are the centre sentences, ``contexts`` one neighbouring sentence of each (the
data layer fills them because ``needs_context = True``), optional ``domains`` (one name per text;
absent: every text is in the first configured domain). Defaults (ours): temperature 0.05, queue of
4096 keys per domain, projector and predictor as wide as the encoder. Under multi-process training
every process must enqueue the same domains in the same order (the queue all-gathers its keys),
so use one domain there; the in-batch keys and the predictor's BatchNorm statistics are each
process's own (the queue holds the keys of all). The sentence embedding used downstream is the encoder's output; the
paper's post-processing of embeddings is not part of this method.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from contrastkit.core.errors import ConfigError, DataError
from contrastkit.nn.heads import PredictionHead
from contrastkit.objectives.base import check_temperature
from contrastkit.nn.queue import MemoryQueue
from contrastkit.modalities.text.encoders import TextEncoder
from contrastkit.modalities.text.methods import check_options
from contrastkit.objectives.query_key import query_key_infonce
from contrastkit.modalities.text.methods._parts import positive_int_or_none

DEFAULTS = {
    "temperature": 0.05,
    "queue_size": 4096,
    "domains": ("default",),
    "projection_dim": None,
    "predictor_hidden_dim": None,
    "symmetric": True,
}


class CCP(nn.Module):
    """Shared encoder + projector, query-side predictor with BatchNorm, a queue per domain."""

    needs_context = True

    def __init__(self, encoder: TextEncoder, *, temperature: float = 0.05, queue_size: int = 4096,
                 domains: Sequence[str] = ("default",), projection_dim: int | None = None,
                 predictor_hidden_dim: int | None = None, symmetric: bool = True):
        super().__init__()
        domains = [domains] if isinstance(domains, str) else list(domains)
        if not domains or len(set(domains)) != len(domains):
            raise ConfigError(f"Option ccp.domains must be a non-empty list of distinct names, got {domains!r}.")
        for name in domains:
            if not isinstance(name, str) or not name or "." in name:
                raise ConfigError(f"Option ccp.domains: each domain must be a non-empty name without '.', "
                                  f"got {name!r}.")
        if not isinstance(queue_size, int) or queue_size < 1:
            raise ConfigError(f"Option ccp.queue_size must be a positive integer, got {queue_size!r}.")
        dim = positive_int_or_none(projection_dim, "ccp.projection_dim") or encoder.output_dim
        hidden = positive_int_or_none(predictor_hidden_dim, "ccp.predictor_hidden_dim") or encoder.output_dim
        self.encoder = encoder
        self.projector = nn.Linear(encoder.output_dim, dim)
        self.predictor = PredictionHead(dim, hidden, dim)  # the one BatchNorm: query side only
        self.queues = nn.ModuleDict({name: MemoryQueue(queue_size, dim) for name in domains})
        self.temperature = check_temperature(temperature)
        self.symmetric = bool(symmetric)

    def domain_rows(self, batch: dict, size: int) -> dict[str, torch.Tensor]:
        """Row indices of each domain present in the batch, in the configured domains' order."""
        names = batch.get("domains")
        if names is None:
            names = [next(iter(self.queues))] * size
        names = list(names)
        if len(names) != size:
            raise DataError(f"ccp: the batch has {size} texts but {len(names)} domain names; give one per text.")
        unknown = sorted(set(names) - set(self.queues))
        if unknown:
            raise DataError(f"ccp: domain(s) {', '.join(map(repr, unknown))} in the batch are not configured. "
                            f"Configured domains: {', '.join(self.queues)}. Add them to the option ccp.domains.")
        rows = {}
        for name in self.queues:
            index = [i for i, n in enumerate(names) if n == name]
            if index:
                rows[name] = torch.tensor(index, dtype=torch.long)
        return rows

    def training_loss(self, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        texts = list(batch["texts"])
        contexts = batch.get("contexts")
        if contexts is None or len(contexts) != len(texts):
            raise DataError(
                f"ccp predicts each text's neighbouring sentence, so the batch needs 'contexts' with one "
                f"sentence per text ({len(texts)}); got {None if contexts is None else len(contexts)}. "
                "Train on text whose neighbouring lines belong to the same document (the data layer "
                "fills 'contexts' for methods with needs_context = True)."
            )
        if len(texts) < 2:
            raise DataError(f"ccp's predictor uses BatchNorm, which needs at least 2 texts per batch; "
                            f"got {len(texts)}.")
        size = len(texts)
        embeddings = self.encoder(self.encoder.tokenize(texts + list(contexts)))
        keys = self.projector(embeddings)
        key_centre, key_context = keys.split(size)
        query_centre, query_context = self.predictor(key_centre), self.predictor(key_context)
        rows = self.domain_rows(batch, size)
        loss = keys.new_zeros(())
        for name, index in rows.items():
            index = index.to(keys.device)
            # A copy: the queue is overwritten below, before the backward pass reads these rows.
            negatives = self.queues[name].keys().clone()
            part = query_key_infonce(query_centre[index], key_context[index], self.temperature, negatives)
            if self.symmetric:
                reverse = query_key_infonce(query_context[index], key_centre[index], self.temperature, negatives)
                part = (part + reverse) / 2
            loss = loss + part * (len(index) / size)
        with torch.no_grad():
            for name, index in rows.items():
                index = index.to(keys.device)
                self.queues[name].enqueue(F.normalize(torch.cat([key_context[index], key_centre[index]]), dim=-1))
        fill = sum(len(q) / q.size for q in self.queues.values()) / len(self.queues)
        return loss, {"queue_fill": float(fill)}


def build(encoder: TextEncoder, **options) -> CCP:
    """CCP on ``encoder``; options (defaults in ``DEFAULTS``) as in :class:`CCP`."""
    return CCP(encoder, **check_options("ccp", options, DEFAULTS))
