"""DefSent+ (Liu, "DefSent+: Improving sentence embeddings of language models by projecting definition
sentences into a quasi-isotropic or isotropic vector space of unlimited dictionary entries", 2024,
https://arxiv.org/abs/2405.16153), after DefSent (Tsukagoshi, Sasano & Takeda, ACL 2021,
https://arxiv.org/abs/2105.04339).

DefSent trains a sentence encoder so that the embedding of a dictionary definition, put through the
frozen word-prediction layer of the language model, predicts the word it defines. DefSent+ replaces
those word embeddings (one per vocabulary token, anisotropic, frozen) by *entry embeddings* built
from the definitions themselves, so an entry can be any lemma (multi-word ones too) and the entry
space can be made (quasi-)isotropic before the definitions are classified into it:

- the **entry embedding** of entry e with definitions d_1 .. d_m is the mean of their sentence
  embeddings under the current encoder f: ``E_e = 1/m sum_j f(d_j)``;
- the matrix E is then made near-isotropic (``entry_space``): ``centered`` (quasi-isotropic: the mean
  entry removed, rows L2-normalised), ``whitened`` (isotropic: ZCA whitening to identity covariance,
  rows L2-normalised) or ``raw`` (rows L2-normalised only);
- a definition d of entry e is **classified** into the frozen E with temperature tau::

      loss(d, e) = -log  exp(cos(f(d), E_e) / tau) / sum_{e' not another entry of d} exp(cos(f(d), E_e') / tau)

  (a WordNet definition is shared by every lemma of its synset; the other entries of d are left out
  of the denominator, as they are right answers too);
- the matrix is **progressively rebuilt**: every ``rebuild_every`` optimiser steps E is recomputed
  from the encoder as it now is (our reading of the paper's progressive training: each round's
  classifier is built by the previous round's encoder and stays frozen while the encoder trains).

The partition-function isotropy of E (:func:`contrastkit.evaluation.partition_isotropy.partition_isotropy`,
Mu & Viswanath 2018) is logged at each rebuild (``train/entry_isotropy``).

Data: ``--data`` is a TSV (or CSV / JSONL) of ``definition, entry`` rows, one per (entry, definition),
e.g. from ``python -m contrastkit.modalities.text.dictionary --entries 4000 --out definitions.tsv``
(:mod:`contrastkit.modalities.text.dictionary`, Open English WordNet). Every entry of the file is a
class; the method reads the whole file before training (:meth:`DefSentPlus.use_training_data`) to
build E, and E (with the number of rebuilds) is part of the checkpoint.

Options (``build(encoder, **options)``):
    temperature: tau (0.05).
    entry_space: ``centered`` (default), ``whitened`` or ``raw``.
    rebuild_every: optimiser steps between rebuilds of E (100; null: E is built once, from the base).
    encode_batch_size: sentences per pass when E is (re)built (64).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from contrastkit.core.errors import ConfigError, DataError
from contrastkit.evaluation.partition_isotropy import partition_isotropy
from contrastkit.modalities.text.encoders import TextEncoder
from contrastkit.modalities.text.methods import check_options
from contrastkit.modalities.text.methods._parts import positive_int_or_none
from contrastkit.modalities.text.pair_data import PairData

ENTRY_SPACES = ("centered", "whitened", "raw")
DEFAULTS = {"temperature": 0.05, "entry_space": "centered", "rebuild_every": 100, "encode_batch_size": 64}


def entry_embeddings(definition_embeddings: Tensor, entry_definitions: list[list[int]]) -> Tensor:
    """(E, D): row e the mean of the rows ``entry_definitions[e]`` of ``definition_embeddings``."""
    rows = torch.cat([torch.as_tensor(d, dtype=torch.long) for d in entry_definitions])
    owners = torch.repeat_interleave(torch.arange(len(entry_definitions)),
                                     torch.as_tensor([len(d) for d in entry_definitions]))
    sums = torch.zeros(len(entry_definitions), definition_embeddings.shape[1], dtype=definition_embeddings.dtype)
    sums.index_add_(0, owners, definition_embeddings[rows])
    return sums / torch.as_tensor([len(d) for d in entry_definitions], dtype=sums.dtype).unsqueeze(1)


def isotropic_entries(entries: Tensor, space: str, eps: float = 1e-6) -> Tensor:
    """The entry matrix in its ``space`` (module docstring), rows of unit norm; float64 maths."""
    x = entries.double()
    if space == "centered":
        x = x - x.mean(0, keepdim=True)
    elif space == "whitened":
        x = x - x.mean(0, keepdim=True)
        covariance = x.T @ x / max(1, x.shape[0] - 1)
        values, vectors = torch.linalg.eigh(covariance)
        x = x @ (vectors @ torch.diag(values.clamp_min(eps).rsqrt()) @ vectors.T)  # ZCA: identity covariance
    elif space != "raw":
        raise ConfigError(f"Unknown entry_space '{space}'. Valid: {', '.join(ENTRY_SPACES)}.")
    return F.normalize(x, dim=1).to(entries.dtype)


def definition_classification_loss(embeddings: Tensor, entries: Tensor, targets: Tensor, excluded: Tensor,
                                   temperature: float) -> Tensor:
    """Mean over rows of ``-log softmax(cos(embedding_i, entries) / tau)[targets_i]``, the entries
    ``excluded[i]`` (bool (B, E): the definition's other entries) left out of row i's softmax."""
    logits = F.normalize(embeddings, dim=1) @ entries.to(embeddings.dtype).T / temperature
    logits = logits.masked_fill(excluded, float("-inf"))
    return F.cross_entropy(logits, targets)


class DefSentPlus(nn.Module):
    """Definitions classified into a frozen, near-isotropic matrix of entry embeddings, rebuilt in rounds."""

    name = "defsent-plus"
    needs_context = False
    needs_pairs = True

    def __init__(self, encoder: TextEncoder, temperature: float = 0.05, entry_space: str = "centered",
                 rebuild_every: int | None = 100, encode_batch_size: int = 64):
        super().__init__()
        self.encoder = encoder
        self.temperature = temperature
        self.entry_space = entry_space
        self.rebuild_every = rebuild_every
        self.encode_batch_size = encode_batch_size
        self.definitions: list[str] = []
        self.entry_names: list[str] = []
        self.entry_definitions: list[list[int]] = []
        self.entries_of_definition: dict[str, list[int]] = {}
        self.entry_index: dict[str, int] = {}
        self.register_buffer("entry_matrix", torch.empty(0))
        self.register_buffer("rebuilds", torch.zeros((), dtype=torch.long))
        self.entry_isotropy = float("nan")

    def use_training_data(self, data: PairData) -> None:
        """Index the (definition, entry) rows and build E from the encoder as it is (the base model)."""
        pairs = data.pairs
        self.definitions = list(dict.fromkeys(pairs.anchors))
        self.entry_names = list(dict.fromkeys(pairs.positives))
        if len(self.entry_names) < 2:
            raise DataError(f"defsent-plus classifies definitions into entries: '{data.name}' names "
                            f"{len(self.entry_names)} entry; it needs at least 2.")
        self.entry_index = {name: i for i, name in enumerate(self.entry_names)}
        definition_index = {text: i for i, text in enumerate(self.definitions)}
        self.entry_definitions = [[] for _ in self.entry_names]
        self.entries_of_definition = {}
        for definition, entry in zip(pairs.anchors, pairs.positives):
            e = self.entry_index[entry]
            if definition_index[definition] not in self.entry_definitions[e]:
                self.entry_definitions[e].append(definition_index[definition])
            owners = self.entries_of_definition.setdefault(definition, [])
            if e not in owners:
                owners.append(e)
        self.entry_matrix = self.build_entry_matrix()

    @torch.no_grad()
    def build_entry_matrix(self) -> Tensor:
        """E from the current encoder (eval mode), in ``entry_space``; its isotropy is kept for the logs."""
        embedded = self.encoder.encode(self.definitions, batch_size=self.encode_batch_size).clone()
        matrix = isotropic_entries(entry_embeddings(embedded, self.entry_definitions), self.entry_space)
        self.entry_isotropy = partition_isotropy(matrix)
        return matrix.to(self.encoder.device)

    def training_loss(self, batch: dict) -> tuple[Tensor, dict[str, float]]:
        if self.entry_matrix.numel() == 0:
            raise DataError("defsent-plus has no entry embeddings yet: call use_training_data(data) with the "
                            "(definition, entry) rows before training (contrastkit fit does).")
        if "positives" not in batch:
            raise DataError("defsent-plus trains on (definition, entry) rows: give --data a .tsv/.csv/.jsonl file "
                            "with columns definition and entry.")
        definitions, entries = batch["texts"], batch["positives"]
        targets = torch.as_tensor([self.entry_index[e] for e in entries], dtype=torch.long)
        excluded = torch.zeros(len(definitions), len(self.entry_names), dtype=torch.bool)
        for row, (definition, target) in enumerate(zip(definitions, targets.tolist())):
            others = [e for e in self.entries_of_definition[definition] if e != target]
            excluded[row, others] = True
        device = self.encoder.device
        embeddings = self.encoder(self.encoder.tokenize(definitions))
        loss = definition_classification_loss(embeddings, self.entry_matrix, targets.to(device), excluded.to(device),
                                              self.temperature)
        return loss, {"entry_isotropy": self.entry_isotropy, "rebuilds": float(self.rebuilds)}

    def after_optimizer_step(self, step: int, total_steps: int) -> None:
        if self.rebuild_every is not None and step % self.rebuild_every == 0:
            self.entry_matrix.copy_(self.build_entry_matrix())
            self.rebuilds += 1


def build(encoder: TextEncoder, **options) -> DefSentPlus:
    settings = check_options("defsent-plus", options, DEFAULTS)
    temperature = settings["temperature"]
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not temperature > 0:
        raise ConfigError(f"Option 'temperature' must be a positive number, got {temperature!r}.")
    if settings["entry_space"] not in ENTRY_SPACES:
        raise ConfigError(f"Unknown entry_space '{settings['entry_space']}'. Valid: {', '.join(ENTRY_SPACES)}.")
    return DefSentPlus(encoder, float(temperature), settings["entry_space"],
                       positive_int_or_none(settings["rebuild_every"], "rebuild_every"),
                       positive_int_or_none(settings["encode_batch_size"], "encode_batch_size") or 64)
