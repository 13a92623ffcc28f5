"""Collapse diagnostics in the space each objective acts in (issue 21): OBoW, MSN, SwAV, and short DINO runs.

- OBoW: the teacher's bags of visual words (its targets) are judged by the information they carry
  about the image. A constant encoder (BatchNorm gains zeroed in the student and the teacher) is
  flagged; so are uniform bags (``inverse_temperature: 0``), whose targets tell no image from
  another; a random initialisation and a briefly trained run are not. Each verdict is checked
  against a measurement the rules do not share: the total variation between the bags of distinct
  images, and whether the pooled features of distinct images are equal.
- MSN: its projections (``project_embedding``) and their assignment to the prototypes. A constant
  encoder output is flagged and its prototype assignments carry no information; a random
  initialisation is not flagged, its projections spread once BatchNorm has statistics of the data.
- SwAV: its predictions over the prototypes (its codes are spread over the batch by Sinkhorn-Knopp
  whatever the encoder does). A constant encoder output is flagged on them; a random initialisation
  is not, and gives distinct images distinct predictions.
- DINO and BYOL after 1 epoch of digits at batch 256 (5 steps) were flagged: in eval mode the
  BatchNorm running statistics had seen 5 batches with momentum 0.1, and every image kept the
  features' large mean. With batch statistics, or running statistics recomputed over the data, the
  same weights are spread. While the running statistics are that young the verdict now requires
  collapse with batch statistics too; the 1-epoch run is not flagged, and that it is not collapsed is checked by recomputing the running
  statistics over the data.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from contrastkit.evaluation.diagnostics import assignment_report, collapse_report
from contrastkit.modalities.image.config import FitConfig
from contrastkit.modalities.image.methods import build_method
from contrastkit.modalities.image.methods.parts import DataInfo
from contrastkit.modalities.image.sources.images import load_digits_source
from contrastkit.modalities.image.training.callbacks import embed_and_project, evaluating, objective_space_report
from contrastkit.modalities.image.training.restore import load_method
from contrastkit.modalities.image.training.run import fit

CPU = torch.device("cpu")
DIGITS = DataInfo(channels=1, image_size=8, mean=(0.3,), std=(0.3,), num_samples=512)



@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return load_digits_source().images[:512]


def report_of(method, images) -> dict:
    _, projected = embed_and_project(method, images, CPU)
    return objective_space_report(method, images, CPU, projected)


def mean_bag_distance(method, images) -> float:
    """Mean total variation between the last stage's teacher bags of distinct images (0: all equal)."""
    with evaluating(method):
        bags = method.objective_distributions(images)[f"teacher_bag_level{len(method.objectives) - 1}"].double()
    n = len(bags)
    distances = 0.5 * (bags[:, None, :] - bags[None, :, :]).abs().sum(-1)
    return float(distances.sum() / (n * (n - 1)))


def recalibrated(method, images) -> torch.nn.Module:
    """A copy whose BatchNorm running statistics are the exact averages over ``images`` (one pass in
    training mode, cumulative average), then in eval mode; the pass goes through the projection and,
    where there is one, the teacher backbone."""
    copied = copy.deepcopy(method)
    for m in copied.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None
    copied.train()
    with torch.no_grad():
        for chunk in images.split(256):
            copied.project_embedding(copied.embed(chunk))
            if hasattr(copied, "target_backbone"):
                copied.target_backbone(copied.eval_view(chunk))
    return copied.eval()


def mean_pairwise_cosine(z: torch.Tensor) -> float:
    unit = F.normalize(z.double(), dim=1)
    n = len(unit)
    return float(((unit.sum(0) @ unit.sum(0)) - n) / (n * (n - 1)))


# -- OBoW ---------------------------------------------------------------------------------------------------

def build_obow(**options):
    torch.manual_seed(0)
    return build_method("obow", FitConfig(method="obow", width=0.25, extra={"obow": {"num_words": 512, **options}}),
                        DIGITS)


