"""Cached contrastive training: large batches with the memory of small chunks (GradCache).

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

Any encoder and any batch of tensors: ``embed`` maps a batch (a tensor, a mapping of tensors such
as a token batch, or a tuple of tensors, all with the rows first) to (rows, d) embeddings. Text
towers embed token batches (each chunk trimmed to its own longest row); image backbones embed view
tensors; a two-tower model embeds each side's batch.

Three things make the replay in step (3) reproduce step (1) exactly:

- **Randomness** (dropout): before each chunk's first pass the random number generator state is
  recorded (CPU, and the current CUDA device when the encoder is there), and restored before its
  second pass, so the dropout masks are replayed; the generator is put back afterwards, so the
  replay leaves the random stream as the first pass left it. The inputs themselves (augmented
  views, token batches) are drawn once, before caching, and the same tensors are re-embedded.
- **Mixed precision**: the autocast state of the first pass (enabled, dtype) is re-entered for the
  replay, which runs inside the backward pass, outside the caller's autocast region.
- **Running statistics** (BatchNorm's running mean and variance, any buffer a forward pass
  updates): the first pass updates them once per chunk; the buffers of ``modules`` (default: the
  encoder itself when it is a module) are copied before the replay and put back after it, so a
  step leaves them as one pass per chunk does, not twice.

BatchNorm: a chunk's forward pass normalises with the statistics of that chunk, so the cached run
is the whole-batch run with BatchNorm over consecutive chunks of ``chunk_size`` rows ("ghost batch
norm", Hoffer et al. 2017), not with statistics of the whole batch. Exact whole-batch statistics
cannot be had in bounded memory: every BatchNorm layer would need the statistics of its input over
all chunks before any chunk's output could pass on to the next layer, one pass over the batch per
layer, and its backward pass couples the rows the same way. Methods therefore cache the backbone
only and apply their (small) heads to the whole batch with an ordinary graph, so a projector's
BatchNorm still sees every row.

How it fits the method contract: :func:`cached_embed` returns embeddings that ``require_grad``
and behave like ``embed(batch)``; any loss can be computed from them, and ``loss.backward()``
performs steps 2 and 3 (an autograd function whose backward re-embeds the chunks, the way
reentrant activation checkpointing does). Like reentrant checkpointing it supports
``loss.backward()`` but not ``torch.autograd.grad(loss, parameters)``, and it trains in one
process: the replay accumulates each parameter's gradient once per chunk, which DDP's reducer
(one "ready" per parameter and step) refuses.

Accumulation that keeps negatives: a batch of ``B`` rows trained in chunks of ``N`` is what
accumulating ``B / N`` mini-batches would be if every mini-batch's rows stayed negatives of all
the others; the loss sees the whole batch's embeddings. (Accumulating gradients of separate
mini-batch losses does not: each mini-batch would contrast only with itself.)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from contrastkit.core.errors import ConfigError

# A batch of rows: a tensor, a mapping of tensors (a token batch) or a tuple of tensors, rows first.
Batch = Tensor | Mapping[str, Tensor] | Sequence[Tensor]
EmbedFn = Callable[[Any], Tensor]
Tokens = Mapping[str, Tensor]


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


@dataclass(frozen=True)
class AutocastState:
    """Whether autocast is on for a device type, and its dtype: the first pass's, for the replay."""

    device_type: str
    enabled: bool
    dtype: torch.dtype

    @classmethod
    def capture(cls, device: torch.device) -> AutocastState:
        return cls(device.type, torch.is_autocast_enabled(device.type), torch.get_autocast_dtype(device.type))

    def region(self) -> torch.autocast:
        return torch.autocast(self.device_type, dtype=self.dtype, enabled=self.enabled)


def _check_chunk_size(chunk_size: int) -> None:
    if not isinstance(chunk_size, int) or isinstance(chunk_size, bool) or chunk_size < 1:
        raise ConfigError(f"grad_cache_chunk must be a positive number of rows, got {chunk_size!r}.")


def split_tokens(tokens: Tokens, chunk_size: int) -> list[dict[str, Tensor]]:
    """Rows of a token batch in consecutive chunks of ``chunk_size`` (the last may be shorter).

    Each chunk is trimmed to its own longest row, so short chunks do not pay for long ones.
    """
    _check_chunk_size(chunk_size)
    rows = tokens["attention_mask"].shape[0]
    chunks = []
    for start in range(0, rows, chunk_size):
        chunk = {name: value[start:start + chunk_size] for name, value in tokens.items()}
        length = max(int(chunk["attention_mask"].sum(1).max()), 1)
        chunks.append({name: value[:, :length] for name, value in chunk.items()})
    return chunks


def split_batch(batch: Batch, chunk_size: int) -> list[Batch]:
    """Rows of ``batch`` in consecutive chunks of ``chunk_size`` (the last may be shorter), each of
    the batch's kind: tensors sliced along the first dimension (views of the batch, no copies), a
    token batch (a mapping with ``attention_mask``) as :func:`split_tokens`, other mappings and
    tuples field by field."""
    _check_chunk_size(chunk_size)
    if isinstance(batch, Tensor):
        return list(batch.split(chunk_size))
    if isinstance(batch, Mapping):
        if "attention_mask" in batch:
            return split_tokens(batch, chunk_size)
        names = list(batch)
        return [dict(zip(names, parts)) for parts in zip(*(batch[n].split(chunk_size) for n in names))]
    if isinstance(batch, Sequence):
        return [type(batch)(parts) for parts in zip(*(part.split(chunk_size) for part in batch))]
    raise TypeError(f"GradCache splits a tensor, a mapping or a tuple of tensors, not {type(batch).__name__}.")


