"""Hard-negative mining (modalities/text/mining.py): no mined negative is a labelled positive, every
negative's rank (recomputed from a full ranking of the corpus, not the top-k search the miner uses)
is inside the window, the margin holds, and the dev carve of SciFact's train queries is left out."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
import torch

from contrastkit.core.errors import ConfigError
from contrastkit.modalities.text.mining import (
    MiningSettings,
    add_mine_parser,
    choose_negatives,
    mine_hard_negatives,
    run_mine,
)
from contrastkit.modalities.text.sources import in_dev_carve, read_beir, read_qrels
from contrastkit.modalities.text.tables import TrainingPairs, read_training_pairs
from tests.conftest import data_path
from tests.text_method_fakes import BagOfWordsEncoder


def test_choose_negatives_by_hand():
    ranked = np.array([7, 3, 9, 1, 4, 8])
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4])
    settings = MiningSettings(num_negatives=2, skip_top=1, max_rank=5)
    assert choose_negatives(ranked, scores, excluded={9}, positive_score=None, settings=settings) == [3, 1]
    margin = MiningSettings(num_negatives=2, skip_top=0, max_rank=6, relative_margin=0.25)
    # (1 - 0.25) * 0.8 = 0.6: scores above 0.6 are too close to the positive's
    assert choose_negatives(ranked, scores, excluded=set(), positive_score=0.8, settings=margin) == [1, 4]
    assert choose_negatives(ranked, scores, excluded={1, 4, 8}, positive_score=0.8, settings=margin) is None
    picked = choose_negatives(ranked, scores, set(), None, MiningSettings(3, 0, 6, sampling="random", seed=1))
    assert len(set(picked)) == 3 and set(picked) <= set(ranked.tolist())
    with pytest.raises(ConfigError, match="skip_top < max_rank"):
        MiningSettings(skip_top=5, max_rank=5)


WORDS = "cell gene mouse protein virus drug trial brain heart lung blood tumour dose risk".split()


def _synthetic_pairs(n=12, seed=0):
    rng = np.random.default_rng(seed)
    documents = [" ".join(rng.choice(WORDS, 6)) for _ in range(n)]
    anchors = [" ".join(rng.choice(WORDS, 3)) for _ in range(n)]
    # Anchor 0 has two labelled positives (rows 0 and 1): neither may become its negative.
    return TrainingPairs(anchors=[*anchors, anchors[0]], positives=[*documents, documents[1]], negatives=[()] * (n + 1))


def test_dense_mining_honours_the_window_margin_and_labels():
    pairs = _synthetic_pairs()
    encoder = BagOfWordsEncoder(dim=8, seed=2)
    skip_top, max_rank, margin = 1, 6, 0.05
    mined = mine_hard_negatives(pairs, retriever="dense", model=encoder, num_negatives=2, skip_top=skip_top,
                                max_rank=max_rank, relative_margin=margin)
    documents = list(dict.fromkeys(pairs.positives))
    unit = torch.nn.functional.normalize(encoder.encode(documents).double(), dim=1)
    labelled = {}
    for anchor, positive in zip(pairs.anchors, pairs.positives):
        labelled.setdefault(anchor, set()).add(positive)
    assert mined.rows_in == len(pairs) and len(mined.pairs) + mined.dropped == len(pairs)
    assert len(mined.pairs) > 0
    for anchor, positive, negatives in zip(mined.pairs.anchors, mined.pairs.positives, mined.pairs.negatives):
        query = torch.nn.functional.normalize(encoder.encode([anchor]).double(), dim=1)[0]
        cosines = (unit @ query).numpy()
        order = np.argsort(-cosines).tolist()  # the full ranking, rank = position + 1
        positive_score = cosines[documents.index(positive)]
        expected = [documents[row] for row in order[skip_top:max_rank]
                    if documents[row] not in labelled[anchor] and cosines[row] <= (1 - margin) * positive_score][:2]
        assert list(negatives) == expected
        for negative in negatives:
            assert negative not in labelled[anchor]
            assert skip_top < order.index(documents.index(negative)) + 1 <= max_rank


def test_bm25_mining_of_scifact_train_leaves_labelled_positives_and_dev_out(tmp_path):
    from contrastkit.modalities.text.bm25 import BM25Index

    folder = data_path("scifact")
    out = tmp_path / "triplets.csv"  # abstracts hold line breaks: no TSV
    mined = mine_hard_negatives(folder, out, split="train", retriever="bm25", num_negatives=2, skip_top=2,
                                max_rank=20)
    assert read_training_pairs(out) == TrainingPairs(mined.pairs.anchors, mined.pairs.positives,
                                                     mined.pairs.negatives, name=str(out))
    train = read_beir(folder, "train")
    documents = train.documents()
    text_of = dict(zip(train.doc_ids, documents))
    query_ids = {}
    for q, text in zip(train.query_ids, train.queries):
        query_ids.setdefault(text, set()).add(q)
    qrels = read_qrels(folder / "qrels" / "train.tsv")  # read again, apart from the miner's reading
    # No anchor is a dev query, nor has a dev query's text (SciFact repeats two claims across the carve).
    assert not any(in_dev_carve(q) for anchor in mined.pairs.anchors for q in query_ids[anchor])
    for anchor, positive, negatives in zip(mined.pairs.anchors, mined.pairs.positives, mined.pairs.negatives):
        relevant = {text_of[d] for q in query_ids[anchor] for d in qrels[q]}
        assert positive in relevant and not relevant & set(negatives)
    index = BM25Index(documents)
    for anchor, negatives in list(zip(mined.pairs.anchors, mined.pairs.negatives))[:25]:
        scores = index.scores([anchor])[0]
        for negative in negatives:
            rank = 1 + int((scores > scores[documents.index(negative)]).sum())  # ties take the better rank
            assert 2 < rank <= 20


def test_mine_command_writes_a_training_file(tmp_path, capsys):
    pairs_file = tmp_path / "pairs.csv"
    pairs = _synthetic_pairs(n=10, seed=3)
    pairs_file.write_text("q,d\n" + "".join(f"{a},{p}\n" for a, p in zip(pairs.anchors, pairs.positives)))
    parser = argparse.ArgumentParser()
    subparsers = parser.add_subparsers(dest="command")
    add_mine_parser(subparsers)
    out = tmp_path / "mined.jsonl"
    args = parser.parse_args(["mine", "--data", str(pairs_file), "--columns", "q,d", "--out", str(out),
                              "--num-negatives", "1", "--max-rank", "5", "--sampling", "random"])
    assert run_mine(args) == 0
    report = json.loads(capsys.readouterr().out)
    written = read_training_pairs(out)
    assert report["rows"] == len(written) and written.negatives_per_row == 1
    with pytest.raises(ConfigError, match="exists"):
        run_mine(args)
