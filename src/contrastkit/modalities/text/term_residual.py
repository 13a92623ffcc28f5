"""A learned lexical term added to a sentence embedding: one vector per vocabulary token.

For a text x with the set T(x) of distinct tokens it contains (special tokens -- [CLS], [SEP],
padding -- left out) and a table W of one D-dimensional row per token::

    r(x) = sum_{t in T(x)} W[t] / sqrt(|T(x)|)            (0 when T(x) is empty)

and :class:`~contrastkit.modalities.text.encoders.TextEncoder` returns ``normalise(f(x) + r(x))`` in place of
``f(x)`` (the Transformer's pooled, possibly normalised, embedding; for a model without
normalisation, ``f(x) + r(x)``). W starts at 0, so a fresh residual changes nothing.

Why: a dense sentence embedding keeps the gist of a text and loses which rare words it holds,
while on domain corpora a good part of what ranks documents is exactly those words (BM25 beats
all-MiniLM-L6-v2 on SciFact). A row W[t] can learn "a text that says t should move towards the
documents that are about t" -- a dense, learned stand-in for lexical matching, cheap enough to train
in minutes on a CPU because the Transformer stays frozen (its embeddings can be computed once).
Trained by :mod:`contrastkit.modalities.text.methods.hybrid_distill` (``student=term-residual``) on the query
side of a two-tower retriever, so documents keep the base model's embeddings. SPAR (Chen et al.,
EMNLP 2022 Findings, https://arxiv.org/abs/2110.06918) makes the same point with a second dense
model trained to imitate BM25; here the lexical part is a bag of token vectors added to the base
model's own embedding.

Distinct tokens (not counts) and the 1/sqrt(n) scale: a repeated word should not count twice, and
the residual of a long text should not swamp its embedding. Saved as ``term_residual.safetensors``
(the non-zero rows and their token ids) beside the Transformer, and loaded with it.

**What it is for.** A residual trained by ``hybrid-distill`` is the *query tower* of a retriever over one
corpus: documents keep the base model's embeddings, and every ordinary word of a general sentence moves
its embedding too (on general sentence similarity it costs points: :mod:`contrastkit.modalities.text.general_guard`).
``corpus`` records which corpus (saved with the table), so ``evaluate`` can say so.

**Keeping general quality** (issue 31). Five settings restrict what the table can do, applied in this
order to the sum ``r(x)`` above, and saved with it (so they need no retraining to change):

- ``allowed``: only these tokens have a row (e.g. the tokens over-represented in the target corpus,
  :func:`over_represented_tokens`); the others' rows act as 0 -- they still count in ``|T(x)|``, so
  restricting a trained table never enlarges the rows it keeps;
- ``min_tokens`` m: ``r(x) * min(1, |T(x)| / m)``, a ramp that gives a text of fewer than m distinct
  tokens only that share of its residual. Why: with the 1/sqrt(n) scale a one-token text gets its token's
  whole row, and a word alone (a dictionary lemma, a search keyword matched against sentences) is not what
  the table was trained on -- its training texts are the corpus's sentences. Measured: on the guard's
  word-level set the lemma side carries most of the loss (docs/benchmarks.md, issue 31);
- ``gate`` (a corpus gate: centre mu, thresholds lo < hi): ``r(x) * clamp((cos(f(x), mu) - lo) / (hi - lo),
  0, 1)``, where f(x) is the base embedding. The residual is the query tower of one corpus; a text whose base
  embedding is far from the corpus's centre (general text) gets none of it, a text as close as the corpus's
  own documents all of it. :func:`corpus_gate` sets mu to the mean direction of the corpus's documents, hi to
  a low quantile of their cosines to it and lo to the same high quantile of general reference sentences'
  (for all-MiniLM-L6-v2 on SciFact at 0.2: lo 0.04, hi 0.23; SciFact's claims have a median of 0.32,
  general sentences of about 0);
- ``scale`` alpha >= 0: ``alpha * r(x)``; since ``f(x) + alpha r(x) = (1 - alpha) f(x) + alpha (f(x) + r(x))``
  this mixes the base embedding with the adapted one before normalising (alpha 0: the base model exactly);
- ``max_norm`` c: ``r * min(1, c / ||r||)``, a cap on how far a text can move (the base embedding has
  norm 1 when normalised, so c 0.2 caps the angle at about 11.5 degrees).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from contrastkit.core.errors import ConfigError, DataError

TERM_RESIDUAL_FILE = "term_residual.safetensors"


class TermResidual(nn.Module):
    """The table W (vocabulary x dim, zeros at the start) and ``r(x)`` of the module docstring, with its
    restrictions (``allowed`` token ids, ``min_tokens``, ``gate``, ``scale``, ``max_norm``) and the ``corpus``
    it was trained for."""

    def __init__(self, vocab_size: int, dim: int, special_ids: Iterable[int] = (), *, scale: float = 1.0,
                 max_norm: float | None = None, allowed: Iterable[int] | None = None,
                 corpus: dict | None = None, min_tokens: int | None = None,
                 gate: tuple[Tensor, float, float] | None = None) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(vocab_size, dim))
        ignored = torch.zeros(vocab_size, dtype=torch.bool)
        ids = [i for i in special_ids if i is not None and 0 <= i < vocab_size]
        ignored[ids] = True
        self.register_buffer("ignored", ignored, persistent=False)
        self.register_buffer("allowed", None, persistent=False)
        self.register_buffer("gate_center", None, persistent=False)
        self.gate_low = self.gate_high = 0.0
        self.scale = 1.0
        self.max_norm: float | None = None
        self.min_tokens: int | None = None
        self.restrict(scale=scale, max_norm=max_norm, allowed=allowed, min_tokens=min_tokens, gate=gate)
        self.corpus = dict(corpus) if corpus else None  # what the table was trained for (module docstring)

    def restrict(self, *, scale: float | None = None, max_norm: float | None | bool = False,
                 allowed: Iterable[int] | None | bool = False,
                 min_tokens: int | None | bool = False,
                 gate: tuple[Tensor, float, float] | None | bool = False) -> TermResidual:
        """Set ``scale``, ``max_norm`` (None: no cap), ``allowed`` (token ids; None: every token),
        ``min_tokens`` (None: no ramp) and ``gate`` (``(centre, lo, hi)``, :func:`corpus_gate`; None: no gate);
        an argument left out keeps its value. Returns the residual."""
        if gate is not False:
            if gate is None:
                self.gate_center = None
            else:
                center, low, high = gate
                center = torch.as_tensor(center, dtype=torch.float32).flatten()
                if center.numel() != self.weight.shape[1] or not float(center.norm()) > 0:
                    raise ConfigError(f"The corpus gate's centre must be a non-zero vector of {self.weight.shape[1]} "
                                      f"values, got {center.numel()}.")
                if not float(low) < float(high):
                    raise ConfigError(f"The corpus gate needs lo < hi, got lo {low} and hi {high}.")
                self.gate_center = F.normalize(center, dim=0).to(self.weight.device)
                self.gate_low, self.gate_high = float(low), float(high)
        if min_tokens is not False:
            if min_tokens is not None and (isinstance(min_tokens, bool) or int(min_tokens) != min_tokens
                                           or min_tokens < 1):
                raise ConfigError(f"The term residual's min_tokens must be a whole number >= 1 (None: no ramp), "
                                  f"got {min_tokens}.")
            # 1 is no ramp (every text has at least one token, or no residual): store it as none.
            self.min_tokens = None if min_tokens is None or min_tokens == 1 else int(min_tokens)
        if scale is not None:
            if not scale >= 0:
                raise ConfigError(f"The term residual's scale must be >= 0 (0: the base model), got {scale}.")
            self.scale = float(scale)
        if max_norm is not False:
            if max_norm is not None and not max_norm > 0:
                raise ConfigError(f"The term residual's max_norm must be > 0 (None: no cap), got {max_norm}.")
            self.max_norm = None if max_norm is None else float(max_norm)
        if allowed is not False:
            if allowed is None:
                self.allowed = None
            else:
                mask = torch.zeros(self.weight.shape[0], dtype=torch.bool, device=self.weight.device)
                ids = torch.as_tensor(list(allowed), dtype=torch.long, device=self.weight.device)
                if ids.numel() and (ids.min() < 0 or ids.max() >= mask.numel()):
                    raise DataError(f"Allowed token ids must be in [0, {mask.numel()}), got {ids.min()}..{ids.max()}.")
                mask[ids] = True
                self.allowed = mask
        return self

    def unscaled(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """(B, D) ``r(x)`` of a tokenised batch (B, L) with the ``allowed`` rows only (no ramp, no scale,
        no cap)."""
        return self._sum_and_count(input_ids, attention_mask)[0]

    def _sum_and_count(self, input_ids: Tensor, attention_mask: Tensor) -> tuple[Tensor, Tensor]:
        """(B, D) :meth:`unscaled` and (B, 1) ``|T(x)|``, the distinct ordinary tokens of each text."""
        ids = input_ids.to(self.weight.device)
        keep = attention_mask.to(self.weight.device).bool() & ~self.ignored[ids]
        # Distinct tokens per row: sort, and count a token only where it differs from its left neighbour.
        ids = torch.where(keep, ids, torch.full_like(ids, -1))
        ids, _ = ids.sort(dim=1)
        first = torch.ones_like(ids, dtype=torch.bool)
        first[:, 1:] = ids[:, 1:] != ids[:, :-1]
        use = first & (ids >= 0)
        count = use.sum(dim=1, keepdim=True).clamp_min(1).to(self.weight.dtype)
        rowed = use if self.allowed is None else use & self.allowed[ids.clamp_min(0)]  # others count in n only
        rows = self.weight[ids.clamp_min(0)] * rowed.unsqueeze(-1).to(self.weight.dtype)
        return rows.sum(dim=1) / count.sqrt(), count

    def gate_share(self, base: Tensor) -> Tensor:
        """(B, 1) the share of the residual the corpus gate lets through for base embeddings (B, D)."""
        return gate_share(base, (self.gate_center, self.gate_low, self.gate_high)).unsqueeze(-1)

    def forward(self, input_ids: Tensor, attention_mask: Tensor, base: Tensor | None = None,
                gated: bool = True) -> Tensor:
        """(B, D) residuals of a tokenised batch (B, L): :meth:`unscaled`, ramped by length, gated by the
        texts' base embeddings ``base`` (B, D), scaled, then capped. ``gated=False`` leaves the gate out
        (the L2 pulls of training, which have no base embedding for their general sentences)."""
        residual, count = self._sum_and_count(input_ids, attention_mask)
        if self.min_tokens is not None:
            residual = residual * (count / self.min_tokens).clamp(max=1.0)
        if gated and self.gate_center is not None:
            if base is None:
                raise ConfigError("This term residual has a corpus gate, which needs the texts' base embeddings: "
                                  "call it with base=..., or through TextEncoder.finish.")
            residual = residual * self.gate_share(base).to(residual)
        if self.scale != 1.0:
            residual = self.scale * residual
        if self.max_norm is not None:
            norm = residual.norm(dim=1, keepdim=True)
            residual = residual * (self.max_norm / norm.clamp_min(1e-12)).clamp(max=1.0)
        return residual

    def settings(self) -> dict:
        """The restrictions and the corpus, as saved beside the table (JSON-friendly)."""
        return {"scale": self.scale, "max_norm": self.max_norm, "min_tokens": self.min_tokens,
                "gate": None if self.gate_center is None else {"lo": self.gate_low, "hi": self.gate_high},
                "allowed_tokens": None if self.allowed is None else int(self.allowed.sum()),
                "corpus": self.corpus}

    def save(self, folder: str | os.PathLike) -> Path:
        """Write the non-zero rows (and their token ids), the restrictions and the corpus to
        ``folder/term_residual.safetensors``."""
        from safetensors.torch import save_file

        weight = self.weight.detach().float().cpu()
        rows = torch.nonzero(weight.abs().sum(dim=1) > 0).flatten()
        tensors = {"token_ids": rows.contiguous(), "rows": weight[rows].contiguous(),
                   "shape": torch.tensor(list(weight.shape))}
        if self.allowed is not None:
            tensors["allowed_ids"] = torch.nonzero(self.allowed.cpu()).flatten().contiguous()
        if self.gate_center is not None:
            tensors["gate_center"] = self.gate_center.float().cpu().contiguous()
        metadata = {"scale": repr(self.scale), "max_norm": "" if self.max_norm is None else repr(self.max_norm),
                    "min_tokens": "" if self.min_tokens is None else str(self.min_tokens),
                    "gate": "" if self.gate_center is None else json.dumps([self.gate_low, self.gate_high]),
                    "corpus": json.dumps(self.corpus) if self.corpus else ""}
        path = Path(folder) / TERM_RESIDUAL_FILE
        save_file(tensors, str(path), metadata=metadata)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike, vocab_size: int, dim: int,
             special_ids: Iterable[int] = ()) -> TermResidual:
        """The residual saved by :meth:`save`, checked against the encoder's vocabulary and width."""
        from safetensors import safe_open
        from safetensors.torch import load_file

        saved = load_file(str(path))
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}  # files of earlier versions have none: no restriction
        shape = tuple(int(v) for v in saved["shape"].tolist())
        if shape != (vocab_size, dim):
            raise DataError(f"'{path}' holds a term residual of shape {shape}, but the encoder beside it has "
                            f"{vocab_size} tokens and {dim} dimensions: the files do not belong together.")
        residual = cls(vocab_size, dim, special_ids, scale=float(metadata.get("scale") or 1.0),
                       max_norm=float(metadata["max_norm"]) if metadata.get("max_norm") else None,
                       allowed=saved["allowed_ids"].tolist() if "allowed_ids" in saved else None,
                       corpus=json.loads(metadata["corpus"]) if metadata.get("corpus") else None,
                       min_tokens=int(metadata["min_tokens"]) if metadata.get("min_tokens") else None,
                       gate=(saved["gate_center"], *json.loads(metadata["gate"])) if "gate_center" in saved else None)
        with torch.no_grad():
            residual.weight[saved["token_ids"]] = saved["rows"]
        return residual


