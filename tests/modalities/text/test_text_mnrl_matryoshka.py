"""The mnrl text method (rows with hard negatives) and Matryoshka in text training and evaluation.

The method's loss is recomputed by a naive loop from the embeddings of a dropout-free fake encoder
(anchor by anchor: its positive against every positive and hard negative of the batch), with and
without Matryoshka nesting; scores at a dimension equal those of an encoder that outputs only that
many features; the `text` command trains mnrl with --matryoshka-dims and reports one row per dimension.
"""

from __future__ import annotations

import argparse
import json

import pytest
import torch

from contrastkit.core.errors import ConfigError
from contrastkit.modalities.text import cli as text_cli
from contrastkit.modalities.text.data import SentenceData
from contrastkit.modalities.text.evaluation import (
    evaluate_retrieval,
    evaluate_retrieval_at_dims,
    sts_spearman,
    sts_spearman_at_dims,
)
from contrastkit.modalities.text.matryoshka import use_matryoshka
from contrastkit.modalities.text.methods import build_text_method
from contrastkit.modalities.text.pair_data import PairData
from contrastkit.modalities.text.sources import RetrievalSet, SentencePairs
from contrastkit.modalities.text.tables import TrainingPairs, write_training_pairs
from contrastkit.modalities.text.train import check_data_kind
from tests.conftest import requires_minilm, requires_transformers
from tests.objectives.test_objectives_multiple_negatives import naive_loss
from tests.text_method_fakes import SENTENCES, BagOfWordsEncoder

ROWS = TrainingPairs(
    anchors=SENTENCES[:4],
    positives=SENTENCES[4:8],
    negatives=[(SENTENCES[(i + 1) % 8], SENTENCES[(i + 3) % 8]) for i in range(4)],
)


def _batch(rows: TrainingPairs = ROWS) -> dict:
    return PairData(rows).samples().__getitems__(list(range(len(rows))))


def _embedded(encoder, batch):
    def embed(texts):
        return encoder(encoder.tokenize(texts))

    negatives = embed([t for row in batch["negatives"] for t in row]).view(len(batch["texts"]), -1, encoder.output_dim)
    return embed(batch["texts"]), embed(batch["positives"]), negatives


def test_batches_hold_the_rows():
    batch = PairData(ROWS).samples().__getitems__([2, 0])
    assert batch["texts"] == [ROWS.anchors[2], ROWS.anchors[0]]
    assert batch["positives"] == [ROWS.positives[2], ROWS.positives[0]]
    assert batch["negatives"] == [ROWS.negatives[2], ROWS.negatives[0]]
    assert batch["indices"].tolist() == [2, 0]


def test_mnrl_loss_is_the_naive_loss_of_the_embeddings():
    encoder = BagOfWordsEncoder(dim=8)
    method = build_text_method("mnrl", encoder, temperature=0.1)
    batch = _batch()
    loss, logs = method.training_loss(batch)
    torch.testing.assert_close(loss, naive_loss(*_embedded(encoder, batch), 0.1))
    assert "hard_negative_cosine" in logs
    in_batch_only = TrainingPairs(ROWS.anchors, ROWS.positives, [()] * 4)
    anchors, positives, _ = _embedded(encoder, batch)
    torch.testing.assert_close(method.training_loss(_batch(in_batch_only))[0],
                               naive_loss(anchors, positives, anchors.new_zeros(4, 0, 8), 0.1))


def test_matryoshka_mnrl_sums_the_naive_loss_of_each_prefix():
    encoder = BagOfWordsEncoder(dim=8)
    method = use_matryoshka(build_text_method("mnrl", encoder, temperature=0.1), [8, 4, 2], [1.0, 1.0, 0.5])
    batch = _batch()
    anchors, positives, negatives = _embedded(encoder, batch)
    expected = sum(w * naive_loss(anchors[:, :m], positives[:, :m], negatives[..., :m], 0.1)
                   for m, w in ((8, 1.0), (4, 1.0), (2, 0.5)))
    loss, _ = method.training_loss(batch)
    torch.testing.assert_close(loss, expected)
    grads = torch.autograd.grad(loss, encoder.vectors)[0]
    torch.testing.assert_close(grads, torch.autograd.grad(expected, encoder.vectors)[0])


