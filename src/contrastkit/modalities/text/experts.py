"""Domain experts on a shared text encoder: the feed-forward blocks (MLPs) of a BERT-style Transformer
become mixture-of-experts layers with *enforced routing* -- each example carries its domain, and the
domain picks its expert (Hallee et al., "Contrastive Learning and Mixture of Experts Enables Precise
Vector Embeddings", 2024).

The paper's MoE-BERT puts, in place of each layer's MLP, ``N`` expert MLPs, one per domain, each
initialised from the pretrained MLP's weights; a router that is not learned sends an input of domain
``d`` to expert ``d`` only. Everything else -- embeddings, attention, the LayerNorms -- stays shared.
With ``h`` a token's state after attention, layer ``l`` computes for an example of domain ``d``::

    MLP_l^d(h) = W2_l^d  act( W1_l^d h + b1_l^d ) + b2_l^d          (W^d = W at initialisation)

so an example of domain ``d`` gets gradients in the shared weights and in expert ``d`` only, and at
initialisation every domain's encoder is the pretrained encoder (both checked by
tests/modalities/text/test_experts.py).

Parts:

- :class:`DomainRoute`: the domain index of each example of the batch being embedded, set by the
  encoder around its forward pass and read by every routed layer (a plain object, not a module);
- :class:`RoutedLinear`: ``N`` copies of one ``nn.Linear``; row ``b`` of the input goes through copy
  ``domains[b]``. An MLP's two linear layers routed by the same domains are the MLP's expert;
- :class:`ExpertTextEncoder`: a :class:`~contrastkit.modalities.text.encoders.TextEncoder` whose
  ``forward(tokens, domains)`` takes a domain per example (names or indices; without them, every
  example is routed to ``default_domain``, so the encoder's ``encode`` and every evaluation work
  unchanged for one domain at a time: :meth:`ExpertTextEncoder.routed_to`).

Which layers: ``expert_layers=None`` (the paper) turns every layer's MLP into experts; ``K`` only those
of the top ``K`` layers (the lower layers stay shared).

Export: :meth:`ExpertTextEncoder.domain_encoder` gives one plain ``TextEncoder`` per domain (its
experts put back as the MLPs), which every loader, evaluation and export of the project reads.
:meth:`ExpertTextEncoder.save` writes the default domain's plain encoder (so ``contrastkit evaluate
--model RUN/encoder`` scores that domain) plus ``experts.safetensors`` (every expert's weights) and
``experts.json`` (domains, routed layers) beside it; :func:`load_expert_encoder` rebuilds the whole
model with the domain as input.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

from contrastkit.core.errors import ConfigError, DataError
from contrastkit.modalities.text.encoders import TextEncoder

EXPERTS_FILE = "experts.safetensors"
EXPERTS_SETTINGS_FILE = "experts.json"


class DomainRoute:
    """The domain index (B,) of each example of the batch being embedded; None outside a forward pass."""

    def __init__(self) -> None:
        self.domains: Tensor | None = None


class RoutedLinear(nn.Module):
    """``N`` copies of a linear layer (the experts), row ``b`` of the input through expert ``domains[b]``."""

    def __init__(self, shared: nn.Linear, experts: int, route: DomainRoute):
        super().__init__()
        self.experts = nn.ModuleList(copy.deepcopy(shared) for _ in range(experts))
        self.route = route

    def forward(self, x: Tensor) -> Tensor:
        domains = self.route.domains
        if domains is None:
            raise ConfigError("A routed layer ran without domains: call ExpertTextEncoder.forward(tokens, domains).")
        present = domains.unique().tolist()
        if len(present) == 1:  # per-domain batches (training): one expert for the whole batch
            return self.experts[present[0]](x)
        # Rows grouped by domain, each group through its expert, then put back in the batch's order
        # (a gather, not an in-place write, so autocast's output dtype is kept and autograd is plain).
        order = torch.argsort(domains, stable=True)
        outputs = [self.experts[d](x[domains == d]) for d in present]  # present is sorted: the order of `order`
        return torch.cat(outputs).index_select(0, torch.argsort(order))


def mlp_linears(layer: nn.Module) -> tuple[tuple[nn.Module, str], tuple[nn.Module, str]]:
    """(parent, attribute) of the two linear layers of a BERT layer's MLP (intermediate, output)."""
    intermediate, output = getattr(layer, "intermediate", None), getattr(layer, "output", None)
    if not isinstance(getattr(intermediate, "dense", None), nn.Linear | RoutedLinear) or \
            not isinstance(getattr(output, "dense", None), nn.Linear | RoutedLinear):
        raise ConfigError(f"Domain experts need a BERT-style layer (intermediate.dense, output.dense); "
                          f"{type(layer).__name__} has no such MLP.")
    return (intermediate, "dense"), (output, "dense")