def gate_share(base: Tensor, gate: tuple[Tensor, float, float]) -> Tensor:
    """(B,) the share ``clamp((cos(base, mu) - lo) / (hi - lo), 0, 1)`` of the residual a corpus gate
    ``(mu, lo, hi)`` (:func:`corpus_gate`) gives texts of base embeddings ``base`` (B, D)."""
    center, low, high = gate
    closeness = F.normalize(base.float(), dim=-1) @ F.normalize(center.float(), dim=0).to(base.device)
    return ((closeness - low) / (high - low)).clamp(0.0, 1.0)


def corpus_gate(documents: Tensor, reference: Tensor, quantile: float = 0.1) -> tuple[Tensor, float, float]:
    """``(centre, lo, hi)`` of a corpus gate (module docstring) from base embeddings: ``documents`` (N, D), the
    corpus's, and ``reference`` (M, D), general sentences'. The centre is the mean of the documents' unit
    embeddings; ``hi`` the ``quantile`` of the documents' cosines to it (a share ``1 - quantile`` of them gets
    the whole residual), ``lo`` the ``1 - quantile`` quantile of the reference's (a share ``quantile`` of
    general text gets any). Raises when the two overlap there (lo >= hi): the corpus is then too close to
    general text for a gate at that quantile."""
    if not 0.0 < quantile < 0.5:
        raise ConfigError(f"The corpus gate's quantile must be in (0, 0.5), got {quantile}.")
    if documents.ndim != 2 or reference.ndim != 2 or not len(documents) or not len(reference):
        raise DataError("corpus_gate needs non-empty (N, D) embeddings of the corpus's documents and of general text.")
    documents, reference = F.normalize(documents.float(), dim=1), F.normalize(reference.float(), dim=1)
    center = F.normalize(documents.mean(dim=0), dim=0)
    high = float(torch.quantile(documents @ center, quantile))
    low = float(torch.quantile(reference @ center, 1.0 - quantile))
    if not low < high:
        raise DataError(f"The corpus's documents and the general reference overlap at quantile {quantile} (lo "
                        f"{low:.3f} >= hi {high:.3f}): a corpus gate cannot tell them apart there; take a smaller "
                        "quantile, or no gate.")
    return center, low, high


