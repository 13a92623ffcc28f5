"""OBoW (Gidaris, Bursuc, Puy, Komodakis, Cord & Pérez, "OBoW: Online Bag-of-Visual-Words Generation
for Self-Supervised Learning", CVPR 2021).

A teacher (an EMA copy of the backbone, no gradient) turns the feature maps of the last one or two
stages of the backbone into bags of visual words: every cell is soft-assigned to the words of a
vocabulary, the assignments are max-pooled over the map and L1-normalised
(:class:`contrastkit.objectives.obow.OBoWLoss`). The vocabulary of each stage is a queue of K of the
teacher's local features (:class:`~contrastkit.nn.queue.MemoryQueue`), updated online after every
step with one feature per image: the map is averaged over 3 x 3 windows and one window drawn at
random (the paper's ``local_average`` update). The student (the backbone) predicts each bag from the
global feature ``f`` of another crop with a head generated from the vocabulary (Eq. 3)::

    w_k = G(v_k) = normalize(Linear(ReLU(BN(Linear(normalize(v_k))))))     (one generator per stage)
    s_k = kappa <f, w_k>,     p = softmax(s)

and the loss is the cross-entropy from the teacher's bag to ``p``, averaged over the stages. The
teacher follows the student after every step, with BYOL's cosine schedule from ``momentum`` to 1
(the paper: 0.99 with a cosine schedule, ``alpha_cosine``).

Views and pairs. The teacher sees the global crops and every crop predicts the bag of each global
crop but itself, so that with no local crops OBoW has exactly BYOL's two views, target network and
symmetric pairs (:mod:`~contrastkit.modalities.image.methods.byol`) and differs only in what is
predicted (benchmarks/obow_vs_byol.py). The global crops follow BYOL's recipe (:class:`BYOLViews`:
view 1 blurred, view 2 solarised with p 0.2, blur dropped under 96 pixels); ``local_crops: N`` adds
smaller crops (:class:`MultiCropViews`). The paper's teacher sees the whole image instead (resized,
centre-cropped, flipped) and its student two 160/224 crops and five 96/224 patches; that variant is
not implemented.

Feature maps. The teacher's maps come from the last ``levels`` stages of a ResNet (the paper: conv4
and conv5) or the last blocks of the small CNN. The paper's code drops the ring of cells on the
border of each map (they see the zero padding); that is done on maps of 6 cells a side or more
(at 32 pixels: the 8 x 8 third stage), not on the 4 x 4 last stage, where it would leave 4 cells of 16.
The window of the vocabulary update is 3 cells, or the map's side where it is smaller.

Defaults: the paper's ResNet-18 configuration (LightlySSL has no OBoW): K = 8192 words per stage,
``1 / delta_base = 10``, kappa 5 (fixed), two stages, the generator's hidden width twice the
backbone's output; the paper trains with SGD (lr 0.05 for batch 128, momentum 0.9, weight decay
5e-4, cosine schedule), as ``contrastkit fit``'s SGD defaults.

Options (YAML ``extra: {obow: {...}}``):
    levels: 1 or 2 stages whose maps make bags (default 2).
    num_words: K, the vocabulary size of each stage (default 8192).
    inverse_temperature: 1 / delta_base (default 10; 0 gives uniform bags: collapses).
    kappa: the scale of the logits (default 5).
    update_vocabulary: false keeps the initial random vocabulary (a broken variant).
    local_crops, local_crop_size: as SwAV (default 0, scaled size).
    momentum: the teacher's base EMA rate (default 0.99, cosine schedule to 1).

``embed`` is the student backbone's pooled feature and ``project_embedding`` the identity: the loss
acts on ``f`` itself (through the generated head), so that is where the geometric diagnostics look.

Collapse. The objective compares distributions over the vocabulary, so the diagnostics also read
``objective_distributions``: per stage, the teacher's bag of the (eval) view, the target, flagged
when it carries no information about the image
(:func:`~contrastkit.evaluation.diagnostics.assignment_report`: every image gets the same bag). A
constant encoder trips it and the geometric rules on ``f``; uniform bags (``inverse_temperature:
0``) trip it alone (tests/modalities/image/test_objective_space_collapse.py). The student's predicted bag
``softmax(kappa <f, w_k>)`` is not judged: with kappa 5 and unit ``w_k`` its logits span little, so
it is nearly uniform over thousands of words in healthy runs too (0.007 to 0.025 nats of information
after 24 steps on digits, against 1.1 to 1.9 for the teacher's bags). A frozen vocabulary is not a
collapse: its bags still tell images apart.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from contrastkit.core.errors import ConfigError
from contrastkit.modalities.image.encoders.cnn import SmallCNN
from contrastkit.modalities.image.encoders.resnet import ResNet
from contrastkit.modalities.image.methods.parts import DataInfo, build_backbone, method_options, require_flags
from contrastkit.modalities.image.views.image import BYOL_JITTER, EvalView
from contrastkit.modalities.image.views.multicrop import MultiCropViews, default_local_crop_size
from contrastkit.nn.distributed import GatheredObjective
from contrastkit.nn.heads import MLPHead
from contrastkit.nn.momentum import check_momentum, momentum_copy, step_momentum_targets
from contrastkit.nn.queue import MemoryQueue
from contrastkit.objectives.obow import PAPER_INVERSE_TEMPERATURE, OBoWLoss

DEFAULTS = {"levels": 2, "num_words": 8192, "inverse_temperature": PAPER_INVERSE_TEMPERATURE, "kappa": 5.0,
            "update_vocabulary": True, "local_crops": 0, "local_crop_size": None, "momentum": 0.99}
BORDER_TRIM_MIN_SIDE = 6  # maps at least this wide lose their border ring (see the module docstring)
UPDATE_WINDOW = 3  # the paper's local averaging before a vocabulary word is drawn


def stage_maps(backbone: nn.Module, images: Tensor, count: int) -> list[Tensor]:
    """The feature maps (B, C, h, w) of the last ``count`` stages of a ResNet or blocks of the small
    CNN, shallowest first."""
    if isinstance(backbone, ResNet):
        x, stages = backbone.stem(images), list(backbone.stages)
    elif isinstance(backbone, SmallCNN):  # blocks of conv, BN, ReLU
        x, stages = images, [backbone.features[i:i + 3] for i in range(0, len(backbone.features), 3)]
    else:
        raise ConfigError(f"obow reads the feature maps of a ResNet or the small CNN, not {type(backbone).__name__}; "
                          f"use --backbone resnet18, resnet50 or small-cnn.")
    maps = []
    for stage in stages:
        x = stage(x)
        maps.append(x)
    return maps[-count:]


def trim_border(feature_map: Tensor) -> Tensor:
    """Drop the cells on the border of maps of at least 6 cells a side (the paper's code)."""
    if min(feature_map.shape[-2:]) >= BORDER_TRIM_MIN_SIDE:
        return feature_map[..., 1:-1, 1:-1]
    return feature_map


def sample_local_features(feature_maps: Tensor) -> Tensor:
    """One feature per image from its maps (B, G, C, h, w): the mean over a random 3 x 3 window
    (smaller on smaller maps) of a random one of its G maps, (B, C)."""
    batch, crops, channels, height, width = feature_maps.shape
    window = min(UPDATE_WINDOW, height, width)
    averaged = F.avg_pool2d(feature_maps.flatten(0, 1), window, stride=1)  # (B G, C, h', w')
    cells = averaged.view(batch, crops, channels, -1).permute(0, 1, 3, 2).reshape(batch, -1, channels)
    chosen = torch.randint(0, cells.shape[1], (batch,), device=cells.device)
    return cells[torch.arange(batch, device=cells.device), chosen]


def random_vocabulary(num_words: int, channels: int) -> MemoryQueue:
    """A full queue of K non-negative random words (the paper's code starts from ``randn`` clamped at
    0, like features after a ReLU); the teacher's features replace them oldest first."""
    vocabulary = MemoryQueue(num_words, channels)
    with torch.no_grad():
        vocabulary.rows.copy_(torch.randn(num_words, channels).clamp_min(0.0))
        vocabulary.filled.fill_(num_words)
    return vocabulary


class WordWeightGenerator(nn.Module):
    """``G``: a vocabulary (K, C) -> unit prediction weights (K, D) (the paper's Eq. 3)."""

    def __init__(self, word_dim: int, hidden_dim: int, feature_dim: int):
        super().__init__()
        self.mlp = MLPHead([(word_dim, hidden_dim, nn.BatchNorm1d(hidden_dim), nn.ReLU()),
                            (hidden_dim, feature_dim, None, None)])

    def forward(self, words: Tensor) -> Tensor:
        return F.normalize(self.mlp(F.normalize(words, dim=1)), dim=1)


class OBoW(nn.Module):
    """Student backbone, EMA teacher backbone, one vocabulary, generator and loss per stage."""

    def __init__(self, backbone: nn.Module, generators: nn.ModuleList, vocabularies: nn.ModuleList,
                 objectives: nn.ModuleList, views: MultiCropViews, eval_view: nn.Module, kappa: float,
                 base_momentum: float, update_vocabulary: bool = True):
        super().__init__()
        self.backbone = backbone
        self.target_backbone = momentum_copy(backbone)
        self.generators = generators
        self.vocabularies = vocabularies
        self.objectives = objectives
        self.views = views
        self.eval_view = eval_view
        self.kappa = kappa
        self.base_momentum = base_momentum
        self.update_vocabulary = update_vocabulary
        self._new_words: list[Tensor] | None = None  # this step's sampled teacher features, queued after it

    def training_loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        crops = self.views.multi_crop(batch["image"])
        features = crops.map(self.backbone).transpose(0, 1)  # (B, V, D), the backbone once per crop size
        with torch.no_grad():
            maps = [trim_border(m) for m in stage_maps(self.target_backbone, crops.global_crops, len(self.objectives))]
            maps = [m.view(crops.num_global, crops.batch_size, *m.shape[1:]).transpose(0, 1) for m in maps]
        losses = []
        for generator, vocabulary, objective, level_maps in zip(self.generators, self.vocabularies, self.objectives,
                                                                maps, strict=True):
            words = vocabulary.keys()
            logits = self.kappa * features @ generator(words).T  # (B, V, K)
            losses.append(objective(logits, level_maps, vocabulary=words))
        loss = torch.stack(losses).mean()
        # The loss is the global one on every process, so all agree on skipping (enqueueing is a collective).
        finite = self.update_vocabulary and bool(torch.isfinite(loss.detach()))
        self._new_words = [sample_local_features(m) for m in maps] if finite else None
        return loss, {f"loss_level{i}": float(level.detach()) for i, level in enumerate(losses)}

    @torch.no_grad()
    def after_optimizer_step(self, step: int, total_steps: int) -> None:
        step_momentum_targets([(self.target_backbone, self.backbone)], step, total_steps, self.base_momentum)
        words, self._new_words = self._new_words, None
        for vocabulary, new in zip(self.vocabularies, words or (), strict=False):
            vocabulary.enqueue(new)

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        return self.backbone(self.eval_view(images))

    def project_embedding(self, embedding: torch.Tensor) -> torch.Tensor:
        return embedding

    @torch.no_grad()
    def objective_distributions(self, images: torch.Tensor) -> dict[str, Tensor]:
        """The targets of the loss for the eval view of ``images``: the teacher's bag of each stage,
        ``teacher_bag_level{i}`` (B, K), from the current vocabulary and ``mu`` (call it in eval mode:
        in training mode the loss updates ``mu``)."""
        maps = stage_maps(self.target_backbone, self.eval_view(images), len(self.objectives))
        return {f"teacher_bag_level{level}": objective.objective.teacher_bags(
                    trim_border(level_map).unsqueeze(1), vocabulary.keys())[:, 0]
                for level, (vocabulary, objective, level_map) in enumerate(
                    zip(self.vocabularies, self.objectives, maps, strict=True))}


def _whole(options: dict, name: str, low: int, high: int | None = None) -> int:
    value = options[name]
    if not isinstance(value, int) or isinstance(value, bool) or value < low or (high is not None and value > high):
        bound = f"in [{low}, {high}]" if high is not None else f">= {low}"
        raise ConfigError(f"extra.obow.{name} must be a whole number {bound}, got {value!r}.")
    return value


def build(config, data: DataInfo) -> OBoW:
    options = method_options(config, "obow", DEFAULTS)
    levels = _whole(options, "levels", 1, 2)
    num_words = _whole(options, "num_words", 1)
    kappa = options["kappa"]
    if not isinstance(kappa, int | float) or isinstance(kappa, bool) or not kappa > 0:
        raise ConfigError(f"extra.obow.kappa must be a positive number (the paper: 5), got {kappa!r}.")
    require_flags(options, "obow", "update_vocabulary")
    backbone = build_backbone(config.backbone, data, config.width, config)
    with torch.no_grad():  # the channels of the stages' maps, from one tiny forward pass
        probe = torch.zeros(2, data.channels, data.image_size, data.image_size)
        channels = [m.shape[1] for m in stage_maps(backbone.eval(), probe, levels)]
        backbone.train()
    hidden = config.projection_hidden_dim or 2 * backbone.output_dim
    colour = {"jitter": BYOL_JITTER} if data.channels == 3 else {"jitter": (0.4, 0.4, 0.0, 0.0)}
    blur = (1.0, 0.1) if data.image_size >= 96 else (0.0, 0.0)  # BYOLViews' rule
    views_options = {**colour, "global_blur_p": blur, "global_solarize_p": (0.0, 0.2),
                     **(config.extra.get("views") or {})}
    views = MultiCropViews(data.image_size, data.channels, data.mean, data.std,
                           local_crops=_whole(options, "local_crops", 0),
                           local_crop_size=options["local_crop_size"] or default_local_crop_size(data.image_size),
                           **views_options)
    return OBoW(
        backbone=backbone,
        generators=nn.ModuleList(WordWeightGenerator(c, hidden, backbone.output_dim) for c in channels),
        vocabularies=nn.ModuleList(random_vocabulary(num_words, c) for c in channels),
        objectives=nn.ModuleList(GatheredObjective(OBoWLoss(inverse_temperature=options["inverse_temperature"]))
                                 for _ in channels),
        views=views,
        eval_view=EvalView(mean=data.mean, std=data.std),
        kappa=float(kappa),
        base_momentum=check_momentum(options["momentum"], "extra.obow.momentum"),
        update_vocabulary=options["update_vocabulary"],
    )