def transformer_layers(transformer: nn.Module) -> nn.ModuleList:
    layers = getattr(getattr(transformer, "encoder", None), "layer", None)
    if not isinstance(layers, nn.ModuleList):
        raise ConfigError(f"Domain experts need a BERT-style Transformer (encoder.layer); got "
                          f"{type(transformer).__name__}.")
    return layers


def routed_layer_indices(total: int, expert_layers: int | None) -> list[int]:
    """The layers whose MLPs become experts: all (None) or the top ``expert_layers``."""
    if expert_layers is None:
        return list(range(total))
    if isinstance(expert_layers, bool) or not isinstance(expert_layers, int) or not 1 <= expert_layers <= total:
        raise ConfigError(f"expert_layers must be null (every layer) or 1..{total}, got {expert_layers!r}.")
    return list(range(total - expert_layers, total))


class ExpertTextEncoder(TextEncoder):
    """A text encoder whose MLPs are per-domain experts, routed by each example's domain.

    Args:
        base: the encoder to start from; its Transformer is copied (``base`` is left as it was) and
            each routed layer's MLP becomes ``len(domains)`` experts initialised from it.
        domains: the domain names, in expert order.
        expert_layers: None (every layer, the paper) or the top K layers.
    """

    def __init__(self, base: TextEncoder, domains: Sequence[str], expert_layers: int | None = None):
        super().__init__(copy.deepcopy(base.transformer), base.tokenizer, pooling=base.pooling,
                         normalize=base.normalize, max_length=base.max_length)
        self.term_residual = copy.deepcopy(base.term_residual)
        self.domains = [str(d) for d in domains]
        if len(self.domains) < 1 or len(set(self.domains)) != len(self.domains):
            raise ConfigError(f"Domain experts need distinct domain names, got {self.domains}.")
        self.expert_layers = expert_layers
        self.route = DomainRoute()
        self.default_domain = self.domains[0]
        layers = transformer_layers(self.transformer)
        self.routed_layers = routed_layer_indices(len(layers), expert_layers)
        for index in self.routed_layers:
            for parent, name in mlp_linears(layers[index]):
                setattr(parent, name, RoutedLinear(getattr(parent, name), len(self.domains), self.route))

    def domain_index(self, domains: Sequence[str | int] | Tensor) -> Tensor:
        """(B,) expert indices from domain names or indices."""
        if isinstance(domains, Tensor):
            indices = domains.long()
        else:
            position = {name: i for i, name in enumerate(self.domains)}
            try:
                indices = torch.as_tensor([d if isinstance(d, int) else position[str(d)] for d in domains],
                                          dtype=torch.long)
            except KeyError as error:
                raise DataError(f"Unknown domain {error.args[0]!r}; the experts are for {', '.join(self.domains)}.") \
                    from None
        if indices.numel() and not (0 <= int(indices.min()) and int(indices.max()) < len(self.domains)):
            raise DataError(f"Domain indices must be in 0..{len(self.domains) - 1}, got {indices.tolist()}.")
        return indices

    def forward(self, tokens: Mapping[str, Tensor], domains: Sequence[str | int] | Tensor | None = None) -> Tensor:
        """(B, D) embeddings, example ``b`` through the experts of ``domains[b]`` (default: ``default_domain``)."""
        batch = tokens["input_ids"].shape[0]
        indices = self.domain_index([self.default_domain] * batch if domains is None else domains)
        if indices.numel() != batch:
            raise DataError(f"{indices.numel()} domains for a batch of {batch} texts; give one per text.")
        self.route.domains = indices.to(self.device)
        try:
            return super().forward(tokens)
        finally:
            self.route.domains = None

    @contextlib.contextmanager
    def routed_to(self, domain: str) -> Iterator[ExpertTextEncoder]:
        """Within the block, texts embedded without domains (``encode``, evaluations) go to ``domain``."""
        self.domain_index([domain])  # an unknown name fails here, with the known ones
        previous, self.default_domain = self.default_domain, str(domain)
        try:
            yield self
        finally:
            self.default_domain = previous

    def expert_linears(self) -> Iterator[tuple[str, RoutedLinear]]:
        """(name, routed layer) of every routed linear layer, names as in ``transformer.named_modules``."""
        for name, module in self.transformer.named_modules():
            if isinstance(module, RoutedLinear):
                yield name, module

    def domain_encoder(self, domain: str) -> TextEncoder:
        """A plain :class:`TextEncoder` (a copy) whose MLPs are ``domain``'s experts."""
        index = int(self.domain_index([domain])[0])
        transformer = copy.deepcopy(self.transformer)
        for name, module in list(transformer.named_modules()):
            if isinstance(module, RoutedLinear):
                parent, _, attribute = name.rpartition(".")
                setattr(transformer.get_submodule(parent), attribute, module.experts[index])
        encoder = TextEncoder(transformer, self.tokenizer, pooling=self.pooling, normalize=self.normalize,
                              max_length=self.max_length)
        encoder.term_residual = copy.deepcopy(self.term_residual)
        return encoder

    def save(self, folder: str | os.PathLike) -> Path:
        """``default_domain``'s plain encoder (a TextEncoder folder), plus every expert's weights and the
        routing settings beside it (:func:`load_expert_encoder` reads them back)."""
        from safetensors.torch import save_file

        folder = self.domain_encoder(self.default_domain).save(folder)
        weights = {f"{name}.experts.{i}.{key}": value.detach().cpu().contiguous()
                   for name, module in self.expert_linears()
                   for i, expert in enumerate(module.experts) for key, value in expert.state_dict().items()}
        save_file(weights, str(folder / EXPERTS_FILE))
        (folder / EXPERTS_SETTINGS_FILE).write_text(json.dumps(
            {"domains": self.domains, "default_domain": self.default_domain, "expert_layers": self.expert_layers,
             "routed_layers": self.routed_layers}, indent=2))
        return folder


