"""BYOL's, SimSiam's and JEPA's losses against their papers' formulas, and their stop-gradients.

Each method is built small and runs ``training_loss`` on a fixed batch. Hooks record what its
networks produced (the online predictions, the targets, the views each network saw); the test
then recomputes the loss from those tensors with a per-sample loop of the paper's formula in
float64 numpy, and, for the gradient, the same formula written in torch with the targets detached
and differentiated by a second autograd pass. The target networks are moved away from the online
ones first, so a target computed by the wrong network cannot pass.

- BYOL (Grill et al. 2020, Eq. 2 and the symmetrised sum below it)::

      L = 1/N sum_i [ (2 - 2 cos(p(v_i), z'(v'_i))) + (2 - 2 cos(p(v'_i), z'(v_i))) ]

  ``p`` the online prediction, ``z'`` the target (EMA) network's projection, no gradient to it.
- SimSiam (Chen & He 2021, Eq. 1-2 and Algorithm 1)::

      L = 1/N sum_i [ -cos(p(v_i), sg(z(v'_i))) / 2 - cos(p(v'_i), sg(z(v_i))) / 2 ]

- I-JEPA (Assran et al. 2023, Eq. 1; contrastkit's docstring divides by the token width D, as the
  reference code's element mean does)::

      L = 1/B sum_b 1/M sum_i 1/|B_i| sum_{j in B_i} || s_hat_{b,i,j} - LN(s_y)_{b,j} ||^2 / D

  ``LN`` a LayerNorm without affine parameters over the target encoder's tokens; with
  ``loss: smooth_l1`` the squared error per element becomes the reference code's smooth-L1
  (``0.5 x^2`` for ``|x| < 1``, ``|x| - 0.5`` otherwise).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from contrastkit.core.errors import ConfigError
from contrastkit.modalities.image.config import FitConfig
from contrastkit.modalities.image.methods import build_method
from contrastkit.modalities.image.methods.parts import DataInfo

TINY = DataInfo(channels=1, image_size=8, mean=(0.3,), std=(0.3,), num_samples=64)



def build(method: str, **extra) -> torch.nn.Module:
    config = FitConfig(method=method, width=0.125, projection_dim=16, extra=extra)
    torch.manual_seed(0)
    return build_method(method, config, TINY).train()


def fixed_batch(n: int = 12, seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 1, 8, 8), dtype=torch.uint8, generator=generator)
    return {"image": images, "index": torch.arange(n), "label": torch.full((n,), -1)}


class Recorder:
    """Records the positional inputs, keyword inputs and output of each hooked module's calls."""

    def __init__(self, **modules: torch.nn.Module):
        self.calls: dict[str, list[tuple]] = {name: [] for name in modules}
        self.handles = [module.register_forward_hook(self._hook(name), with_kwargs=True)
                        for name, module in modules.items()]

    def _hook(self, name: str):
        def hook(module, args, kwargs, output):
            self.calls[name].append((args, kwargs, output))
        return hook

    def output(self, name: str) -> torch.Tensor:
        (call,) = self.calls[name]  # each hooked network runs once per training_loss
        return call[2]

    def inputs(self, name: str) -> tuple[tuple, dict]:
        (call,) = self.calls[name]
        return call[0], call[1]

    def joined_outputs(self, name: str) -> torch.Tensor:
        """The outputs of all of a module's calls, in call order, as one batch."""
        return torch.cat([call[2] for call in self.calls[name]])

    def record_tokens(self, name: str, vit: torch.nn.Module) -> None:
        """Also record ``vit.tokens`` calls under ``name`` (JEPA calls its ViTs' tokens, not forward)."""
        self.calls[name] = []
        self.recorded_tokens = getattr(self, "recorded_tokens", [])
        tokens = vit.tokens

        def recorded(*args, **kwargs):
            output = tokens(*args, **kwargs)
            self.calls[name].append((args, kwargs, output))
            return output

        vit.tokens = recorded  # an instance attribute; remove() deletes it, and the method shows again
        self.recorded_tokens.append(vit)

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        for vit in getattr(self, "recorded_tokens", []):
            del vit.tokens