def test_matryoshka_is_refused_where_it_cannot_apply():
    with pytest.raises(ConfigError, match="Dimension 16.*have 8"):
        use_matryoshka(build_text_method("mnrl", BagOfWordsEncoder(dim=8)), [16, 8])

    class Whitened(torch.nn.Module):  # a method without an in-batch objective on its embeddings
        encoder = BagOfWordsEncoder(dim=8)

    with pytest.raises(ConfigError, match="'whitened' cannot train with --matryoshka-dims.*simcse"):
        use_matryoshka(Whitened(), [8, 4], method_name="whitened")


def test_data_kind_must_suit_the_method():
    mnrl = build_text_method("mnrl", BagOfWordsEncoder())
    simcse = build_text_method("simcse", BagOfWordsEncoder())
    with pytest.raises(ConfigError, match="'mnrl' trains on \\(anchor, positive"):
        check_data_kind(mnrl, SentenceData(SENTENCES))
    with pytest.raises(ConfigError, match="'simcse' trains on unlabeled sentences"):
        check_data_kind(simcse, PairData(ROWS))


class Truncated(torch.nn.Module):
    """An encoder that outputs only the first ``dim`` features of another (the second derivation)."""

    def __init__(self, encoder, dim):
        super().__init__()
        self.inner, self.dim = encoder, dim

    def encode(self, texts, batch_size=64, max_length=None):
        return self.inner.encode(texts, batch_size)[:, : self.dim]


def test_scores_at_each_dimension_equal_an_encoder_cut_to_it():
    encoder = BagOfWordsEncoder(dim=8, seed=3)
    pairs = SentencePairs(SENTENCES[:6], SENTENCES[2:8], torch.linspace(0, 5, 6).numpy())
    by_dim = sts_spearman_at_dims(encoder, pairs, [8, 3])
    assert by_dim == {8: sts_spearman(encoder, pairs), 3: sts_spearman(Truncated(encoder, 3), pairs)}
    retrieval = RetrievalSet(doc_ids=[f"d{i}" for i in range(8)], titles=[""] * 8, texts=SENTENCES,
                             query_ids=["q0", "q1", "q2"], queries=["the cat", "a dog at night", "mice genes"],
                             qrels={"q0": {"d0": 1}, "q1": {"d1": 1}, "q2": {"d5": 1, "d3": 1}})
    at_dims = evaluate_retrieval_at_dims(encoder, retrieval, [8, 2], k_values=(1, 3), cache_dir=False)
    assert at_dims[8] == evaluate_retrieval(encoder, retrieval, k_values=(1, 3), cache_dir=False)
    assert at_dims[2] == evaluate_retrieval(Truncated(encoder, 2), retrieval, k_values=(1, 3), cache_dir=False,
                                            document_encoder=Truncated(encoder, 2))


@requires_transformers
@requires_minilm
def test_text_command_trains_mnrl_with_matryoshka_and_reports_each_dim(tmp_path, capsys):
    rows = TrainingPairs(anchors=SENTENCES * 2, positives=SENTENCES[::-1] * 2,
                         negatives=[(SENTENCES[(i + 2) % 8],) for i in range(16)])
    data = write_training_pairs(rows, tmp_path / "rows.jsonl")
    sts = tmp_path / "sts.csv"
    sts.write_text("sentence1,sentence2,score\nA cat sits.,A cat is sitting.,5\nA man runs.,The sky is blue.,0.5\n"
                   "Dogs bark.,A dog barks loudly.,3\n")
    parser = argparse.ArgumentParser()
    text_cli.add_arguments(parser)
    args = parser.parse_args([
        "--method", "mnrl", "--backbone", "random-small", "--data", str(data), "--out", str(tmp_path / "run"),
        "--batch-size", "4", "--max-steps", "2", "--max-length", "16", "--matryoshka-dims", "64,16",
        "--matryoshka-weights", "1,0.5", "--eval-sts", str(sts), "--device", "cpu",
    ])
    assert text_cli.run(args) == 0
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["matryoshka"] == {"dims": [64, 16], "weights": [1.0, 0.5]}
    assert summary["negatives_per_row"] == 1 and summary["steps"] == 2
    after = summary["evaluation"]["after"]
    assert [row["dim"] for row in after["by_dim"]] == [64, 16]
    assert after["by_dim"][0]["sts_spearman"] == after["sts_spearman"]  # the full dimension is the model itself
    assert "STS Spearman @16" in capsys.readouterr().out
    args.out = str(tmp_path / "again")
    args.method = "ccp"
    with pytest.raises(ConfigError, match="'ccp' cannot train with --matryoshka-dims"):
        text_cli.run(args)