def batch_device(batch: Batch) -> torch.device:
    """The device of the batch's (first) tensor."""
    if isinstance(batch, Tensor):
        return batch.device
    first = next(iter(batch.values())) if isinstance(batch, Mapping) else batch[0]
    return first.device


def _buffers(modules: Iterable[nn.Module]) -> list[Tensor]:
    """Every buffer of ``modules`` once (a module shared by two of them counts once)."""
    seen: dict[int, Tensor] = {}
    for module in modules:
        for buffer in module.buffers():
            seen.setdefault(id(buffer), buffer)
    return list(seen.values())


class _CachedEmbeddings(torch.autograd.Function):
    """Forward: embed every chunk without a graph (recording RNG and autocast states). Backward:
    replay each chunk with a graph and inject its cached embedding gradient."""

    @staticmethod
    def forward(ctx, embed: EmbedFn, chunks: list[Batch], device: torch.device,
                modules: tuple[nn.Module, ...], _anchor: Tensor) -> Tensor:
        states, outputs = [], []
        with torch.no_grad():
            for chunk in chunks:
                states.append(RandomState.capture(device))
                outputs.append(embed(chunk))
        ctx.embed, ctx.chunks, ctx.states, ctx.modules = embed, chunks, states, modules
        ctx.device = device
        ctx.autocast = AutocastState.capture(device)
        ctx.sizes = [output.shape[0] for output in outputs]
        return torch.cat(outputs)

    @staticmethod
    def backward(ctx, grad_output: Tensor):
        outside = RandomState.capture(ctx.device)  # the stream as the caller left it
        # The first pass already updated the running statistics once per chunk: keep its values.
        buffers = _buffers(ctx.modules)
        kept = [buffer.clone() for buffer in buffers]
        try:
            for chunk, state, grad in zip(ctx.chunks, ctx.states, grad_output.split(ctx.sizes), strict=True):
                state.restore()
                with torch.enable_grad(), ctx.autocast.region():
                    embedding = ctx.embed(chunk)
                torch.autograd.backward(embedding, grad.to(embedding.dtype))
        finally:
            outside.restore()
            with torch.no_grad():
                for buffer, value in zip(buffers, kept, strict=True):
                    buffer.copy_(value)
        return None, None, None, None, None


def cached_embed(embed: EmbedFn, batch: Batch, chunk_size: int, device: torch.device | None = None,
                 modules: Sequence[nn.Module] | None = None) -> Tensor:
    """``embed(batch)`` computed ``chunk_size`` rows at a time, with GradCache's backward.

    Args:
        embed: the encoder (any callable from a batch to (rows, d) embeddings whose parameters
            should receive gradients); it is called once per chunk now and once more per chunk in
            the backward pass.
        batch: a tensor, a token batch (``input_ids``, ``attention_mask``, ...), or another mapping
            or tuple of tensors, rows first; data, not a tensor that requires grad.
        chunk_size: rows per forward pass (memory is that of one chunk).
        device: where ``embed`` runs (whose CUDA generator is replayed); default: the batch's.
        modules: the modules whose buffers (running statistics) the replay must leave as the first
            pass left them; default: ``embed`` itself when it is a module.

    Returns:
        (rows, d) embeddings that require grad; ``loss(embeddings).backward()`` accumulates into
        the parameters' ``.grad`` exactly what ``loss(cat([embed(chunk) ...])).backward()`` would,
        and the buffers end as that uncached chunked pass leaves them.
    """
    device = torch.device(device) if device is not None else batch_device(batch)
    if modules is None:
        modules = (embed,) if isinstance(embed, nn.Module) else ()
    # The autograd function needs one input that requires grad for its backward to be called.
    anchor = torch.empty(0, requires_grad=True)
    return _CachedEmbeddings.apply(embed, split_batch(batch, chunk_size), device, tuple(modules), anchor)


def chunked_embed(embed: EmbedFn, batch: Batch, chunk_size: int | None) -> Tensor:
    """``embed`` over the chunks of ``batch`` with an ordinary graph (no caching), or over the
    whole batch when ``chunk_size`` is None: the reference that :func:`cached_embed` reproduces,
    and the bounded-memory pass of encoders that need no gradient (momentum keys)."""
    if chunk_size is None:
        return embed(batch)
    return torch.cat([embed(chunk) for chunk in split_batch(batch, chunk_size)])


def embed_batch(embed: EmbedFn, batch: Batch, grad_cache_chunk: int | None,
                device: torch.device | None = None, modules: Sequence[nn.Module] | None = None) -> Tensor:
    """What a method calls: the plain encoder, or :func:`cached_embed` when ``grad_cache_chunk``
    is set and gradients are being recorded (under ``no_grad`` caching would have nothing to do)."""
    if grad_cache_chunk is None or not torch.is_grad_enabled():
        return embed(batch)
    return cached_embed(embed, batch, grad_cache_chunk, device, modules)


def embed_tokens(embed: EmbedFn, tokens: Tokens, grad_cache_chunk: int | None,
                 device: torch.device | None = None) -> Tensor:
    """:func:`embed_batch` for a token batch (the name the text methods use)."""
    return embed_batch(embed, tokens, grad_cache_chunk, device)


def check_one_process(grad_cache_chunk: int | None, processes: int, option: str = "--grad-cache-chunk") -> None:
    """ConfigError when GradCache is asked for with more than one training process."""
    if grad_cache_chunk is not None and processes != 1:
        raise ConfigError(f"GradCache ({option}) trains in one process: it recomputes each chunk in the "
                          f"backward pass, which DDP does not allow ({processes} processes were asked for). "
                          f"Use --devices 1, or drop {option}.")