def move_away(*modules: torch.nn.Module, scale: float = 0.05) -> None:
    """Perturb every parameter, so a target network no longer equals the online one."""
    generator = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for module in modules:
            for p in module.parameters():
                p.add_(scale * torch.randn(p.shape, generator=generator))


def np_cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def torch_cos(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a * b).sum() / (a.norm() * b.norm())


def online_parameters(model: torch.nn.Module, names: tuple[str, ...]) -> list[tuple[str, torch.nn.Parameter]]:
    return [(f"{n}.{k}", p) for n in names for k, p in getattr(model, n).named_parameters() if p.requires_grad]


def assert_gradients_equal(params, expected_grads, atol=1e-6):
    assert params, "no trainable parameters to compare"
    for (name, p), expected in zip(params, expected_grads, strict=True):
        assert p.grad is not None, f"{name} got no gradient from the loss"
        torch.testing.assert_close(p.grad, expected, atol=atol, rtol=1e-4, msg=f"gradient of {name}")


# -- BYOL ----------------------------------------------------------------------------------------

def byol_formula_np(p: np.ndarray, target: np.ndarray) -> float:
    n = len(p) // 2
    total = 0.0
    for i in range(n):  # view a of image i is row i, view b is row n + i
        total += (2 - 2 * np_cos(p[i], target[n + i])) + (2 - 2 * np_cos(p[n + i], target[i]))
    return total / n