def test_obow_with_a_constant_encoder_is_flagged(images):
    model = build_obow()
    with torch.no_grad():
        for backbone in (model.backbone, model.target_backbone):
            for m in backbone.modules():
                if isinstance(m, torch.nn.BatchNorm2d):
                    m.weight.zero_()  # every map is its BatchNorm's bias, whatever the image
    with evaluating(model):
        features = model.embed(images)
    assert torch.equal(features, features[:1].expand_as(features))  # constant, by construction
    assert mean_bag_distance(model, images) == 0.0
    report = report_of(model, images)
    assert report["collapsed"] and "running_statistics_reasons" not in report
    assert report["teacher_bag_level1_information"] < 1e-9
    assert any("teacher_bag_level1 carry" in reason for reason in report["reasons"])


def test_obow_with_uniform_bags_is_flagged_on_its_targets(images):
    model = build_obow(inverse_temperature=0)
    with evaluating(model):
        bags = model.objective_distributions(images)
    assert all(torch.allclose(b, torch.full_like(b, 1 / 512)) for b in bags.values())  # no target information
    report = report_of(model, images)
    assert report["collapsed"]
    assert any("teacher_bag_level0 carry" in r and "the uniform distribution" in r for r in report["reasons"])


def test_obow_at_random_initialisation_is_not_flagged(images):
    model = build_obow()
    # With BatchNorm statistics of the data, distinct images get distinct bags (measured: mean total
    # variation 0.86). In eval mode at initialisation (running mean 0, variance 1) every map keeps
    # the features' common mean and nearly every cell goes to the same random words (0.002): the
    # eval-mode snapshot trips the rule on the last stage, the batch statistics do not.
    assert mean_bag_distance(recalibrated(model, images), images) > 0.2
    report = report_of(model, images)
    assert not report["collapsed"], report["reasons"]
    assert any("teacher_bag_level1" in r for r in report["running_statistics_reasons"])


def test_briefly_trained_obow_is_not_flagged(tmp_path, images):
    # 512 digits, batch 64, 3 epochs = 24 steps (about 15 s).
    summary = fit(FitConfig(method="obow", data="digits", limit=512, holdout=0.0, batch_size=64, width=0.25, epochs=3,
                            report=False, baselines=False, probe_every=0, seed=0, out=str(tmp_path / "obow"),
                            extra={"obow": {"num_words": 512}}))
    model, _, _ = load_method(tmp_path / "obow" / "checkpoints" / "last.ckpt")
    assert mean_bag_distance(model, images) > 0.2  # in eval mode
    assert not summary["collapse"]["collapsed"], summary["collapse"]["reasons"]
    assert summary["collapse"]["teacher_bag_level1_information"] > 0.1


# -- MSN ----------------------------------------------------------------------------------------------------

def build_msn():
    torch.manual_seed(0)
    return build_method("msn", FitConfig(method="msn", width=0.25), DIGITS)


def prototype_assignments(prototypes: torch.Tensor, projected: torch.Tensor, temperature: float = 0.1) -> torch.Tensor:
    """softmax(<z, q_k> / tau) over the unit prototypes (the anchors' side of MSN's loss; SwAV's prediction)."""
    return torch.softmax(F.normalize(projected, dim=1) @ F.normalize(prototypes.detach(), dim=1).T / temperature, dim=1)


def test_msn_with_a_constant_encoder_output_is_flagged(images):
    model = build_msn()
    for encoder in (model.encoder, model.target_encoder):
        encoder.register_forward_hook(lambda module, inputs, output: torch.full_like(output, 0.5))
    _, projected = embed_and_project(model, images, CPU)
    assert torch.allclose(projected, projected[:1].expand_as(projected))  # constant, by construction
    report = objective_space_report(model, images, CPU, projected)
    assert report["collapsed"] and "running_statistics_reasons" not in report
    assignments = assignment_report(prototype_assignments(model.prototypes, projected), "prototype assignments")
    assert assignments["collapsed"] and assignments["prototype assignments_information"] < 1e-9
    # The method's own targets (what the run summary judges) are the target side's sharpened
    # assignments: tau T = 0.1 * 0.25 on the target projections, here computed from the test's formula.
    with evaluating(model):
        targets = model.objective_distributions(images)["target_assignments"]
        target_projections = model.project_embedding(model.target_encoder(model.eval_view(images)))
    torch.testing.assert_close(targets, prototype_assignments(model.prototypes, target_projections, temperature=0.025))
    assert assignment_report(targets)["collapsed"]


