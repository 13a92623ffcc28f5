"""Dropout masks drawn per sample, so that N processes train like one process on their joint batch.

Why: torch's dropout draws each process's masks from that process's generator, which the engine
reseeds from (seed, step, rank). Under data parallelism the sentence that one process would hold at
row 40 of its batch sits at row 8 of the second process's batch, and gets another mask; a 2-process
SimCSE run (whose only augmentation is dropout) then cannot equal the 1-process run on the
concatenated batch. Here a mask is a function of where the row sits in that concatenated batch.

The mask. Training runs of ``contrastkit text`` replace the Transformers' dropout (every
``nn.Dropout`` module, and the dropout of the attention probabilities, which Hugging Face models
apply inside their attention function) while they train (:func:`sample_seeded_dropout`). In forward
pass ``k`` of optimiser step ``t`` (passes of a Transformer in training mode, counted from 0 in
each step), dropout site ``s`` (the dropout module's or attention layer's position in the method), process ``q`` of ``W``, each
passing ``n`` rows, row ``r`` is the row ``g = q * n + r`` of the concatenated batch, and element
``e`` of that row is kept when::

    h( h(h(g) XOR key(seed, t, k, s)) XOR h(coordinate(e)) )  >=  p * 2^31

and then scaled by ``1 / (1 - p)``, as torch's dropout does. ``h`` is a bijective 31-bit integer
hash (two multiply-xorshift rounds with Thomas Mueller's constant 0x45d9f3b) and ``key`` is
splitmix64 over the four integers. An element's coordinate is its position in the *row*, never in
the padded batch: ``token * D + feature`` for hidden states (B, L, D), and ``(head, query, key)``
for attention probabilities (B, H, L, L). Each process pads its rows to its own longest one, so the
same sentence is padded differently in a 2-process and a 1-process run; its mask is the same, and
the padding positions (masked out of the attention, ignored by pooling) do not matter.

What the equality needs besides the masks: the same rows in each process's forward pass as in the
concatenated one (one row per sample: SimCSE, Contriever, ICT's two towers; methods that stack
copies of the batch in one pass, DebCSE, WhitenedCSE and CCP, get valid but different masks), the
same number of rows on every process (the engine's samplers give that), and negatives gathered
across processes (:mod:`contrastkit.nn.distributed`). Masks depend on no generator state, so a resumed
run draws the masks of an uninterrupted one.

Not with GradCache: it recomputes each chunk in the backward pass and replays *torch's* generator
to reproduce the first pass's masks; its runs keep torch's dropout (:mod:`contrastkit.nn.gradcache`).
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from contrastkit.nn.distributed import rank
from contrastkit.core.errors import ConfigError

ATTENTION_IMPLEMENTATION = "contrastkit_sample_dropout"
BITS = 31
MASK31 = (1 << BITS) - 1
MASK64 = (1 << 64) - 1
MIX_CONSTANT = 0x45D9F3B  # < 2^27: a product with a 31-bit value never overflows int64
MAX_TOKENS = 4096  # attention coordinates (head * 4096 + query) * 4096 + key stay below 2^31

# attention module -> (its model's stream, its site); read by the attention function
_ATTENTION_SITES: weakref.WeakKeyDictionary[nn.Module, tuple[DropoutStream, int]] = weakref.WeakKeyDictionary()


def mix31(x: Tensor) -> Tensor:
    """A bijection of [0, 2^31) onto itself that scatters neighbouring integers (int64 tensors)."""
    x = x ^ (x >> 16)
    x = (x * MIX_CONSTANT) & MASK31
    x = x ^ (x >> 16)
    x = (x * MIX_CONSTANT) & MASK31
    return x ^ (x >> 16)


def splitmix64(x: int) -> int:
    """Steele, Lea & Flood's SplitMix64 finaliser on a Python integer."""
    x = (x + 0x9E3779B97F4A7C15) & MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & MASK64
    return x ^ (x >> 31)


