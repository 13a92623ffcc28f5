"""wav2vec 2.0's Gumbel-softmax product quantiser (Baevski et al. 2020, Sec. 3.1; Jang et al. 2017).

A latent ``z`` (D) is mapped to logits ``l`` (G, V) for ``G`` codebooks of ``V`` entries of
dimension ``d / G``. In training, each group picks entry ``argmax_v (l_{g,v} + n_v) / tau`` with
Gumbel noise ``n = -log(-log u)``, ``u ~ U(0, 1)``; the forward pass uses that hard one-hot choice
and the backward pass the gradient of the soft ``softmax((l_g + n) / tau)`` (the straight-through
estimator). The chosen entries are concatenated and mapped linearly to the output ``q``
(dimension ``d``). Out of training the choice is ``argmax_v l_{g,v}``, without noise.

``tau`` falls from 2 to 0.5 during training (the paper: times 0.999995 per update over 400k
updates, reaching 0.5 after about 70 % of them): here ``tau_k = max(0.5, 2 * 0.25^(k / (0.7 K)))``
after step k of K, kept as a buffer so that a resumed run continues with the same value.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from contrastkit.core.errors import ConfigError

START_TEMPERATURE, END_TEMPERATURE, ANNEALED_SHARE = 2.0, 0.5, 0.7


def gumbel_temperature(step: int, total_steps: int) -> float:
    """``tau`` after ``step`` of ``total_steps`` (module docstring)."""
    progress = step / max(ANNEALED_SHARE * total_steps, 1e-9)
    return max(END_TEMPERATURE, START_TEMPERATURE * (END_TEMPERATURE / START_TEMPERATURE) ** progress)


def straight_through_one_hot(logits: Tensor, temperature: float, uniform: Tensor | None = None) -> Tensor:
    """The hard one-hot ``argmax`` of ``(logits + gumbel(uniform)) / temperature`` over the last
    dimension, whose gradient is that of the soft ``softmax`` (no noise when ``uniform`` is None).

    Written ``hard + (soft - soft.detach())``: the bracket is exactly 0 in the forward pass, so the
    output is exactly one-hot and two frames that pick the same entries get the same vector."""
    noisy = logits if uniform is None else logits - torch.log(-torch.log(uniform.clamp(1e-10, 1 - 1e-7)))
    soft = (noisy / temperature).softmax(dim=-1)
    hard = F.one_hot(soft.argmax(dim=-1), logits.shape[-1]).to(soft.dtype)
    return hard + (soft - soft.detach())


class GumbelProductQuantizer(nn.Module):
    """``(B, T, in_dim) -> (q (B, T, out_dim), logits (B, T, G, V))`` (module docstring)."""

    temperature: Tensor

    def __init__(self, in_dim: int, out_dim: int, groups: int = 2, entries: int = 64):
        super().__init__()
        if groups < 1 or entries < 2 or out_dim % groups:
            raise ConfigError(f"The codebook needs G >= 1 groups of V >= 2 entries with the output width {out_dim} "
                              f"divisible by G; got --codebook-groups {groups}, --codebook-entries {entries}.")
        self.groups, self.entries = groups, entries
        self.to_logits = nn.Linear(in_dim, groups * entries)
        self.codebook = nn.Parameter(torch.empty(groups, entries, out_dim // groups).uniform_())
        self.out = nn.Linear(out_dim, out_dim)
        self.register_buffer("temperature", torch.tensor(START_TEMPERATURE))

    def forward(self, latents: Tensor, uniform: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``uniform`` (B, T, G, V) in (0, 1): the Gumbel noise's draws (training); None: no noise."""
        logits = self.to_logits(latents).unflatten(-1, (self.groups, self.entries))
        choice = straight_through_one_hot(logits, float(self.temperature), uniform if self.training else None)
        chosen = torch.einsum("btgv,gvd->btgd", choice, self.codebook).flatten(2)
        return self.out(chosen), logits

    @torch.no_grad()
    def anneal(self, step: int, total_steps: int) -> None:
        self.temperature.fill_(gumbel_temperature(step, total_steps))
