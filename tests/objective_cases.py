"""Example inputs for every registered objective, shared by the catalogue-wide tests.

tests/nn/test_distributed.py runs EVERY name in ``contrastkit.objectives.OBJECTIVES`` on 2 processes
and compares with one process on the concatenated batch. An objective that needs more than
``objective(z_a, z_b)`` (labels, indices, a queue, constructor options) or that cannot be
distributed exactly gets an entry in ``CASES`` below; names without an entry use
``ObjectiveCase()`` (no options, no extra inputs, exact in both modes).

How to add a case (for whoever adds an objective):

* ``kwargs``: constructor options, e.g. ``{"temperature": 0.2}``.
* ``make_extra(n, d, generator) -> dict``: the extra keyword inputs for a *global* batch of ``n``
  samples of dimension ``d``. Use only ``generator`` for randomness (every process calls it with
  the same seed and must get the same values). Inputs named in the objective's
  ``per_sample_inputs`` are split across processes by rows (rank 0 gets the first rows);
  every other input (e.g. a queue) is given whole to every process.
* ``make_embeddings(n, d, generator) -> (z_a, z_b)``: only if the objective does not take two
  (n, d) views, e.g. per-time-step (n, T, d) representations, or one view (``z_b`` None);
  float64, dimension 0 = samples.
* ``distributed``: ``"exact"`` (default) -- loss and input gradients equal one process in both
  ``local_loss`` modes; ``"full_only"`` -- exact with ``local_loss=False`` only (the objective has
  no ``loss_terms``); ``"not_exact"`` -- only checks that every rank returns the same finite loss
  and finite gradients (explain why in ``note``, and in the objective's docstring).
* ``note``: one line for a reader of a failing test.

The two embeddings are float64 (N, d) with rows of norm ~sqrt(d); ``z_a`` and ``z_b`` are
correlated (``z_b = z_a + noise``) so that positives are closer than negatives.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

MakeExtra = Callable[[int, int, torch.Generator], dict[str, Any]]
MakeEmbeddings = Callable[[int, int, torch.Generator], tuple[torch.Tensor, torch.Tensor | None]]


def no_extra(n: int, d: int, generator: torch.Generator) -> dict[str, Any]:
    return {}


@dataclass(frozen=True)
class ObjectiveCase:
    kwargs: dict[str, Any] = field(default_factory=dict)
    make_extra: MakeExtra = no_extra
    make_embeddings: MakeEmbeddings | None = None
    distributed: Literal["exact", "full_only", "not_exact"] = "exact"
    note: str = ""


def labels_with_repeats(n: int, d: int, generator: torch.Generator) -> dict[str, Any]:
    # Few classes, so that anchors have positives beyond their other view; one singleton class
    # id (n + 7) exercises "anchors without a positive are left out" in the single-view case.
    labels = torch.randint(0, 3, (n,), generator=generator)
    labels[-1] = n + 7
    return {"labels": labels}


def queue_of_keys(n: int, d: int, generator: torch.Generator) -> dict[str, Any]:
    return {"keys": torch.randn(3 * n, d, generator=generator, dtype=torch.float64)}


# --- inputs of the advanced objectives (mochi, cacr, isogclr, groco, listwise, quality_weighted,
# augmented_negatives)

ISOGCLR_DATASET_SIZE = 40
LIST_LENGTH = 3


def unique_dataset_indices(n: int, d: int, generator: torch.Generator) -> dict[str, Any]:
    return {"indices": torch.randperm(ISOGCLR_DATASET_SIZE, generator=generator)[:n]}


def query_and_candidate_lists(n: int, d: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    query = torch.randn(n, d, generator=generator, dtype=torch.float64)
    candidates = query.unsqueeze(1) + torch.randn(n, LIST_LENGTH, d, generator=generator, dtype=torch.float64)
    return query, candidates


def graded_relevance(n: int, d: int, generator: torch.Generator) -> dict[str, Any]:
    return {"relevance": torch.randint(0, 4, (n, LIST_LENGTH), generator=generator)}


def quality_scores(n: int, d: int, generator: torch.Generator) -> dict[str, Any]:
    return {"quality": torch.randn(n, generator=generator, dtype=torch.float64)}


def teacher_pair_scores(n: int, d: int, generator: torch.Generator) -> dict[str, Any]:
    return {"teacher_scores": torch.rand(n, generator=generator, dtype=torch.float64)}


def positive_and_negative_scores(n: int, d: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    positive = torch.randn(n, generator=generator, dtype=torch.float64)  # (n,) relevance scores: B-PROP's ROP
    return positive, positive + torch.randn(n, generator=generator, dtype=torch.float64) - 0.5


def three_views(n: int, d: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    z_a = torch.randn(n, d, generator=generator, dtype=torch.float64)
    views = z_a.unsqueeze(1) + 0.5 * torch.randn(n, 2, d, generator=generator, dtype=torch.float64)
    return z_a, views  # (n, d) and (n, 2, d): three views per sample


def time_series_overlaps(n: int, d: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    z1 = torch.randn(n, 6, d, generator=generator, dtype=torch.float64)
    return z1, z1 + 0.5 * torch.randn(n, 6, d, generator=generator, dtype=torch.float64)  # (n, T, d) each


# --- inputs of the losses moved into the catalogue (issue 19): query-key, queued CLIP, in-batch
# softmax, neighbour contrast (SCGC), forecasting; see also tests/objectives/test_objectives_moved.py


def cpc_predictions_and_latents(n: int, d: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    latents = torch.randn(n, 6, d, generator=generator, dtype=torch.float64)
    predictions = torch.stack([latents.roll(-k, dims=1) for k in (1, 2)], dim=2)  # (n, T, K, d)
    return predictions + 0.5 * torch.randn(predictions.shape, generator=generator, dtype=torch.float64), latents


WAV2VEC_STEPS, WAV2VEC_DISTRACTORS, HUBERT_CLUSTERS = 6, 3, 4


def contexts_and_quantized(n: int, d: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    # wav2vec 2.0: context outputs (n, T, d) and quantised latents (n, T, d) of each utterance's frames.
    quantized = torch.randn(n, WAV2VEC_STEPS, d, generator=generator, dtype=torch.float64)
    return quantized + 0.7 * torch.randn(n, WAV2VEC_STEPS, d, generator=generator, dtype=torch.float64), quantized


def masked_steps_and_distractors(n: int, d: int, generator: torch.Generator) -> dict[str, Any]:
    # Frames 0-1 and a random share of the others masked; distractors: other steps of the same utterance.
    masked = torch.rand(n, WAV2VEC_STEPS, generator=generator) < 0.5
    masked[:, :2] = True
    offsets = torch.randint(1, WAV2VEC_STEPS, (n, WAV2VEC_STEPS, WAV2VEC_DISTRACTORS), generator=generator)
    distractors = (torch.arange(WAV2VEC_STEPS)[None, :, None] + offsets) % WAV2VEC_STEPS
    return {"masked": masked, "distractors": distractors}


def codebook_logits(n: int, d: int, generator: torch.Generator) -> tuple[torch.Tensor, None]:
    # wav2vec 2.0's codebook logits (n, T, G=2, V=d), one tensor.
    return torch.randn(n, WAV2VEC_STEPS, 2, d, generator=generator, dtype=torch.float64), None


def valid_frames(n: int, d: int, generator: torch.Generator) -> dict[str, Any]:
    frames = torch.rand(n, WAV2VEC_STEPS, generator=generator) < 0.7
    frames[:, 0] = True
    return {"frames": frames}


def frame_predictions(n: int, d: int, generator: torch.Generator) -> tuple[torch.Tensor, None]:
    # HuBERT: projected outputs (n, T, d) of each utterance's frames.
    return torch.randn(n, WAV2VEC_STEPS, d, generator=generator, dtype=torch.float64), None


def cluster_targets(n: int, d: int, generator: torch.Generator) -> dict[str, Any]:
    # HuBERT: cluster ids per frame (-1 on the last frame: padding), masked frames, the clusters' embeddings
    # (a parameter of the method, the same on every process).
    targets = torch.randint(HUBERT_CLUSTERS, (n, WAV2VEC_STEPS), generator=generator)
    targets[:, -1] = -1
    masked = torch.rand(n, WAV2VEC_STEPS, generator=generator) < 0.5
    masked[:, 0] = True
    embeddings = torch.randn(HUBERT_CLUSTERS, d, generator=generator, dtype=torch.float64)
    return {"targets": targets, "masked": masked, "cluster_embeddings": embeddings}


def extra_negatives(n: int, d: int, generator: torch.Generator) -> dict[str, Any]:
    return {"extra_negatives": torch.randn(3 * n, d, generator=generator, dtype=torch.float64)}


def momentum_keys_and_queues(n: int, d: int, generator: torch.Generator) -> dict[str, Any]:
    # keys_a / keys_b are per-sample (split by rows); the queues are whole on every process.
    return {
        "keys_a": torch.randn(n, d, generator=generator, dtype=torch.float64),
        "keys_b": torch.randn(n, d, generator=generator, dtype=torch.float64),
        "queue_a": torch.randn(3, d, generator=generator, dtype=torch.float64),
        "queue_b": torch.randn(4, d, generator=generator, dtype=torch.float64),
    }


def item_ids_and_log_probability(n: int, d: int, generator: torch.Generator) -> dict[str, Any]:
    # Few distinct items, so that rows share their item with rows of the other process.
    return {
        "item_ids": torch.randint(0, max(2, n // 2), (n,), generator=generator),
        "log_item_probability": -3 * torch.rand(n, generator=generator, dtype=torch.float64),
    }


def one_view(n: int, d: int, generator: torch.Generator) -> tuple[torch.Tensor, None]:
    return torch.randn(n, d, generator=generator, dtype=torch.float64), None


def neighbour_weights(n: int, d: int, generator: torch.Generator) -> dict[str, Any]:
    # Row i: anchor i's weights over every node of the global batch (a per-sample input, split by
    # rows); sparse like an adjacency power, and the last anchor without any positive.
    values = torch.rand(n, n, generator=generator, dtype=torch.float64)
    weights = values * (torch.rand(n, n, generator=generator) < 0.4)
    weights[:, 0] += 0.5  # node 0 is a positive of every other anchor...
    weights[-1] = 0.0  # ...but the last, which has none and is left out of the mean
    return {"weights": weights}


FORECAST_HORIZON = 4


def forecasts_and_targets(n: int, d: int, generator: torch.Generator) -> dict[str, Any]:
    return {
        "forecast": torch.randn(n, FORECAST_HORIZON, generator=generator, dtype=torch.float64),
        "target": torch.randn(n, FORECAST_HORIZON, generator=generator, dtype=torch.float64),
    }


MMCR_VIEWS = 3


def k_views(n: int, d: int, generator: torch.Generator) -> tuple[torch.Tensor, None]:
    # MMCR's own input: the (n, k, d) views of each sample as z_a, no z_b.
    centre = torch.randn(n, 1, d, generator=generator, dtype=torch.float64)
    return centre + 0.5 * torch.randn(n, MMCR_VIEWS, d, generator=generator, dtype=torch.float64), None


def local_maps_and_grids(n: int, d: int, generator: torch.Generator) -> dict[str, Any]:
    # VICRegL: each view's (n, h, w, d) local embeddings and the (n, h, w, 2) image positions of their
    # cells (maps of different sizes), all per-sample inputs.
    return {"maps_a": torch.randn(n, 3, 3, d, generator=generator, dtype=torch.float64),
            "maps_b": torch.randn(n, 2, 3, d, generator=generator, dtype=torch.float64),
            "grid_a": 32 * torch.rand(n, 3, 3, 2, generator=generator, dtype=torch.float64),
            "grid_b": 32 * torch.rand(n, 2, 3, 2, generator=generator, dtype=torch.float64)}


DENSE_MAP_A, DENSE_MAP_B = (3, 3), (2, 3)


def dense_maps(n: int, d: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    # dense_infonce: two views' (n, h, w, d) feature maps of different sizes, channels last.
    maps_a = torch.randn(n, *DENSE_MAP_A, d, generator=generator, dtype=torch.float64)
    return maps_a, torch.randn(n, *DENSE_MAP_B, d, generator=generator, dtype=torch.float64)


def dense_correspondence(n: int, d: int, generator: torch.Generator) -> dict[str, Any]:
    # For each position of view a's map, its position in view b's (flat index), -1 for about a third.
    positions_b = DENSE_MAP_B[0] * DENSE_MAP_B[1]
    correspondence = torch.randint(0, positions_b, (n, *DENSE_MAP_A), generator=generator)
    correspondence[torch.rand(n, *DENSE_MAP_A, generator=generator) < 0.3] = -1
    return {"correspondence": correspondence}


def cluster_centres(n: int, d: int, generator: torch.Generator) -> dict[str, Any]:
    # DEC's centres (K, d): a parameter of the model, the same on every process (not per-sample).
    return {"centres": torch.randn(3, d, generator=generator, dtype=torch.float64)}


SWAV_CROPS, DINO_GLOBAL_CROPS = 4, 2


def prototype_scores_of_crops(n: int, d: int, generator: torch.Generator) -> tuple[torch.Tensor, None]:
    # SwAV's own input: every crop's scores against d prototypes, (n, V, d), the 2 global crops first.
    centre = torch.randn(n, 1, d, generator=generator, dtype=torch.float64)
    return centre + 0.5 * torch.randn(n, SWAV_CROPS, d, generator=generator, dtype=torch.float64), None


def queued_prototype_scores(n: int, d: int, generator: torch.Generator) -> dict[str, Any]:
    # Scores of past samples' global crops: the same on every process (a gathered queue), not split.
    return {"queue_scores": torch.randn(3, 2, d, generator=generator, dtype=torch.float64)}


def student_and_teacher_crops(n: int, d: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    # DINO: the student's outputs of every crop (n, V, d) and the teacher's of the global crops (n, G, d).
    teacher = torch.randn(n, DINO_GLOBAL_CROPS, d, generator=generator, dtype=torch.float64)
    student = torch.cat([teacher, torch.randn(n, 2, d, generator=generator, dtype=torch.float64)], dim=1)
    return student + 0.5 * torch.randn(student.shape, generator=generator, dtype=torch.float64), teacher


OBOW_CROPS, OBOW_TEACHER_CROPS, OBOW_CHANNELS = 3, 2, 3


def student_logits_and_teacher_maps(n: int, d: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    # OBoW: the student's logits of every crop over d words (n, V, d) and the teacher's feature maps of
    # the first G crops (n, G, C, 3, 3).
    logits = 2 * torch.randn(n, OBOW_CROPS, d, generator=generator, dtype=torch.float64)
    maps = torch.rand(n, OBOW_TEACHER_CROPS, OBOW_CHANNELS, 3, 3, generator=generator, dtype=torch.float64)
    return logits, maps


def vocabulary_of_words(n: int, d: int, generator: torch.Generator) -> dict[str, Any]:
    # OBoW's vocabulary (d words of C channels): a queue, the same on every process (not split).
    return {"vocabulary": torch.rand(d, OBOW_CHANNELS, generator=generator, dtype=torch.float64)}


def anchor_views_and_targets(n: int, d: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    # MSN: two masked anchor views per sample (n, 2, d) and the target view (n, d).
    targets = torch.randn(n, d, generator=generator, dtype=torch.float64)
    return targets.unsqueeze(1) + 0.7 * torch.randn(n, 2, d, generator=generator, dtype=torch.float64), targets


def masked_patch_predictions(n: int, d: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    # masked_pixel_regression: predictions of 2 masked patches (n, 2, d) and all 5 patches (n, 5, d).
    return (torch.randn(n, 2, d, generator=generator, dtype=torch.float64),
            torch.randn(n, 5, d, generator=generator, dtype=torch.float64))


def masked_patch_index(n: int, d: int, generator: torch.Generator) -> dict[str, Any]:
    return {"masked_index": torch.rand(n, 5, generator=generator).argsort(dim=1)[:, :2]}


def msn_prototypes(n: int, d: int, generator: torch.Generator) -> dict[str, Any]:
    # MSN's prototypes (K, d): a parameter of the method, the same on every process (not split).
    return {"prototypes": torch.randn(5, d, generator=generator, dtype=torch.float64)}


MLM_TOKENS = 6


def token_logits(n: int, d: int, generator: torch.Generator) -> tuple[torch.Tensor, None]:
    # masked language modelling: logits (n, L, V = d) over a vocabulary of d ids.
    return torch.randn(n, MLM_TOKENS, d, generator=generator, dtype=torch.float64), None


def masked_token_targets(n: int, d: int, generator: torch.Generator) -> dict[str, Any]:
    targets = torch.randint(d, (n, MLM_TOKENS), generator=generator)
    targets[torch.rand(n, MLM_TOKENS, generator=generator) < 0.5] = -100  # not masked
    targets[0, 0] = 1
    return {"targets": targets}


def packed_token_logits(n: int, d: int, generator: torch.Generator) -> tuple[torch.Tensor, None]:
    # masked language modelling on the masked tokens alone: one row per token, (n, V = d).
    return torch.randn(n, d, generator=generator, dtype=torch.float64), None


def packed_token_targets(n: int, d: int, generator: torch.Generator) -> dict[str, Any]:
    targets = torch.randint(d, (n,), generator=generator)
    targets[1::3] = -100
    return {"targets": targets}


def token_detection_logits(n: int, d: int, generator: torch.Generator) -> tuple[torch.Tensor, None]:
    # replaced-token detection: one "replaced" logit per token, (n, L = d).
    return torch.randn(n, d, generator=generator, dtype=torch.float64), None


def replaced_tokens_and_padding(n: int, d: int, generator: torch.Generator) -> dict[str, Any]:
    replaced = torch.rand(n, d, generator=generator) < 0.3
    attention_mask = torch.ones(n, d, dtype=torch.long)
    attention_mask[::2, -2:] = 0  # padded sequences
    return {"replaced": replaced, "attention_mask": attention_mask}


CASES: dict[str, ObjectiveCase] = {
    "supcon": ObjectiveCase(make_extra=labels_with_repeats),
    "dense_infonce": ObjectiveCase(make_embeddings=dense_maps, make_extra=dense_correspondence,
                                   note="per-position InfoNCE within each image; count = valid anchors of the batch"),
    "hcl": ObjectiveCase(kwargs={"temperature": 0.5, "beta": 1.0, "tau_plus": 0.1}),
    "dclw": ObjectiveCase(kwargs={"temperature": 0.2, "sigma": 0.5}),
    # advanced objectives
    "mochi": ObjectiveCase(
        kwargs={"temperature": 0.3, "num_hardest": 5, "num_mixed": 4, "num_query_mixed": 3, "seed": 1},
        make_extra=queue_of_keys,
        note="the mixes are drawn for the whole gathered batch from a generator seeded alike on every rank",
    ),
    "isogclr": ObjectiveCase(
        kwargs={"dataset_size": ISOGCLR_DATASET_SIZE},
        make_extra=unique_dataset_indices,
        note="per-sample state is updated from the full gathered batch on every rank",
    ),
    "groco": ObjectiveCase(kwargs={"num_negatives": 3, "steepness": 5.0}),
    "listwise": ObjectiveCase(
        make_embeddings=query_and_candidate_lists,
        make_extra=graded_relevance,
        distributed="full_only",
        note="the paper's Gaussian 2-Wasserstein is a statistic of the whole batch: no per-rank terms",
    ),
    "quality_weighted": ObjectiveCase(kwargs={"temperature": 0.3}, make_extra=quality_scores),
    # time series
    "ts2vec_hierarchical": ObjectiveCase(
        make_embeddings=time_series_overlaps,
        distributed="full_only",
        note="no loss_terms: the instance term is computed over the whole gathered batch per time step",
    ),
    # audio (issue 24): per-step predictions (n, T, K, d) of future latents (n, T, d)
    "cpc": ObjectiveCase(make_embeddings=cpc_predictions_and_latents,
                         note="the other sequences of every process are negatives; terms per sequence"),
    "wav2vec_contrastive": ObjectiveCase(
        make_embeddings=contexts_and_quantized, make_extra=masked_steps_and_distractors,
        note="distractors are within the utterance; the count is the global number of masked steps"),
    "codebook_diversity": ObjectiveCase(
        make_embeddings=codebook_logits, make_extra=valid_frames,
        note="the codebook usage is averaged over the whole gathered batch; utterance i's share is L_d / B"),
    "hubert_masked_prediction": ObjectiveCase(
        kwargs={"unmasked_weight": 0.3}, make_embeddings=frame_predictions, make_extra=cluster_targets,
        note="each mean is divided by the global count of its frames; the cluster embeddings are not split"),
    # losses moved into the catalogue (issue 19)
    "query_key_infonce": ObjectiveCase(kwargs={"temperature": 0.2}),
    "in_batch_softmax": ObjectiveCase(kwargs={"temperature": 0.2}, make_extra=item_ids_and_log_probability),
    "queued_clip": ObjectiveCase(kwargs={"init_temperature": 0.2}, make_extra=momentum_keys_and_queues),
    "neighbour_contrast": ObjectiveCase(
        kwargs={"temperature": 0.5},
        make_embeddings=one_view,
        make_extra=neighbour_weights,
        note="one view; each process passes its nodes' rows of W (over all nodes), gathered into the whole W",
    ),
    "forecast_contrastive": ObjectiveCase(
        kwargs={"contrastive_weight": 0.3, "temperature": 0.2},
        make_extra=forecasts_and_targets,
    ),
    "deep_clustering_kl": ObjectiveCase(
        make_embeddings=one_view,
        make_extra=cluster_centres,
        note="one view; every process computes q and the target p of the whole gathered batch",
    ),
    # MMCR (issue 20): the nuclear norm of the whole gathered centroid matrix, split evenly over the samples
    "mmcr": ObjectiveCase(
        kwargs={"local_weight": 0.3},
        make_embeddings=k_views,
        note="every rank takes the SVD of the global centroid matrix; sample i's term is -||C||_* + lambda ||Z_i||_*",
    ),
    # redundancy reduction (issue 20): statistics of the whole gathered batch; see also
    # tests/objectives/test_objectives_redundancy.py (unequal batches, TiCo's buffer over two steps)
    "barlow_twins": ObjectiveCase(
        note="the cross-correlation of the whole gathered batch; each sample's term is the whole loss, count N",
    ),
    "vicreg": ObjectiveCase(
        note="variance and covariance of the whole gathered batch; sample i adds its own squared error, count N",
    ),
    "vicregl": ObjectiveCase(
        kwargs={"num_matches": (4, 2)},
        make_extra=local_maps_and_grids,
        note="matching is within an image; sample i adds its own squared errors plus the gathered batch's statistics",
    ),
    "tico": ObjectiveCase(
        note="every rank updates the running covariance from the whole gathered batch before the per-sample terms",
    ),
    # clustering and self-distillation with multi-crop (issue 21); see also
    # tests/objectives/test_objectives_swav_dino.py (DINO's centre over two steps on 2 processes)
    "swav": ObjectiveCase(
        kwargs={"epsilon": 0.5},
        make_embeddings=prototype_scores_of_crops,
        note="the Sinkhorn codes of the whole gathered batch (its sums over the global batch); sample i adds its terms",
    ),
    "dino": ObjectiveCase(
        kwargs={"teacher_temperature": 0.3},
        make_embeddings=student_and_teacher_crops,
        note="the centre is applied and then updated from the whole gathered teacher batch on every rank",
    ),
    "obow": ObjectiveCase(
        kwargs={"inverse_temperature": 3.0},
        make_embeddings=student_logits_and_teacher_maps,
        make_extra=vocabulary_of_words,
        note="mu (mean distance to the nearest word) is updated from the whole gathered teacher batch on every rank",
    ),
    "msn": ObjectiveCase(
        kwargs={"sharpen_temperature": 0.5},
        make_embeddings=anchor_views_and_targets,
        make_extra=msn_prototypes,
        note="Sinkhorn targets and the mean-entropy term over the whole gathered batch; sample i adds its share",
    ),
    "pair_score_distillation": ObjectiveCase(make_extra=teacher_pair_scores),
    "representative_words": ObjectiveCase(make_embeddings=positive_and_negative_scores),
    "masked_pixel_regression": ObjectiveCase(make_embeddings=masked_patch_predictions, make_extra=masked_patch_index),
    # issue 25: BERT's MLM and ELECTRA's replaced-token detection (divided by the gathered batch's token counts)
    "masked_language_modelling": ObjectiveCase(make_embeddings=token_logits, make_extra=masked_token_targets),
    "replaced_token_detection": ObjectiveCase(kwargs={"weight": 50.0}, make_embeddings=token_detection_logits,
                                              make_extra=replaced_tokens_and_padding),
}

# Extra configurations of names already in the catalogue, run by the same tests under the label
# "name[variant]" (e.g. a queue of negatives).
VARIANTS: dict[str, tuple[str, ObjectiveCase]] = {
    "infonce[queue]": ("infonce", ObjectiveCase(kwargs={"temperature": 0.2}, make_extra=queue_of_keys)),
    "infonce[chunked]": ("infonce", ObjectiveCase(kwargs={"temperature": 0.2, "chunk_size": 3})),
    "dcl[chunked]": ("dcl", ObjectiveCase(kwargs={"chunk_size": 3})),
    # advanced objectives
    "cacr[3 views]": ("cacr", ObjectiveCase(kwargs={"positive_temperature": 0.5}, make_embeddings=three_views)),
    "groco[3 views]": ("groco", ObjectiveCase(kwargs={"num_negatives": 2, "swap": "logistic"}, make_embeddings=three_views)),
    "listwise[ordinal_w1]": ("listwise", ObjectiveCase(
        kwargs={"distance": "ordinal_w1", "temperature": 0.2},
        make_embeddings=query_and_candidate_lists,
        make_extra=graded_relevance,
    )),
    "listwise[in-batch]": ("listwise", ObjectiveCase(
        kwargs={"distance": "ordinal_w1", "in_batch_negatives": True},
        make_embeddings=query_and_candidate_lists,
        make_extra=graded_relevance,
    )),
    "augmented_negatives[margin]": ("augmented_negatives", ObjectiveCase(kwargs={"form": "margin", "margin": 0.6})),
    # losses moved into the catalogue (issue 19)
    "query_key_infonce[queue]": ("query_key_infonce", ObjectiveCase(kwargs={"temperature": 0.2},
                                                                    make_extra=extra_negatives)),
    "scaled_cosine_error[alpha 1]": ("scaled_cosine_error", ObjectiveCase(kwargs={"alpha": 1.0})),
    # MMCR (issue 20): two (n, d) views, as SimCLR's --objective mmcr passes them
    "mmcr[two views]": ("mmcr", ObjectiveCase()),
    # redundancy reduction (issue 20)
    "barlow_twins[lambda 0.2]": ("barlow_twins", ObjectiveCase(kwargs={"redundancy_weight": 0.2})),
    "tico[rho 2, beta 0.5]": ("tico", ObjectiveCase(kwargs={"covariance_weight": 2.0, "covariance_momentum": 0.5})),
    # issue 21
    "swav[queue]": ("swav", ObjectiveCase(kwargs={"epsilon": 0.5}, make_embeddings=prototype_scores_of_crops,
                                          make_extra=queued_prototype_scores)),
    "swav[two views]": ("swav", ObjectiveCase(kwargs={"epsilon": 0.5})),
    # issue 23: dense InfoNCE with every position of every image as negatives
    "dense_infonce[batch negatives]": ("dense_infonce", ObjectiveCase(
        kwargs={"negatives": "batch"}, make_embeddings=dense_maps, make_extra=dense_correspondence)),
    # issue 25: the masked tokens passed packed, one row each (what rtd-contrastive passes)
    "masked_language_modelling[packed]": ("masked_language_modelling", ObjectiveCase(
        make_embeddings=packed_token_logits, make_extra=packed_token_targets)),
}


def case_for(name: str) -> tuple[str, ObjectiveCase]:
    """(registered name, case) for a catalogue name or a variant label."""
    if name in VARIANTS:
        return VARIANTS[name]
    return name, CASES.get(name, ObjectiveCase())


def all_case_labels(registered_names: list[str]) -> list[str]:
    return list(registered_names) + sorted(VARIANTS)


def make_inputs(n: int, d: int, case: ObjectiveCase, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
    """Global (z_a, z_b, extra) in float64, the same in every process for the same seed."""
    generator = torch.Generator().manual_seed(seed)
    if case.make_embeddings is not None:
        z_a, z_b = case.make_embeddings(n, d, generator)
    else:
        z_a = torch.randn(n, d, generator=generator, dtype=torch.float64)
        z_b = z_a + 0.5 * torch.randn(n, d, generator=generator, dtype=torch.float64)
    extra = case.make_extra(n, d, generator)
    return z_a, z_b, extra