def call_key(*parts: int) -> int:
    """One 31-bit key from several integers (seed, step, pass, site)."""
    key = 0
    for part in parts:
        key = splitmix64(key ^ (part & MASK64))
    return key & MASK31


class DropoutStream:
    """Where the masks of a training run come from: the seed, the optimiser step and the pass.

    The engine's text module calls :meth:`begin_step` before every step; each Transformer forward
    pass in training mode calls :meth:`begin_pass` (a forward pre-hook)."""

    def __init__(self, seed: int):
        self.seed = int(seed)
        self.step = 0
        self.passes = 0  # forward passes begun in this step
        self.row_offset = 0  # this process's first row in the concatenated pass
        self._coordinates: dict[tuple, Tensor] = {}

    def begin_step(self, step: int) -> None:
        self.step, self.passes = int(step), 0

    def begin_pass(self, rows: int) -> None:
        self.passes += 1
        self.row_offset = rank() * rows

    def keep(self, site: int, coordinates: Tensor, rows: int, p: float) -> Tensor:
        """(rows, *coordinates.shape) booleans: which elements of each row survive at rate ``p``."""
        key = call_key(self.seed, self.step, self.passes - 1, site)
        global_rows = torch.arange(self.row_offset, self.row_offset + rows, device=coordinates.device)
        row_keys = mix31(mix31(global_rows) ^ key)
        shape = (rows,) + (1,) * coordinates.dim()
        return mix31(row_keys.view(shape) ^ coordinates) >= round(p * (1 << BITS))

    def hidden_coordinates(self, row_shape: torch.Size, device: torch.device) -> Tensor:
        """h(position in the row, row-major): a (L, D) row's element (token, feature) is token * D +
        feature, whatever the padded length L."""
        return self._cached(("hidden", tuple(row_shape), device),
                            lambda: mix31(torch.arange(row_shape.numel(), device=device).view(row_shape)))

    def attention_coordinates(self, heads: int, queries: int, keys: int, device: torch.device) -> Tensor:
        """h((head * 4096 + query) * 4096 + key) for (heads, queries, keys) attention probabilities."""
        if heads >= 128 or max(queries, keys) > MAX_TOKENS:
            raise ConfigError(f"Per-sample dropout covers up to 127 heads and {MAX_TOKENS} tokens; this model "
                              f"has {heads} heads and sequences of {max(queries, keys)} tokens.")

        def build() -> Tensor:
            h = torch.arange(heads, device=device).view(-1, 1, 1)
            q = torch.arange(queries, device=device).view(1, -1, 1)
            k = torch.arange(keys, device=device).view(1, 1, -1)
            return mix31((h * MAX_TOKENS + q) * MAX_TOKENS + k)

        return self._cached(("attention", heads, queries, keys, device), build)

    def _cached(self, key: tuple, build) -> Tensor:
        if key not in self._coordinates:
            if len(self._coordinates) > 256:  # every padded length of a run: a few dozen at most
                self._coordinates.clear()
            self._coordinates[key] = build()
        return self._coordinates[key]


def drop(x: Tensor, keep: Tensor, p: float) -> Tensor:
    """``x`` with the elements not kept set to 0 and the others scaled by 1 / (1 - p)."""
    return x.masked_fill(~keep, 0.0) * (1.0 / (1.0 - p))


class SampleDropout(nn.Module):
    """``nn.Dropout(p)`` with masks from a :class:`DropoutStream` (module docstring); identity in eval."""

    def __init__(self, p: float, stream: DropoutStream, site: int):
        super().__init__()
        self.p, self.stream, self.site = float(p), stream, site

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0.0:
            return x
        coordinates = self.stream.hidden_coordinates(x.shape[1:], x.device)
        return drop(x, self.stream.keep(self.site, coordinates, x.shape[0], self.p), self.p)

    def extra_repr(self) -> str:
        return f"p={self.p}, site={self.site}"


