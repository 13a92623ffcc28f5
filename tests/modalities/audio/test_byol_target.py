"""Audio BYOL's target network after an optimiser step: the EMA with BYOL's cosine rate, written out."""

from __future__ import annotations

import math

import torch

from contrastkit.modalities.audio.cli import DEFAULTS
from contrastkit.modalities.audio.methods import byol


def test_the_target_follows_the_online_network_at_byols_cosine_rate():
    torch.manual_seed(0)
    method = byol.build({**DEFAULTS, "width": 16, "depth": 2, "projection_dim": 8, "crop_seconds": 0.4,
                        "momentum": 0.9}, 8000)
    with torch.no_grad():  # the online network moves away from the copy the target started as
        for p in [*method.encoder.parameters(), *method.projection.parameters()]:
            p.add_(torch.randn_like(p))
    pairs = [(method.target_encoder, method.encoder), (method.target_projection, method.projection)]
    before = [[t.detach().clone() for t in target.parameters()] for target, _ in pairs]
    method.after_optimizer_step(3, 10)  # the update after step k = 2 (0-based) of K = 10
    rate = 1 - (1 - 0.9) * (math.cos(math.pi * 2 / 10) + 1) / 2
    for (target, online), old in zip(pairs, before):
        for t, o, t0 in zip(target.parameters(), online.parameters(), old):
            torch.testing.assert_close(t, rate * t0 + (1 - rate) * o.detach(), rtol=1e-6, atol=1e-6)
