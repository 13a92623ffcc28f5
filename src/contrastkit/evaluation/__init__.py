"""Evaluation of embeddings (numpy arrays or torch tensors) on their own, with no model:
weighted kNN and linear probes under one protocol, representation diagnostics, clustering and
retrieval metrics, which samples to label, semi-supervised classifiers from a few labels (label
propagation, self-training), and a persistent search index."""

from __future__ import annotations

from contrastkit.evaluation.clustering import cluster_accuracy, kmeans_scores
from contrastkit.evaluation.diagnostics import (
    alignment,
    collapse_report,
    effective_rank,
    isotropy,
    per_dimension_std,
    singular_values,
    uniformity,
)
from contrastkit.evaluation.knn import weighted_knn_accuracy, weighted_knn_predict
from contrastkit.evaluation.linear import fit_linear_probe, linear_probe_accuracy
from contrastkit.evaluation.protocol import evaluate_embeddings, few_label_key
from contrastkit.evaluation.retrieval import mrr_at_k, ndcg_at_k, recall_at_k, search
from contrastkit.evaluation.search_index import SearchIndex
from contrastkit.evaluation.selection import k_center_greedy, select, typicality
from contrastkit.evaluation.semi_supervised import label_propagation, self_train, semi_supervised_evaluation
from contrastkit.evaluation.splits import few_labels_per_class, stratified_split

__all__ = [
    "SearchIndex",
    "alignment",
    "cluster_accuracy",
    "collapse_report",
    "effective_rank",
    "evaluate_embeddings",
    "few_label_key",
    "few_labels_per_class",
    "fit_linear_probe",
    "isotropy",
    "k_center_greedy",
    "kmeans_scores",
    "label_propagation",
    "linear_probe_accuracy",
    "mrr_at_k",
    "ndcg_at_k",
    "per_dimension_std",
    "recall_at_k",
    "search",
    "select",
    "self_train",
    "semi_supervised_evaluation",
    "singular_values",
    "stratified_split",
    "typicality",
    "uniformity",
    "weighted_knn_accuracy",
    "weighted_knn_predict",
]
