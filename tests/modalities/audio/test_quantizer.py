"""The Gumbel-softmax product quantiser (modalities/audio/quantizer.py): a hard choice forward, the
soft gradient backward (straight-through), and its temperature schedule."""

from __future__ import annotations

import pytest
import torch

from contrastkit.modalities.audio.quantizer import GumbelProductQuantizer, gumbel_temperature, straight_through_one_hot


def test_the_forward_pass_picks_one_codeword_per_group():
    torch.manual_seed(0)
    quantizer = GumbelProductQuantizer(in_dim=6, out_dim=8, groups=2, entries=5).double().eval()
    latents = torch.randn(3, 4, 6, dtype=torch.float64)
    quantized, logits = quantizer(latents)
    chosen = logits.argmax(dim=-1)  # no noise out of training
    expected = torch.cat([quantizer.codebook[g, chosen[..., g]] for g in range(2)], dim=-1)
    torch.testing.assert_close(quantized, quantizer.out(expected), rtol=0, atol=1e-12)


def test_straight_through_gradients_are_those_of_the_soft_choice():
    generator = torch.Generator().manual_seed(1)
    logits = torch.randn(4, 2, 5, generator=generator, dtype=torch.float64, requires_grad=True)
    uniform = torch.rand(4, 2, 5, generator=generator, dtype=torch.float64)
    weights = torch.randn(4, 2, 5, generator=generator, dtype=torch.float64)
    hard = straight_through_one_hot(logits, 0.7, uniform)
    assert torch.equal(hard.detach().sum(dim=-1), torch.ones(4, 2)) and set(hard.detach().unique().tolist()) == {0, 1}
    (hard * weights).sum().backward()
    reference = logits.detach().clone().requires_grad_(True)
    soft = ((reference - torch.log(-torch.log(uniform))) / 0.7).softmax(dim=-1)
    (soft * weights).sum().backward()
    torch.testing.assert_close(logits.grad, reference.grad)
    assert logits.grad.abs().sum() > 0


def test_gradients_flow_through_the_quantiser_to_its_logits_layer():
    torch.manual_seed(2)
    quantizer = GumbelProductQuantizer(in_dim=6, out_dim=8, groups=2, entries=5).train()
    latents = torch.randn(3, 4, 6, requires_grad=True)
    quantized, _ = quantizer(latents, torch.rand(3, 4, 2, 5))
    quantized.pow(2).sum().backward()
    for name in ("to_logits.weight", "codebook", "out.weight"):
        assert dict(quantizer.named_parameters())[name].grad.abs().sum() > 0, name
    assert latents.grad.abs().sum() > 0


def test_the_temperature_falls_from_2_to_half_at_70_percent_of_training():
    assert gumbel_temperature(0, 1000) == 2.0
    assert gumbel_temperature(350, 1000) == pytest.approx(1.0)  # halfway on the log scale
    assert gumbel_temperature(700, 1000) == pytest.approx(0.5) and gumbel_temperature(1000, 1000) == 0.5
    quantizer = GumbelProductQuantizer(4, 4, groups=1, entries=3)
    quantizer.anneal(350, 1000)
    assert float(quantizer.temperature) == pytest.approx(1.0) and "temperature" in quantizer.state_dict()