def test_msn_at_random_initialisation_is_not_flagged(images):
    model = build_msn()
    report = report_of(model, images)
    assert not report["collapsed"], report["reasons"]
    # Its projections are spread once BatchNorm normalises with statistics of the data, and their
    # prototype assignments tell images apart.
    calibrated = recalibrated(model, images)
    with evaluating(calibrated):
        projected = calibrated.project_embedding(calibrated.embed(images))
    assert mean_pairwise_cosine(projected) < 0.8
    assert not collapse_report(projected)["collapsed"]
    assert not assignment_report(prototype_assignments(calibrated.prototypes, projected))["collapsed"]


# -- SwAV ---------------------------------------------------------------------------------------------------

def build_swav():
    torch.manual_seed(0)
    return build_method("swav", FitConfig(method="swav", width=0.25, extra={"swav": {"prototypes": 64}}), DIGITS)


def test_swav_with_a_constant_encoder_output_is_flagged_on_its_predictions(images):
    model = build_swav()
    model.backbone.register_forward_hook(lambda module, inputs, output: torch.full_like(output, 0.5))
    _, projected = embed_and_project(model, images, CPU)
    assert torch.allclose(projected, projected[:1].expand_as(projected))  # constant, by construction
    # The predictions written out: softmax over the unit prototypes of cosine / 0.1 (SwAV's temperature).
    with evaluating(model):
        predictions = model.objective_distributions(images)["prototype_predictions"]
    torch.testing.assert_close(predictions, prototype_assignments(model.prototypes.weight, projected))
    assert assignment_report(predictions)["collapsed"]
    report = objective_space_report(model, images, CPU, projected)
    assert report["collapsed"]


def test_swav_at_random_initialisation_is_not_flagged(images):
    model = recalibrated(build_swav(), images)
    report = report_of(model, images)
    assert not report["collapsed"], report["reasons"]
    with evaluating(model):
        predictions = model.objective_distributions(images)["prototype_predictions"].double()
    # Distinct images get distinct predictions: the mean total variation between them is far from 0.
    n = len(predictions)
    spread = float((0.5 * (predictions[:, None] - predictions[None]).abs().sum(-1)).sum() / (n * (n - 1)))
    assert spread > 0.05


# -- DINO after one epoch ---------------------------------------------------------------------------------------

def test_a_one_epoch_dino_run_is_not_flagged_and_is_not_collapsed(tmp_path, images):
    # The smoke run that was flagged: all of digits' training part at batch 256, one epoch (5 steps;
    # about 11 s).
    summary = fit(FitConfig(method="dino", data="digits", epochs=1, batch_size=256, width=0.5, report=False,
                            baselines=False, probe_every=0, seed=0, out=str(tmp_path / "dino")))
    collapse = summary["collapse"]
    assert not collapse["collapsed"], collapse["reasons"]
    assert collapse["running_statistics_reasons"]  # the eval-mode snapshot alone looked collapsed
    model, _, _ = load_method(tmp_path / "dino" / "checkpoints" / "last.ckpt")
    with evaluating(model):
        stale = model.project_embedding(model.embed(images))
    calibrated = recalibrated(model, images)
    with evaluating(calibrated):
        exact = calibrated.project_embedding(calibrated.embed(images))
    assert mean_pairwise_cosine(stale) > 0.95  # what the eval-mode snapshot saw
    assert mean_pairwise_cosine(exact) < 0.9 and not collapse_report(exact)["collapsed"]