def byol_formula_torch(p: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    n = len(p) // 2
    terms = [(2 - 2 * torch_cos(p[i], target[n + i])) + (2 - 2 * torch_cos(p[n + i], target[i])) for i in range(n)]
    return torch.stack(terms).sum() / n


@pytest.mark.parametrize("method, extra", [("byol", {}), ("byol", {"byol": {"predictor": "linear"}}),
                                           ("byol", {"byol": {"separate_view_passes": True}}),
                                           ("directpred", {})])
def test_byol_loss_is_the_symmetrised_2_minus_2_cos_against_the_target_network(method, extra):
    model = build(method, **extra)
    move_away(model.target_backbone, model.target_projection)
    rec = Recorder(backbone=model.backbone, projection=model.projection, predictor=model.predictor,
                   target_backbone=model.target_backbone, target_projection=model.target_projection)
    torch.manual_seed(1)
    batch = fixed_batch()
    loss, _ = model.training_loss(batch)
    rec.remove()
    # BYOL and DirectPred pass both views through each network as one batch; ``separate_view_passes:
    # true`` passes each view on its own (BatchNorm statistics per view, as the paper's code).
    joint = extra.get("byol", {}).get("separate_view_passes") is not True
    passes, n = (1 if joint else 2), len(batch["image"])
    for name in rec.calls:
        assert [len(call[0][0]) for call in rec.calls[name]] == [2 * n // passes] * passes, name

    view_batches = [call[0][0] for call in rec.calls["backbone"]]
    p, target = rec.joined_outputs("predictor"), rec.joined_outputs("target_projection")
    # The target is the target network's projection of the same views the online network saw, in
    # the same batches.
    for online_call, target_call in zip(rec.calls["backbone"], rec.calls["target_backbone"], strict=True):
        torch.testing.assert_close(target_call[0][0], online_call[0][0], atol=0, rtol=0)
    with torch.no_grad():
        recomputed = torch.cat([model.target_projection(model.target_backbone(v)) for v in view_batches])
        online = torch.cat([model.projection(model.backbone(v)) for v in view_batches])
    torch.testing.assert_close(target, recomputed, atol=1e-6, rtol=1e-5)
    assert not torch.allclose(target, online, atol=1e-3)
    predictor_inputs = torch.cat([call[0][0] for call in rec.calls["predictor"]])
    torch.testing.assert_close(predictor_inputs, rec.joined_outputs("projection"), atol=0, rtol=0)  # p = q(z)

    expected = byol_formula_np(p.detach().double().numpy(), target.detach().double().numpy())
    assert loss.item() == pytest.approx(expected, abs=1e-5)

    # Stop-gradient: the online gradient is the formula's with the targets detached, and the
    # target network gets none.
    params = online_parameters(model, ("backbone", "projection", "predictor"))
    formula = byol_formula_torch(p, target.detach())
    expected_grads = torch.autograd.grad(formula, [q for _, q in params], retain_graph=True)
    loss.backward()
    assert_gradients_equal(params, expected_grads)
    for module in (model.target_backbone, model.target_projection):
        assert all(q.grad is None and not q.requires_grad for q in module.parameters())


# -- SimSiam -------------------------------------------------------------------------------------

def simsiam_formula_np(p: np.ndarray, z: np.ndarray) -> float:
    n = len(p) // 2
    total = 0.0
    for i in range(n):  # D(p1, z2) / 2 + D(p2, z1) / 2, D = -cos
        total += -np_cos(p[i], z[n + i]) / 2 - np_cos(p[n + i], z[i]) / 2
    return total / n


def simsiam_formula_torch(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    n = len(p) // 2
    terms = [-torch_cos(p[i], z[n + i]) / 2 - torch_cos(p[n + i], z[i]) / 2 for i in range(n)]
    return torch.stack(terms).sum() / n


@pytest.mark.parametrize("method, extra", [("simsiam", {}), ("simsiam", {"simsiam": {"predictor": "linear"}}),
                                           ("simsiam", {"simsiam": {"separate_view_passes": False}}),
                                           ("directpred", {"directpred": {"target": "online"}})])
def test_simsiam_loss_is_the_symmetrised_negative_cosine_with_stop_gradient(method, extra):
    model = build(method, **extra)
    rec = Recorder(backbone=model.backbone, projection=model.projection, predictor=model.predictor)
    torch.manual_seed(1)
    batch = fixed_batch()
    loss, _ = model.training_loss(batch)
    rec.remove()
    # SimSiam passes each view on its own (BatchNorm statistics per view, as the paper's code);
    # DirectPred's online variant and SimSiam's ``separate_view_passes: false`` one pass over both views.
    joint = method == "directpred" or extra.get("simsiam", {}).get("separate_view_passes") is False
    passes = 1 if joint else 2
    n = len(batch["image"])
    for name in ("backbone", "projection", "predictor"):
        assert [len(call[0][0]) for call in rec.calls[name]] == [2 * n // passes] * passes, name
    z, p = rec.joined_outputs("projection"), rec.joined_outputs("predictor")
    assert z.requires_grad  # the hooked z is the one in the graph, before the stop-gradient
    predictor_inputs = torch.cat([call[0][0] for call in rec.calls["predictor"]])
    torch.testing.assert_close(predictor_inputs, z, atol=0, rtol=0)  # p = h(z)

    expected = simsiam_formula_np(p.detach().double().numpy(), z.detach().double().numpy())
    assert loss.item() == pytest.approx(expected, abs=1e-5)

    params = online_parameters(model, ("backbone", "projection", "predictor"))
    weights = [q for _, q in params]
    stopped = torch.autograd.grad(simsiam_formula_torch(p, z.detach()), weights, retain_graph=True)
    through = torch.autograd.grad(simsiam_formula_torch(p, z), weights, retain_graph=True)
    # The two differ, so the comparison below can tell whether the target was detached.
    assert max((a - b).abs().max().item() for a, b in zip(stopped, through, strict=True)) > 1e-4
    loss.backward()
    assert_gradients_equal(params, stopped)


@pytest.mark.parametrize("method", ["simsiam", "byol"])
def test_a_view_pass_option_that_is_not_a_boolean_is_refused(method):
    with pytest.raises(ConfigError, match=f"extra.{method}.separate_view_passes must be true or false"):
        build(method, **{method: {"separate_view_passes": "no"}})


def test_simsiam_without_stop_gradient_differentiates_through_the_target():
    model = build("simsiam", simsiam={"stop_gradient": False})
    rec = Recorder(projection=model.projection, predictor=model.predictor)
    torch.manual_seed(1)
    loss, _ = model.training_loss(fixed_batch())
    rec.remove()
    z, p = rec.joined_outputs("projection"), rec.joined_outputs("predictor")
    params = online_parameters(model, ("backbone", "projection", "predictor"))
    through = torch.autograd.grad(simsiam_formula_torch(p, z), [q for _, q in params], retain_graph=True)
    loss.backward()
    assert_gradients_equal(params, through)


# -- JEPA ----------------------------------------------------------------------------------------

def layer_norm_np(tokens: np.ndarray, eps: float = 1e-5) -> np.ndarray:
    mean = tokens.mean(axis=-1, keepdims=True)
    variance = ((tokens - mean) ** 2).mean(axis=-1, keepdims=True)  # biased, as LayerNorm's
    return (tokens - mean) / np.sqrt(variance + eps)


def smooth_l1_np(x: np.ndarray) -> np.ndarray:
    return np.where(np.abs(x) < 1.0, 0.5 * x**2, np.abs(x) - 0.5)


def jepa_formula_np(predictions: np.ndarray, target_tokens: np.ndarray, target_index: np.ndarray,
                    num_targets: int, kind: str) -> float:
    """Row r of ``predictions`` is block ``r % M`` of image ``r // M``."""
    s_y = layer_norm_np(target_tokens)
    dim = s_y.shape[-1]
    per_image = []
    for b in range(len(s_y)):
        per_block = []
        for i in range(num_targets):
            row = b * num_targets + i
            errors = []
            for j, position in enumerate(target_index[row]):
                diff = predictions[row, j] - s_y[b, position]
                errors.append((diff**2).sum() / dim if kind == "l2" else smooth_l1_np(diff).sum() / dim)
            per_block.append(np.mean(errors))
        per_image.append(np.mean(per_block))
    return float(np.mean(per_image))


def jepa_formula_torch(predictions, targets_ln, target_index, num_targets, kind):
    dim = targets_ln.shape[-1]
    terms = []
    for row in range(len(predictions)):
        s_y = targets_ln[row // num_targets, target_index[row]]
        diff = predictions[row] - s_y
        error = diff**2 if kind == "l2" else torch.nn.functional.smooth_l1_loss(diff, torch.zeros_like(diff),
                                                                                reduction="none")
        terms.append(error.sum(dim=-1).mean() / dim)
    return torch.stack(terms).mean()  # every image has M rows: the mean over rows is over images and blocks


@pytest.mark.parametrize("kind", ["l2", "smooth_l1"])
def test_jepa_loss_is_the_mean_latent_error_on_the_target_blocks(kind):
    model = build("jepa", jepa={"loss": kind, "num_targets": 3})
    move_away(model.target_encoder)
    rec = Recorder(predictor=model.predictor)
    rec.record_tokens("encoder", model.encoder)
    rec.record_tokens("target_encoder", model.target_encoder)
    torch.manual_seed(1)
    loss, _ = model.training_loss(fixed_batch(6))
    rec.remove()

    (images,), encoder_kwargs = rec.inputs("encoder")
    context_index = encoder_kwargs["keep_index"]
    (target_images,), target_kwargs = rec.inputs("target_encoder")
    torch.testing.assert_close(target_images, images, atol=0, rtol=0)
    assert target_kwargs.get("keep_index") is None  # the target encoder sees every patch
    target_tokens = rec.output("target_encoder")
    assert target_tokens.shape[1] == model.encoder.num_patches
    (context_rows, context_index_rows, target_index), _ = rec.inputs("predictor")
    predictions = rec.output("predictor")
    num_targets = model.masks.num_targets
    assert len(predictions) == len(images) * num_targets
    context = rec.output("encoder")
    for row in range(len(predictions)):
        b = row // num_targets  # row r predicts a block of image r // M from that image's whole context
        torch.testing.assert_close(context_rows[row], context[b], atol=0, rtol=0)
        torch.testing.assert_close(context_index_rows[row], context_index[b], atol=0, rtol=0)
        assert not set(target_index[row].tolist()) & set(context_index[b].tolist())

    expected = jepa_formula_np(predictions.detach().double().numpy(), target_tokens.detach().double().numpy(),
                               target_index.numpy(), num_targets, kind)
    assert loss.item() == pytest.approx(expected, abs=1e-5)

    params = online_parameters(model, ("encoder", "predictor"))
    targets_ln = torch.nn.functional.layer_norm(target_tokens, (target_tokens.shape[-1],)).detach()
    formula = jepa_formula_torch(predictions, targets_ln, target_index, num_targets, kind)
    expected_grads = torch.autograd.grad(formula, [q for _, q in params], retain_graph=True)
    loss.backward()
    assert_gradients_equal(params, expected_grads)
    assert all(q.grad is None and not q.requires_grad for q in model.target_encoder.parameters())