def residual_l2(residual: Tensor) -> Tensor:
    """``mean_b ||r(x_b)||^2`` of a (B, D) batch of residuals: the L2 pull of the residual to zero
    (``residual_l2`` of hybrid-distill). With the base embedding of norm 1, ``||r||^2`` is the share of
    the base embedding's squared length the residual adds."""
    return residual.float().pow(2).sum(dim=1).mean()


def over_represented_tokens(target: Sequence[Sequence[int]], reference: Sequence[Sequence[int]],
                            min_ratio: float = 4.0, min_count: int = 3,
                            ignored: Iterable[int] = ()) -> list[int]:
    """Token ids over-represented in a target corpus against a general reference corpus.

    Each corpus is a list of texts as token id lists. With ``df_T(t)`` and ``df_R(t)`` the number of
    texts that hold t among the ``N_T`` target and ``N_R`` reference texts, t is kept when it occurs in
    at least ``min_count`` target texts and::

        (df_T(t) / N_T) / ((df_R(t) + 1) / (N_R + 1))  >=  min_ratio

    (add-one smoothing of the reference share, so a token the reference never holds is kept only if its
    target share is ``min_ratio / (N_R + 1)`` or more). Words as frequent in general text as in the
    target ("the", "patients" vs "people") drop out; what stays is the domain's vocabulary, the only
    rows a restricted residual (:meth:`TermResidual.restrict`) may use. Sorted ids."""
    if not min_ratio > 0 or min_count < 1:
        raise ConfigError(f"over_represented_tokens needs min_ratio > 0 and min_count >= 1, got {min_ratio}, "
                          f"{min_count}.")
    if not target or not reference:
        raise DataError("over_represented_tokens needs a non-empty target corpus and a non-empty reference corpus.")
    skip = set(ignored)

    def document_frequency(texts: Sequence[Sequence[int]]) -> dict[int, int]:
        counts: dict[int, int] = {}
        for ids in texts:
            for token in set(ids) - skip:
                counts[token] = counts.get(token, 0) + 1
        return counts

    in_target, in_reference = document_frequency(target), document_frequency(reference)
    n_target, n_reference = len(target), len(reference)
    return sorted(t for t, df in in_target.items() if df >= min_count
                  and (df / n_target) / ((in_reference.get(t, 0) + 1) / (n_reference + 1)) >= min_ratio)


__all__ = ["TERM_RESIDUAL_FILE", "TermResidual", "corpus_gate", "gate_share", "over_represented_tokens",
           "residual_l2"]
