"""The metrics of the text task runner (:mod:`contrastkit.modalities.text.benchmark_tasks`) that the
existing STS and retrieval code does not already compute: pair classification, clustering and
reranking, as MTEB defines them (Muennighoff et al., "MTEB: Massive Text Embedding Benchmark",
EACL 2023). Pure functions of scores, labels and embeddings; every value is in [0, 1] (the runner
multiplies by 100).

- **Average precision** of scores s against binary relevance r, with tied scores taken as one step
  (scikit-learn's ``average_precision_score``):

      AP = sum_j (R_j - R_{j-1}) P_j

  over the distinct scores t_1 > t_2 > ..., where P_j and R_j are the precision and recall of
  predicting "relevant" for every score >= t_j.
- **Pair classification** (MTEB's PairClassificationEvaluator, cosine similarity only): a pair is
  predicted positive when cos(a, b) >= t. The best accuracy and the best F1 are each taken over every
  threshold t, **on the very pairs being scored** (MTEB chooses its thresholds on the evaluated data
  itself, so both are optimistic: an upper bound of what a threshold chosen elsewhere would give);
  AP needs no threshold. Candidate thresholds are the distinct scores (predict positive from there
  down) and +inf (predict nothing positive), so a tie is never split. MTEB's loop walks sorted rows
  and can split ties, and it never tries the extreme cuts; on data without ties the figures differ
  at most where predicting every pair positive is best.
- **Clustering** (MTEB's ClusteringEvaluator): MiniBatch k-means with k = the number of distinct
  labels on the embeddings as given, then the V-measure (Rosenberg & Hirschberg 2007; scikit-learn's
  ``v_measure_score``, as MTEB computes it), the harmonic
  mean of homogeneity h = 1 - H(C|K) / H(C) and completeness c = 1 - H(K|C) / H(K) (C the classes,
  K the clusters; h = 1 when H(C) = 0, c = 1 when H(K) = 0). k-means depends on its seed; the mean
  over ``seeds`` is reported (MTEB reports one run per subset).
- **Reranking** (MTEB's RerankingEvaluator): each query ranks only its own candidates by cosine;
  MAP is the mean over queries of AP (above), MRR@k the mean of 1 / rank of the first relevant
  candidate within the top k (0 if none). A query without a relevant or without an irrelevant
  candidate is left out, as in MTEB. Tied candidates are ranked irrelevant first for MRR (MTEB's
  order depends on the file's order, which lists positives first).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from contrastkit.core.errors import ConfigError, DataError

KMEANS_BATCH_SIZE = 500  # MTEB's clustering batch size
KMEANS_SEEDS = (0, 1, 2, 3, 4)


def _binary(labels, name: str = "labels") -> np.ndarray:
    values = np.asarray(labels)
    if values.ndim != 1 or not np.isin(values, (0, 1)).all():
        raise DataError(f"The {name} of a pair-classification or reranking task must be 0 or 1, got "
                        f"{sorted(set(np.unique(values).tolist()) - {0, 1})[:5]}.")
    return values.astype(bool)


def _scores(scores, length: int) -> np.ndarray:
    values = np.asarray(scores, dtype=np.float64)
    if values.shape != (length,):
        raise DataError(f"Expected {length} scores, got an array of shape {values.shape}.")
    if not np.isfinite(values).all():
        raise DataError("The scores hold NaN or infinite values.")
    return values


def _cumulative_counts(scores: np.ndarray, relevant: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each distinct score t (highest first): t, the number of items with score >= t, and the
    number of relevant ones among them."""
    order = np.argsort(-scores, kind="stable")
    ordered, hits = scores[order], relevant[order]
    last_of_tie = np.r_[ordered[1:] != ordered[:-1], True]  # the end of each run of equal scores
    predicted = np.flatnonzero(last_of_tie) + 1
    return ordered[last_of_tie], predicted, np.cumsum(hits)[last_of_tie]


def average_precision(relevant: Sequence, scores: Sequence) -> float:
    """AP of ``scores`` (higher = more relevant) against binary ``relevant``; ties are one step (the
    module docstring). NaN when nothing is relevant (scikit-learn warns and returns 0 there)."""
    truth = _binary(relevant, "relevance labels")
    values = _scores(scores, truth.shape[0])
    positives = int(truth.sum())
    if positives == 0:
        return float("nan")
    _, predicted, true_positives = _cumulative_counts(values, truth)
    precision = true_positives / predicted
    recall_step = np.diff(np.r_[0, true_positives]) / positives
    return float((recall_step * precision).sum())


def _threshold_table(scores, labels) -> tuple[np.ndarray, np.ndarray, np.ndarray, int, int]:
    """Every distinct cut "positive iff score >= t", plus t = +inf (no pair positive): the thresholds,
    true positives and false positives of each, and the numbers of positive and negative pairs."""
    truth = _binary(labels)
    values = _scores(scores, truth.shape[0])
    if truth.size == 0:
        raise DataError("Pair classification needs at least one pair.")
    thresholds, predicted, true_positives = _cumulative_counts(values, truth)
    thresholds = np.r_[np.inf, thresholds]
    true_positives = np.r_[0, true_positives]
    false_positives = np.r_[0, predicted] - true_positives
    return thresholds, true_positives, false_positives, int(truth.sum()), int((~truth).sum())


