"""The two-tower method on the engine: a :class:`~contrastkit.modalities.pairs.two_tower.TwoTower` trained
on batches of raw pairs (:mod:`contrastkit.engine.module` gives the protocol).

One step (:meth:`TwoTowerMethod.training_loss`)::

    raw pairs -> collate per tower -> augmented views (each tower input's ``augment``)
              -> features h^a, h^b -> loss terms (cross, in_a, in_b); the loss is their sum

Everything random in a step (soft augmentation, dropout) draws from torch's global generator,
which the engine reseeds before every step, so a resumed run draws what an uninterrupted one draws.

Backward (:meth:`TwoTowerMethod.backward_loss`): plain, or harmonized per sample on the towers'
features (:mod:`~contrastkit.modalities.pairs.harmonization`): the terms are computed from detached
copies of ``h^a, h^b``, each term's gradient on them is taken separately, the harmonizer combines
those per sample, and one backward pass carries the combined gradient into the encoders together
with the plain gradient of the sum into everything after the features (heads, objectives, a
second online view). One pass, not two: under DDP every parameter must be reduced once a step.

Optimiser groups (:meth:`TwoTowerMethod.parameter_groups`): the encoders at the base rate,
everything else trainable (heads, CLIP's logit scale, which start from scratch) at
``head_lr_scale`` times it; weight decay on weight matrices only. After every optimiser step the
momentum branch follows the online towers (EMA).

Under data parallelism the objectives gather the global batch with gradient
(:class:`~contrastkit.nn.distributed.GatheredObjective`) and DDP averages the gradients, so a step
equals one process on the concatenated batch; the harmonizer's curriculum, though, ranks the
samples of each process's own batch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from contrastkit.modalities.pairs.harmonization import GradientHarmonizer
from contrastkit.modalities.pairs.towers import TowerInput
from contrastkit.modalities.pairs.two_tower import SIDES, TwoTower


@dataclass
class TwoTowerStep:
    """The loss of one step and what its backward pass needs.

    ``features`` and ``feature_gradients`` are set when harmonized: the towers' features and the
    combined gradient each receives; ``loss`` is then computed from detached copies of them."""

    loss: Tensor
    logs: dict[str, float]
    features: tuple[Tensor, ...] = ()
    feature_gradients: tuple[Tensor, ...] = ()

    def backward(self, loss: Tensor | None = None) -> None:
        """One backward pass of ``loss`` (default: this step's; the engine passes the tensor it got
        back from Lightning) together with the harmonized gradients of the features."""
        loss = self.loss if loss is None else loss
        torch.autograd.backward([loss, *self.features], [None, *self.feature_gradients])


def two_tower_step(model: TwoTower, batch_a: Any, batch_b: Any, view_a: Any, view_b: Any,
                   harmonizer: GradientHarmonizer | None = None, progress: float = 0.0) -> TwoTowerStep:
    """The loss terms of one batch (see the module docstring); ``progress`` in [0, 1] is the share
    of training done (the harmonizer's curriculum shrinks with it)."""
    h_a, h_b = model.features(batch_a, batch_b)
    if harmonizer is None:
        terms = model.loss_terms(h_a, h_b, view_a, view_b)
        return TwoTowerStep(sum(terms.values()), _values(terms))
    shared = [h_a.detach().requires_grad_(), h_b.detach().requires_grad_()]
    terms = model.loss_terms(shared[0], shared[1], view_a, view_b)
    per_loss = {}
    for name, value in terms.items():
        grads = torch.autograd.grad(value, shared, retain_graph=True, allow_unused=True)
        per_loss[name] = [torch.zeros_like(s) if g is None else g for s, g in zip(shared, grads)]
    combined, stats = harmonizer.combine(per_loss, progress)
    return TwoTowerStep(sum(terms.values()), {**_values(terms), **stats}, (h_a, h_b), tuple(combined))


def _values(terms: Mapping[str, Tensor]) -> dict[str, float]:
    return {name: float(value.detach()) for name, value in terms.items()}


def to_device(batch: Any, device: torch.device) -> Any:
    """A collated batch (a tensor, or a mapping of tensors such as token ids) on ``device``."""
    if isinstance(batch, Tensor):
        return batch.to(device)
    if isinstance(batch, Mapping):
        return {k: v.to(device) if isinstance(v, Tensor) else v for k, v in batch.items()}
    return batch


class TwoTowerMethod(nn.Module):
    """The engine's method for a :class:`TwoTower` (module docstring). A batch is a list of raw
    ``(first, second)`` pairs; ``input_a`` / ``input_b`` collate and augment each side."""

    def __init__(self, model: TwoTower, input_a: TowerInput, input_b: TowerInput,
                 harmonizer: GradientHarmonizer | None = None, head_lr_scale: float = 1.0):
        super().__init__()
        self.model = model
        self.input_a, self.input_b = input_a, input_b
        self.harmonizer = harmonizer
        self.head_lr_scale = float(head_lr_scale)
        # Share of training done before the current step (the harmonizer's curriculum); a buffer,
        # so that a resumed run continues the curriculum where the checkpoint left it.
        self.register_buffer("progress", torch.zeros((), dtype=torch.float64))
        self._step: TwoTowerStep | None = None

    def training_loss(self, batch: Sequence[tuple[Any, Any]]) -> tuple[Tensor, dict[str, float]]:
        device = self.progress.device
        batch_a = self.input_a.collate([pair[0] for pair in batch])
        batch_b = self.input_b.collate([pair[1] for pair in batch])
        view_a, view_b = self.input_a.augment(batch_a, None), self.input_b.augment(batch_b, None)
        self._step = two_tower_step(self.model, to_device(batch_a, device), to_device(batch_b, device),
                                    to_device(view_a, device), to_device(view_b, device), self.harmonizer,
                                    float(self.progress))
        return self._step.loss, self._step.logs

    def backward_loss(self, loss: Tensor) -> None:
        step, self._step = self._step, None
        if step is None:
            loss.backward()
        else:
            step.backward(loss)

    def parameter_groups(self, weight_decay: float) -> list[dict]:
        """Encoders at the base rate, the rest at ``head_lr_scale`` times it; decay on matrices only."""
        encoder_ids = {id(p) for side in SIDES for p in self.model.encoder(side).parameters()}
        groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
        for parameter in self.model.parameters():
            if parameter.requires_grad:
                groups.setdefault((id(parameter) in encoder_ids, parameter.ndim > 1), []).append(parameter)
        return [{"params": params, "weight_decay": weight_decay if decays else 0.0,
                 "lr_scale": 1.0 if is_encoder else self.head_lr_scale}
                for (is_encoder, decays), params in groups.items()]

    def after_optimizer_step(self, step: int, total_steps: int) -> None:
        self.model.after_optimizer_step()
        self.progress.fill_(step / max(1, total_steps))