def load_expert_encoder(folder: str | os.PathLike) -> ExpertTextEncoder:
    """The whole model written by :meth:`ExpertTextEncoder.save`, the domain as its input."""
    from safetensors.torch import load_file

    folder = Path(folder)
    if not (folder / EXPERTS_SETTINGS_FILE).is_file():
        raise DataError(f"'{folder}' holds no domain experts ({EXPERTS_SETTINGS_FILE}); it is a plain text encoder "
                        "folder: load it with TextEncoder.from_folder.")
    settings = json.loads((folder / EXPERTS_SETTINGS_FILE).read_text())
    encoder = ExpertTextEncoder(TextEncoder.from_folder(folder), settings["domains"], settings["expert_layers"])
    encoder.default_domain = settings["default_domain"]
    weights = load_file(str(folder / EXPERTS_FILE))
    expected = {f"{name}.experts.{i}.{key}" for name, module in encoder.expert_linears()
                for i, expert in enumerate(module.experts) for key in expert.state_dict()}
    if set(weights) != expected:
        raise DataError(f"'{folder / EXPERTS_FILE}' does not hold the experts of {EXPERTS_SETTINGS_FILE} "
                        f"({len(weights)} tensors, {len(expected)} expected).")
    for name, module in encoder.expert_linears():
        for i, expert in enumerate(module.experts):
            expert.load_state_dict({key: weights[f"{name}.experts.{i}.{key}"] for key in expert.state_dict()})
    return encoder


__all__ = ["DomainRoute", "ExpertTextEncoder", "RoutedLinear", "load_expert_encoder"]
