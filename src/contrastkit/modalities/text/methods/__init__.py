"""Text methods: sentence-embedding training objectives over a :class:`TextEncoder`.

The contract
============

**Batches.** A text batch is a dict built by :mod:`contrastkit.modalities.text.data`:

- ``"texts"``: ``list[str]``, the anchors (B sentences);
- ``"contexts"``: ``list[str]``, only when the method sets ``needs_context = True``: for each
  anchor, the neighbouring text of the same document (the lines around it in the file, the anchor
  itself excluded, in file order, joined by spaces; see :class:`~contrastkit.modalities.text.data.SentenceData`);
- ``"indices"``: ``LongTensor`` (B,), the anchors' row numbers in the data set;
- ``"positives"``, ``"negatives"``: only for a method that sets ``needs_pairs = True`` (mnrl), which
  trains on labelled rows (:mod:`contrastkit.modalities.text.pair_data`) instead of sentences: each
  anchor's positive text, and a tuple of its ``k`` negative texts (``k`` the same for every row, maybe 0).

Methods tokenise the texts themselves (``encoder.tokenize``, at ``encoder.max_length`` tokens), so
views can work on text or on token ids as the paper did.

**Methods.** A text method is an ``nn.Module`` with

- ``encoder``: the :class:`~contrastkit.modalities.text.encoders.TextEncoder` being trained (what is saved and
  evaluated; any other module, e.g. a momentum copy, is auxiliary);
- ``training_loss(batch) -> (loss, logs)``: a scalar tensor to call ``backward()`` on and a
  ``dict[str, float]`` of diagnostics (written to metrics.csv as ``train/<name>``);
- optionally ``after_optimizer_step(step, total_steps)``: called after each optimiser step
  (``step`` counts from 1; ``total_steps`` is the planned number of steps, an estimate from the
  measured pace when the run is limited by time), e.g. for momentum-encoder updates;
- optionally ``needs_context: bool`` (class or instance attribute, default False): ask the data
  layer for ``"contexts"``; ``needs_pairs: bool``: train on labelled rows;
- optionally ``supports_matryoshka: bool``: its ``objective`` (a
  :class:`~contrastkit.nn.distributed.GatheredObjective`) reads the encoder's own embeddings, so
  :func:`contrastkit.modalities.text.matryoshka.use_matryoshka` may nest it (``matryoshka_refusal``:
  why not, where it depends on the options).

Randomness: views and other draws come from torch's global generator, which the engine reseeds
from ``(seed, step, rank)`` before every step, so a run is reproducible and resumes exactly (a
private generator advanced step by step would not be: a resumed run would start it afresh). The Transformers' dropout masks are drawn per
sample during training (:mod:`contrastkit.modalities.text.dropout`). In-batch negatives go through
:class:`~contrastkit.nn.distributed.GatheredObjective` (``_parts.pair_objective``,
``_losses.gathered_query_key_infonce``), so that under several processes every query meets the
keys of all of them; queue updates and moving averages run in the step (the queue gathers its keys)
or in ``after_optimizer_step``, so a checkpoint written after the step holds them.

**Registry.** The text methods are entries of the one method registry
(:data:`contrastkit.core.registry.METHODS`, added by :mod:`contrastkit.modalities.text.plugin`); modules are
imported only when their method is built (so one method's optional dependencies never burden
another). Each module defines ``build(encoder, **options) -> method``, which validates its options
(:func:`check_options` gives the standard did-you-mean error for unknown ones) and raises
:class:`~contrastkit.core.errors.ConfigError` for invalid values. Memory-hungry in-batch methods accept
``grad_cache_chunk`` (rows per forward pass; see :mod:`contrastkit.nn.gradcache`).

Adding a method: write ``contrastkit/modalities/text/methods/<name>.py`` with ``build`` and add its line
to :mod:`contrastkit.modalities.text.plugin`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from contrastkit.core.errors import with_known_options
from contrastkit.core.registry import METHODS
from contrastkit.modalities.text import plugin as _plugin  # noqa: F401  (registers the text methods)

def text_method_names() -> list[str]:
    return METHODS.names("text")


def build_text_method(name: str, encoder: nn.Module, **options: Any) -> nn.Module:
    """The text method ``name`` around ``encoder``, configured by ``options`` (each method's own)."""
    return METHODS.load("text", name)(encoder, **options)


def check_options(method: str, options: Mapping[str, Any], defaults: Mapping[str, Any]) -> dict[str, Any]:
    """``defaults`` updated with ``options``; an option not in ``defaults`` raises ConfigError
    naming the closest valid ones."""
    return with_known_options(defaults, options, f"text method '{method}'")


__all__ = ["build_text_method", "check_options", "text_method_names"]
