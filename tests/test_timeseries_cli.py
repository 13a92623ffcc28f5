"""`contrastkit timeseries`: TS2Vec from the command line, scored like the benchmark."""

from __future__ import annotations

import json

import numpy as np
import pytest

from contrastkit.cli import main

pytest.importorskip("aeon", reason="aeon ships the bundled UCR sets")


def test_timeseries_command_trains_encodes_and_scores(tmp_path, capsys):
    from contrastkit.evaluation.ucr import one_nn_euclidean
    from contrastkit.sources.timeseries import load_bundled

    out = tmp_path / "ipd"
    assert main(["timeseries", "--data", "ItalyPowerDemand", "--eval-split", "test", "--iters", "10", "--seed", "1",
                 "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    train, test = load_bundled("ItalyPowerDemand", "train"), load_bundled("ItalyPowerDemand", "test")
    assert np.load(out / "train_embeddings.npy").shape == (67, 320)
    assert np.load(out / "test_embeddings.npy").shape == (1029, 320)
    assert summary["iters"] == 10 and 0.5 < summary["svm_accuracy"] <= 1.0
    # The floor is the raw series' 1-NN, computed here on the unstandardised data (0.955 published).
    assert summary["one_nn_euclidean"] == pytest.approx(one_nn_euclidean(train.x, train.y, test.x, test.y))
    assert summary["one_nn_euclidean"] == pytest.approx(0.955, abs=0.001)
    assert "SVM protocol accuracy" in capsys.readouterr().out
    # a second run never overwrites the first
    assert main(["timeseries", "--data", "ItalyPowerDemand", "--iters", "1", "--out", str(out)]) == 2
    assert "already holds" in capsys.readouterr().err
