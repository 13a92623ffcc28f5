"""`contrastkit timeseries`: TS2Vec from the command line, scored like the benchmark."""

from __future__ import annotations

import json

import numpy as np
import pytest

from contrastkit.cli import main

pytest.importorskip("aeon", reason="aeon ships the bundled UCR sets")


def test_timeseries_command_trains_encodes_and_scores(tmp_path, capsys):
    from contrastkit.evaluation.ucr import one_nn_euclidean
    from contrastkit.modalities.timeseries.sources import load_bundled

    out = tmp_path / "ipd"
    assert main(["timeseries", "--data", "ItalyPowerDemand", "--eval-split", "test", "--iters", "10", "--seed", "1",
                 "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    train, test = load_bundled("ItalyPowerDemand", "train"), load_bundled("ItalyPowerDemand", "test")
    assert np.load(out / "train_embeddings.npy").shape == (67, 320)
    assert np.load(out / "test_embeddings.npy").shape == (1029, 320)
    assert summary["iters"] == 10
    # The floor is the raw series' 1-NN, computed here on the unstandardised data (0.955 published).
    floor = one_nn_euclidean(train.x, train.y, test.x, test.y)
    assert summary["one_nn_euclidean"] == pytest.approx(floor)
    assert summary["one_nn_euclidean"] == pytest.approx(0.955, abs=0.001)
    # TS2Vec reaches the floor within sampling noise (the paper: 0.961 against 0.955): at most three
    # standard errors of an accuracy near the floor on the 1,029 test series (0.019) below it. The same
    # protocol on the untrained encoder scores 0.90-0.93, below this bound; seed 1 after 10 steps, 0.96.
    three_standard_errors = 3 * np.sqrt(floor * (1 - floor) / len(test.y))
    assert floor - three_standard_errors <= summary["svm_accuracy"] <= 1.0
    assert "SVM protocol accuracy" in capsys.readouterr().out
    # a second run never overwrites the first
    assert main(["timeseries", "--data", "ItalyPowerDemand", "--iters", "1", "--out", str(out)]) == 2
    assert "already holds" in " ".join(capsys.readouterr().err.split())  # the message is wrapped


# ItalyPowerDemand's dev carve trains on 47 series: 5 steps an epoch. 40 steps with a checkpoint
# every 3 and at every epoch's end; the kill lands after the end-of-epoch checkpoint of step 10 plus
# a random moment (so after it, or after a later one inside an epoch).
RESUME_OPTIONS = ["--data", "ItalyPowerDemand", "--seed", "3", "--max-steps", "40", "--checkpoint-every-steps", "3"]


@pytest.mark.slow
def test_a_run_killed_between_step_checkpoints_resumes_exactly(tmp_path):
    import subprocess

    from tests.resume_harness import ENV, assert_kill_and_resume_is_exact, cli, load_checkpoint

    env = {**ENV, "OMP_NUM_THREADS": "1"}
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    subprocess.run(cli("timeseries", *RESUME_OPTIONS, "--out", str(whole)), check=True, env=env, capture_output=True)
    # --resume reads the run's options back from its config.yaml
    assert_kill_and_resume_is_exact(cli("timeseries", *RESUME_OPTIONS, "--out", str(killed)),
                                    cli("timeseries", "--out", str(killed), "--resume"), killed, whole,
                                    kill_after_step=10, seed=2, env=env)
    # the SWA average (weights and count) is part of the state compared above
    state = load_checkpoint(killed)["state_dict"]
    assert int(state["method.averaged_encoder.n_averaged"]) == 41
    assert any(name.startswith("method.averaged_encoder.module.") for name in state)
    expected, resumed = (json.loads((run / "summary.json").read_text()) for run in (whole, killed))
    assert resumed["epoch_losses"] == expected["epoch_losses"] and len(expected["epoch_losses"]) == 8
    assert resumed["svm_accuracy"] == expected["svm_accuracy"]
    np.testing.assert_array_equal(np.load(killed / "dev_embeddings.npy"), np.load(whole / "dev_embeddings.npy"))
    for name in ("config.yaml", "metrics.csv", "model.pt", "report.md", "plots/loss_curve.png"):
        assert (killed / name).is_file(), name


def test_resume_refuses_options_that_change_the_run(tmp_path, capsys):
    import yaml

    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(yaml.safe_dump({"command": {"data": "ItalyPowerDemand", "seed": 3}}))
    assert main(["timeseries", "--out", str(run), "--resume", "--seed", "4"]) == 2
    assert "--seed 3, not 4" in " ".join(capsys.readouterr().err.split())
    assert main(["timeseries", "--out", str(tmp_path / "absent"), "--resume"]) == 2
    assert "no config.yaml" in capsys.readouterr().err