def attention_with_sample_dropout(module: nn.Module, query: Tensor, key: Tensor, value: Tensor,
                                  attention_mask: Tensor | None, dropout: float = 0.0,
                                  scaling: float | None = None, **kwargs) -> tuple[Tensor, Tensor]:
    """Hugging Face's eager attention, ``softmax(q k^T * scaling + mask) v``, with the attention
    probabilities dropped per sample (the attention interface of a model in training)."""
    scaling = query.shape[-1] ** -0.5 if scaling is None else scaling
    weights = torch.matmul(query, key.transpose(2, 3)) * scaling
    if attention_mask is not None:
        weights = weights + attention_mask
    weights = torch.nn.functional.softmax(weights, dim=-1)
    if dropout > 0.0 and module.training:
        stream, site = _ATTENTION_SITES[module]
        rows, heads, queries, keys = weights.shape
        coordinates = stream.attention_coordinates(heads, queries, keys, weights.device)
        weights = drop(weights, stream.keep(site, coordinates, rows, dropout), dropout)
    output = torch.matmul(weights, value).transpose(1, 2).contiguous()
    return output, weights


def _register_attention() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, eager_mask

    AttentionInterface.register(ATTENTION_IMPLEMENTATION, attention_with_sample_dropout)
    ALL_MASK_ATTENTION_FUNCTIONS.register(ATTENTION_IMPLEMENTATION, eager_mask)  # additive masks, as eager


def _is_hugging_face_model(module: nn.Module) -> bool:
    config = getattr(module, "config", None)
    return config is not None and hasattr(config, "_attn_implementation") and hasattr(module, "get_input_embeddings")


@contextmanager
def sample_seeded_dropout(method: nn.Module, seed: int) -> Iterator[DropoutStream]:
    """Within the block, every ``nn.Dropout`` of ``method`` and the attention dropout of its Hugging
    Face models draw per-sample masks from the yielded stream (module docstring); afterwards the
    modules, attention implementations and hooks are as they were. Models in eval mode run their
    own attention implementation, untouched."""
    stream = DropoutStream(seed)
    models = [(m, m.config._attn_implementation) for m in method.modules() if _is_hugging_face_model(m)]
    replaced: list[tuple[nn.Module, str, nn.Module]] = []
    hooks = []
    if models:
        _register_attention()
    # A site is the module's position in the method: distinct for every dropout module and attention layer.
    sites = {id(module): site for site, module in enumerate(method.modules())}
    try:
        for model, own_implementation in models:
            for module in model.modules():
                _ATTENTION_SITES[module] = (stream, sites[id(module)])
            hooks.append(model.register_forward_pre_hook(_pass_hook(stream, own_implementation), with_kwargs=True))
        for parent, name, child in _dropout_children(method):
            setattr(parent, name, SampleDropout(child.p, stream, sites[id(child)]).train(child.training))
            replaced.append((parent, name, child))
        yield stream
    finally:
        for parent, name, child in reversed(replaced):
            child.train(getattr(parent, name).training)
            setattr(parent, name, child)
        for hook in hooks:
            hook.remove()
        for model, own_implementation in models:
            model.config._attn_implementation = own_implementation
            for module in model.modules():
                _ATTENTION_SITES.pop(module, None)


def _dropout_children(method: nn.Module) -> list[tuple[nn.Module, str, nn.Dropout]]:
    return [(parent, name, child) for parent in method.modules() for name, child in parent.named_children()
            if type(child) is nn.Dropout and child.p > 0]


def _pass_hook(stream: DropoutStream, own_implementation: str):
    """A forward pre-hook: a pass in training mode begins (counted, its rows noted) and runs the
    per-sample attention; a pass in eval mode runs the model's own attention implementation."""

    def hook(model: nn.Module, args: tuple, kwargs: dict) -> None:
        if model.training:
            inputs = kwargs.get("input_ids", args[0] if args else None)
            if inputs is None:
                inputs = kwargs["inputs_embeds"]
            stream.begin_pass(inputs.shape[0])
            model.config._attn_implementation = ATTENTION_IMPLEMENTATION
        else:
            model.config._attn_implementation = own_implementation

    return hook
