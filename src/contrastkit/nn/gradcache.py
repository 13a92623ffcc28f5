"""Cached in-batch contrastive training: large batches with the memory of small chunks (GradCache).

Gao, Zhang, Han & Callan, "Scaling Deep Contrastive Learning Batch Size under Memory Limited
Setup", RepL4NLP 2021 (https://arxiv.org/abs/2101.06983). An in-batch contrastive loss couples
every row of the batch, so it cannot be split into independent mini-batches; but it depends on the
encoder only through the embeddings ``z = f_theta(x)``. With ``x`` split into chunks ``x_c``::

    d loss / d theta = sum_c  (d loss / d z_c)^T  (d z_c / d theta)

so training can (1) embed every chunk without building a graph, (2) compute the loss and
``g_c = d loss / d z_c`` on the full batch of embeddings, then (3) re-embed each chunk with a graph
and back-propagate ``g_c`` through it (``z_c.backward(g_c)``), freeing the chunk's activations
before the next one. Peak memory holds one chunk's activations plus the (B, d) embeddings; the cost
is one extra forward pass.

The re-embedding must reproduce the first pass exactly, dropout included: before each chunk's
first pass the random number generator state is recorded (CPU, and the current CUDA device when
the encoder is there), and restored before its second pass, so the dropout masks are replayed and
the gradient equals that of the uncached loss computed chunk by chunk with the same generator
(tests/nn/test_gradcache.py checks it with dropout on). The generator is put back afterwards, so the
replay leaves the random stream as the first pass left it.

How it fits the method contract: :func:`cached_embed` returns embeddings that ``require_grad``
and behave like ``encoder(tokens)``; any loss can be computed from them, and ``loss.backward()``
performs steps 2 and 3 (an autograd function whose backward re-embeds the chunks, the way
reentrant activation checkpointing does). Like reentrant checkpointing it supports
``loss.backward()`` but not ``torch.autograd.grad(loss, parameters)``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
from torch import Tensor

from contrastkit.core.errors import ConfigError

Tokens = Mapping[str, Tensor]
EmbedFn = Callable[[Tokens], Tensor]


@dataclass(frozen=True)
class RandomState:
    """The generator states that dropout draws from: CPU, plus one CUDA device when used."""

    cpu: Tensor
    cuda_device: int | None = None
    cuda: Tensor | None = None

    @classmethod
    def capture(cls, device: torch.device) -> RandomState:
        if device.type == "cuda":
            index = device.index if device.index is not None else torch.cuda.current_device()
            return cls(torch.get_rng_state(), index, torch.cuda.get_rng_state(index))
        return cls(torch.get_rng_state())

    def restore(self) -> None:
        torch.set_rng_state(self.cpu)
        if self.cuda is not None:
            torch.cuda.set_rng_state(self.cuda, self.cuda_device)


def split_tokens(tokens: Tokens, chunk_size: int) -> list[dict[str, Tensor]]:
    """Rows of a token batch in consecutive chunks of ``chunk_size`` (the last may be shorter).

    Each chunk is trimmed to its own longest row, so short chunks do not pay for long ones.
    """
    if chunk_size < 1:
        raise ConfigError(f"grad_cache_chunk must be a positive number of rows, got {chunk_size}.")
    rows = tokens["attention_mask"].shape[0]
    chunks = []
    for start in range(0, rows, chunk_size):
        chunk = {name: value[start:start + chunk_size] for name, value in tokens.items()}
        length = max(int(chunk["attention_mask"].sum(1).max()), 1)
        chunks.append({name: value[:, :length] for name, value in chunk.items()})
    return chunks


class _CachedEmbeddings(torch.autograd.Function):
    """Forward: embed every chunk without a graph (recording RNG states). Backward: replay each
    chunk with a graph and inject its cached embedding gradient."""

    @staticmethod
    def forward(ctx, embed: EmbedFn, chunks: list[dict[str, Tensor]], device: torch.device,
                _anchor: Tensor) -> Tensor:
        states, outputs = [], []
        with torch.no_grad():
            for chunk in chunks:
                states.append(RandomState.capture(device))
                outputs.append(embed(chunk))
        ctx.embed, ctx.chunks, ctx.states = embed, chunks, states
        ctx.device = device
        ctx.sizes = [output.shape[0] for output in outputs]
        return torch.cat(outputs)

    @staticmethod
    def backward(ctx, grad_output: Tensor):
        outside = RandomState.capture(ctx.device)  # the stream as the caller left it
        try:
            for chunk, state, grad in zip(ctx.chunks, ctx.states, grad_output.split(ctx.sizes), strict=True):
                state.restore()
                with torch.enable_grad():
                    embedding = ctx.embed(chunk)
                torch.autograd.backward(embedding, grad)
        finally:
            outside.restore()
        return None, None, None, None


def cached_embed(embed: EmbedFn, tokens: Tokens, chunk_size: int,
                 device: torch.device | None = None) -> Tensor:
    """``embed(tokens)`` computed ``chunk_size`` rows at a time, with GradCache's backward.

    Args:
        embed: the encoder (any callable from a token dict to (rows, d) embeddings whose parameters
            should receive gradients); it is called once per chunk now and once more per chunk in
            the backward pass.
        tokens: a token batch (``input_ids``, ``attention_mask``, ...).
        chunk_size: rows per forward pass (memory is that of one chunk).
        device: where ``embed`` runs (whose CUDA generator is replayed); default: the tokens'.

    Returns:
        (rows, d) embeddings that require grad; ``loss(embeddings).backward()`` accumulates into
        the parameters' ``.grad`` exactly what ``loss(cat([embed(chunk) ...])).backward()`` would.
    """
    device = torch.device(device) if device is not None else tokens["input_ids"].device
    # The autograd function needs one input that requires grad for its backward to be called.
    anchor = torch.empty(0, requires_grad=True)
    return _CachedEmbeddings.apply(embed, split_tokens(tokens, chunk_size), device, anchor)


def chunked_embed(embed: EmbedFn, tokens: Tokens, chunk_size: int | None) -> Tensor:
    """``embed`` over the chunks of ``tokens`` with an ordinary graph (no caching), or over the
    whole batch when ``chunk_size`` is None: the reference that :func:`cached_embed` reproduces."""
    if chunk_size is None:
        return embed(tokens)
    return torch.cat([embed(chunk) for chunk in split_tokens(tokens, chunk_size)])


def embed_tokens(embed: EmbedFn, tokens: Tokens, grad_cache_chunk: int | None,
                 device: torch.device | None = None) -> Tensor:
    """What a method calls: the plain encoder, or :func:`cached_embed` when ``grad_cache_chunk``
    is set and gradients are being recorded (under ``no_grad`` caching would have nothing to do)."""
    if grad_cache_chunk is None or not torch.is_grad_enabled():
        return embed(tokens)
    return cached_embed(embed, tokens, grad_cache_chunk, device)