def best_threshold_accuracy(scores: Sequence, labels: Sequence) -> tuple[float, float]:
    """``(accuracy, t)``: the highest accuracy of "positive iff score >= t" over every threshold t,
    chosen on these pairs (the first, i.e. highest, t when several tie)."""
    thresholds, tp, fp, _, negatives = _threshold_table(scores, labels)
    accuracy = (tp + (negatives - fp)) / len(labels)
    best = int(np.argmax(accuracy))
    return float(accuracy[best]), float(thresholds[best])


def best_threshold_f1(scores: Sequence, labels: Sequence) -> tuple[float, float, float, float]:
    """``(f1, precision, recall, t)`` at the threshold t with the highest F1 of the positive class,
    chosen on these pairs; F1 is 0 where nothing positive is predicted correctly."""
    thresholds, tp, fp, positives, _ = _threshold_table(scores, labels)
    f1 = np.where(tp > 0, 2 * tp / np.maximum(tp + fp + positives, 1), 0.0)  # 2TP / (2TP + FP + FN)
    best = int(np.argmax(f1))
    precision = tp[best] / (tp[best] + fp[best]) if tp[best] else 0.0
    recall = tp[best] / positives if positives else 0.0
    return float(f1[best]), float(precision), float(recall), float(thresholds[best])


def pair_classification_metrics(scores: Sequence, labels: Sequence) -> dict[str, float]:
    """``ap``, ``accuracy``, ``f1``, ``precision``, ``recall`` (in [0, 1]) and the two thresholds
    ``accuracy_threshold``, ``f1_threshold`` (in the scores' units) of cosine scores against 0/1
    labels; thresholds chosen on these pairs (see the module docstring)."""
    accuracy, accuracy_threshold = best_threshold_accuracy(scores, labels)
    f1, precision, recall, f1_threshold = best_threshold_f1(scores, labels)
    return {"ap": average_precision(labels, scores), "accuracy": accuracy, "f1": f1, "precision": precision,
            "recall": recall, "accuracy_threshold": accuracy_threshold, "f1_threshold": f1_threshold}


# ------------------------------------------------------------------------------------ clustering


def kmeans_v_measure(embeddings, labels: Sequence, seeds: Sequence[int] = KMEANS_SEEDS,
                     batch_size: int = KMEANS_BATCH_SIZE) -> dict[str, float]:
    """MiniBatch k-means (scikit-learn, k-means++, one initialisation) with k = the number of distinct
    labels on ``embeddings`` as given, once per seed: ``v_measure`` (the mean), ``v_measure_std`` and
    ``clusters`` (k)."""
    from sklearn.cluster import MiniBatchKMeans
    from sklearn.metrics import v_measure_score

    x = np.asarray(embeddings, dtype=np.float32)
    k = len(set(labels))
    if x.ndim != 2 or x.shape[0] != len(labels):
        raise DataError(f"Clustering needs one embedding per label: {x.shape} embeddings, {len(labels)} labels.")
    if not 2 <= k < x.shape[0]:
        raise DataError(f"Clustering needs at least 2 labels and more texts than labels; got {k} labels for "
                        f"{x.shape[0]} texts.")
    if not seeds:
        raise ConfigError("kmeans_v_measure needs at least one seed.")
    values = [v_measure_score(labels, MiniBatchKMeans(n_clusters=k, batch_size=batch_size, n_init=1,
                                                      random_state=seed).fit_predict(x))
              for seed in seeds]
    return {"v_measure": float(np.mean(values)), "v_measure_std": float(np.std(values)), "clusters": k}


# ------------------------------------------------------------------------------------- reranking


def reciprocal_rank(relevant: Sequence, scores: Sequence, k: int = 10) -> float:
    """1 / rank of the best-ranked relevant candidate if it is within the top ``k``, else 0; equal
    scores rank the irrelevant candidates first."""
    truth = _binary(relevant, "relevance labels")
    values = _scores(scores, truth.shape[0])
    order = np.lexsort((truth, -values))  # by score descending, then irrelevant (False) before relevant
    hits = np.flatnonzero(truth[order][:k])
    return 1.0 / (hits[0] + 1) if hits.size else 0.0


def reranking_metrics(relevance: Sequence[Sequence], scores: Sequence[Sequence], k: int = 10) -> dict[str, float]:
    """``map``, ``mrr@k`` over queries (one list of 0/1 relevance and one of scores per query, over
    that query's candidates), and ``queries``: how many counted (those with a relevant and an
    irrelevant candidate)."""
    if k < 1:
        raise ConfigError(f"k must be a positive integer, got {k}.")
    if len(relevance) != len(scores):
        raise DataError(f"{len(relevance)} relevance lists but {len(scores)} score lists.")
    kept = [(np.asarray(r), s) for r, s in zip(relevance, scores) if 0 < np.sum(r) < len(r)]
    if not kept:
        raise DataError("No query of the reranking task has both a relevant and an irrelevant candidate.")
    return {"map": float(np.mean([average_precision(r, s) for r, s in kept])),
            f"mrr@{k}": float(np.mean([reciprocal_rank(r, s, k) for r, s in kept])),
            "queries": len(kept)}
