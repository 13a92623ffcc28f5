"""MNRL with domain experts: multiple-negatives ranking on (anchor, positive, domain) rows through an
encoder whose MLPs are per-domain experts with enforced routing (Hallee et al., "Contrastive Learning
and Mixture of Experts Enables Precise Vector Embeddings", 2024: N experts on one model, claimed to
reach the efficacy of N single-domain models).

Each row's domain picks its expert in every routed layer
(:class:`~contrastkit.modalities.text.experts.ExpertTextEncoder`; embeddings, attention and LayerNorms
shared). The loss is mnrl's (:mod:`contrastkit.modalities.text.methods.mnrl`), with cosine similarity
and temperature ``t``::

    loss_i = -s(a_i, p_i) / t + log( sum_j exp(s(a_i, p_j) / t) + sum_{j, l} exp(s(a_i, n_jl) / t) )

where every batch holds rows of one domain (:class:`~contrastkit.modalities.text.pair_data.DomainBatchSampler`,
``batches_by_domain``): the in-batch negatives of an anchor are of its own domain, as the paper's
enforced routing trains each expert on its own domain's batches, and a step updates one expert
(and the shared weights). Under several processes all slices of a global batch are of one domain.

Data: ``--data`` is a CSV, TSV or JSONL file of (anchor, positive[, negatives], domain) rows
(:mod:`contrastkit.modalities.text.tables`; the column is named ``domain``).

Export: the run's ``encoder/`` is the default (first) domain's plain encoder, with every expert's
weights beside it (``experts.safetensors``, ``experts.json``;
:func:`~contrastkit.modalities.text.experts.load_expert_encoder` rebuilds the whole model, and
``domain_encoder(name)`` gives each domain's plain encoder).

Options (``build(encoder, **options)``):
    domains: the domain names in expert order, a list or a comma-separated string (None: the sorted
        names the training rows hold, taken when the text command hands over the data).
    expert_layers: None (every layer's MLP, the paper) or K (the top K layers').
    eval_domain: the domain the command's --eval-* options score (None: the first).
    temperature: ``t`` (0.05, sentence-transformers' scale 20).
    document_length: tokens kept of positives and negatives (None: the training ``--max-length``).
"""

from __future__ import annotations

import torch
from torch import nn

from contrastkit import objectives
from contrastkit.core.errors import ConfigError, DataError
from contrastkit.modalities.text.encoders import TextEncoder
from contrastkit.modalities.text.experts import ExpertTextEncoder
from contrastkit.modalities.text.methods import check_options
from contrastkit.modalities.text.methods._parts import pair_cosines, positive_int_or_none
from contrastkit.nn.distributed import GatheredObjective

DEFAULTS = {"domains": None, "expert_layers": None, "eval_domain": None, "temperature": 0.05,
            "document_length": None}


class DomainExpertsMNRL(nn.Module):
    """MNRL on batches of one domain each, through that domain's experts."""

    name = "mnrl-moe"
    needs_context = False
    needs_pairs = True
    batches_by_domain = True

    def __init__(self, encoder: TextEncoder, objective: nn.Module, domains: list[str] | None = None,
                 expert_layers: int | None = None, eval_domain: str | None = None,
                 document_length: int | None = None):
        super().__init__()
        self.base = encoder  # replaced by the expert encoder once the domains are known
        self.objective = objective
        self.expert_layers, self.eval_domain, self.document_length = expert_layers, eval_domain, document_length
        self.encoder: TextEncoder = encoder
        if domains is not None:
            self.add_experts(domains)

    def add_experts(self, domains: list[str]) -> None:
        self.encoder = ExpertTextEncoder(self.base, domains, self.expert_layers)
        del self.base  # the experts' encoder holds its own copy: no second set of weights in checkpoints
        if self.eval_domain is not None:
            self.encoder.default_domain = self.encoder.domains[int(self.encoder.domain_index([self.eval_domain])[0])]

    def use_training_data(self, data) -> None:
        """Called by the text command before training: the experts are those of the rows' domains."""
        found = sorted(set(data.domains or ()))
        if not found:
            raise DataError(f"mnrl-moe routes each row by its domain, and '{data.name}' has no 'domain' column.")
        if not isinstance(self.encoder, ExpertTextEncoder):
            self.add_experts(found)
        unknown = sorted(set(found) - set(self.encoder.domains))
        if unknown:
            raise DataError(f"'{data.name}' holds rows of domain(s) {', '.join(unknown)}, which have no expert "
                            f"(domains: {', '.join(self.encoder.domains)}).")

    def training_loss(self, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        if "domains" not in batch:
            raise DataError("mnrl-moe needs (anchor, positive[, negatives], domain) rows: a .csv, .tsv or .jsonl "
                            "file with a 'domain' column.")
        if not isinstance(self.encoder, ExpertTextEncoder):
            raise ConfigError("mnrl-moe has no experts yet: give --option domains=a,b,... or call "
                              "use_training_data(data) before training.")
        domains = self.encoder.domain_index(batch["domains"])
        anchors = self.encoder(self.encoder.tokenize(batch["texts"]), domains)
        positives = self.encoder(self.encoder.tokenize(batch["positives"], self.document_length), domains)
        extra = {}
        k = len(batch["negatives"][0]) if batch.get("negatives") else 0
        if k:
            flat = [text for row in batch["negatives"] for text in row]  # row by row: negatives[i, l] at i k + l
            negatives = self.encoder(self.encoder.tokenize(flat, self.document_length), domains.repeat_interleave(k))
            extra["negatives"] = negatives.view(len(batch["texts"]), k, -1)
        loss = self.objective(anchors, positives, **extra)
        return loss, pair_cosines(anchors, positives)


def domain_names(value) -> list[str] | None:
    if value is None:
        return None
    names = [name.strip() for name in value.split(",")] if isinstance(value, str) else [str(v) for v in value]
    if not names or not all(names):
        raise ConfigError(f"Option 'domains' takes domain names (a list or 'a,b,c'), got {value!r}.")
    return names


def build(encoder: TextEncoder, **options) -> DomainExpertsMNRL:
    settings = check_options("mnrl-moe", options, DEFAULTS)
    objective = objectives.get("multiple_negatives", temperature=settings["temperature"])
    return DomainExpertsMNRL(
        encoder, GatheredObjective(objective), domains=domain_names(settings["domains"]),
        expert_layers=settings["expert_layers"], eval_domain=settings["eval_domain"],
        document_length=positive_int_or_none(settings["document_length"], "document_length"),
    )
