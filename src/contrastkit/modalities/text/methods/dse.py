"""Distilled Sentence Embedding (Barkan, Razin, Malkiel, Katz, Caciularu & Koenigstein, "Scalable
Attentive Sentence-Pair Modeling via Distilled Sentence Embedding", AAAI 2020,
https://arxiv.org/abs/1908.05161).

A cross-attentive teacher scores a sentence pair by reading both sentences at once; a sentence-
embedding student is trained to reconstruct those pair scores from the two sentences' separate
embeddings, so that pairs can then be scored by a dot product of precomputed vectors. With the
student f (the encoder being trained), the teacher's score ``t(a, b)`` of each training pair
(:class:`~contrastkit.modalities.text.cross_encoder.CrossEncoder`, sigmoid output in [0, 1]) and
``u = f(a)``, ``v = f(b)``::

    loss = 1/N sum_i ( cos(u_i, v_i) - t(a_i, b_i) )^2

(the catalogue's ``pair_score_distillation``,
:class:`contrastkit.objectives.pair_score_distillation.PairScoreDistillation`). The paper's student
scores a pair with an MLP over ``[u, v, u * v, |u - v|]`` and regresses the teacher's logits with an
L2 loss; here the cosine is the student's score, so the embedding alone scores pairs (STS,
retrieval), and the teacher's sigmoid score is the target (the units of STS-B / 5 that it was trained
on). The gold labels of the pairs are never read: only the teacher's scores.

The teacher is trained first (``python -m contrastkit.modalities.text.cross_encoder --data
stsb/sts-train.csv --out TEACHER``) and stays frozen. Its score of each pair is computed once, in a
pass of its own, and cached on disk (:class:`~contrastkit.modalities.text.cross_encoder.PairScoreCache`,
keyed by the teacher's weights), so every epoch, a resumed run and a second seed read the same
float32 targets.

Data: ``--data`` is the pairs -- an STS Benchmark file (its scores are ignored) or a CSV / TSV / JSONL
file of (anchor, positive) rows; each row is a pair (a, b).

Options (``build(encoder, **options)``):
    teacher: the folder of a trained cross-encoder (required).
    score_cache: the JSONL file of cached teacher scores (None: ``$CONTRASTKIT_CACHE/pair-scores/
        <teacher fingerprint>.jsonl``; false: no file, scores kept in memory only).
"""

from __future__ import annotations

import torch
from torch import nn

from contrastkit import objectives
from contrastkit.core.errors import ConfigError, DataError
from contrastkit.modalities.text.cross_encoder import CrossEncoder, PairScoreCache, default_score_cache
from contrastkit.modalities.text.encoders import TextEncoder
from contrastkit.modalities.text.methods import check_options
from contrastkit.nn.distributed import GatheredObjective

DEFAULTS = {"teacher": None, "score_cache": None}


class DistilledSentenceEmbedding(nn.Module):
    """A bi-encoder student whose pair cosines regress onto a frozen cross-encoder's pair scores."""

    name = "dse"
    needs_context = False
    needs_pairs = True

    def __init__(self, encoder: TextEncoder, teacher_scores: PairScoreCache, objective: nn.Module):
        super().__init__()
        self.encoder = encoder
        self.objective = objective
        self.teacher_scores = teacher_scores  # a plain object: the teacher is not trained nor checkpointed

    def training_loss(self, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        if "positives" not in batch:
            raise DataError("dse trains on sentence pairs: give --data an STS file or a .csv/.tsv/.jsonl file of "
                            "(anchor, positive) rows.")
        first, second = batch["texts"], batch["positives"]
        targets = self.teacher_scores(first, second).to(self.encoder.device)
        u = self.encoder(self.encoder.tokenize(first))
        v = self.encoder(self.encoder.tokenize(second))
        loss = self.objective(u, v, teacher_scores=targets)
        with torch.no_grad():
            cosines = torch.nn.functional.cosine_similarity(u.detach().float(), v.detach().float(), dim=1)
        return loss, {"teacher_score": float(targets.mean()), "student_cosine": float(cosines.mean())}


def build(encoder: TextEncoder, **options) -> DistilledSentenceEmbedding:
    settings = check_options("dse", options, DEFAULTS)
    if not settings["teacher"]:
        raise ConfigError("dse needs a teacher: --option teacher=FOLDER, a cross-encoder trained with "
                          "python -m contrastkit.modalities.text.cross_encoder --data stsb/sts-train.csv --out FOLDER.")
    teacher = CrossEncoder.load(settings["teacher"])
    for parameter in teacher.parameters():
        parameter.requires_grad_(False)
    cache = settings["score_cache"]
    path = None if cache is False else (cache if cache is not None else default_score_cache(teacher))
    return DistilledSentenceEmbedding(encoder, PairScoreCache(teacher, path),
                                      GatheredObjective(objectives.get("pair_score_distillation")))
