"""The command line: configuration resolution, and a one-paragraph message (exit 2, no traceback)
for every bad input the foundation issue lists."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml
from PIL import Image

from contrastkit.cli import main

QUICK = ["--data", "digits", "--limit", "200", "--holdout", "0", "--batch-size", "32", "--width", "0.25",
         "--epochs", "1", "--no-report"]


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # runs without --out go to ./runs: keep them out of the checkout


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_user_error(capsys, args, *fragments: str) -> str:
    code, _, err = run_cli(capsys, *args)
    assert code == 2, err
    assert "Traceback" not in err
    assert err.strip().startswith("error:")
    for fragment in fragments:
        assert fragment in err.replace("\n", " "), (fragment, err)
    return err


def test_print_config_resolves_yaml_then_command_line(tmp_path, capsys):
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({"epochs": 7, "temperature": 0.2, "batch-size": 64}))
    code, out, _ = run_cli(capsys, "fit", "--config", str(config), "--epochs", "3", "--print-config")
    assert code == 0
    resolved = yaml.safe_load(out)
    assert resolved["epochs"] == 3  # the command line wins
    assert resolved["temperature"] == 0.2 and resolved["batch_size"] == 64  # from the file
    assert resolved["method"] == "simclr" and resolved["data"] == "digits"  # defaults


def test_unknown_method_names_the_closest(capsys):
    assert_user_error(capsys, ["fit", "--method", "simclrr", "--out", "unused", *QUICK[:2]],
                      "Unknown method 'simclrr'", "simclr")


def test_unknown_objective_names_the_closest(tmp_path, capsys):
    assert_user_error(capsys, ["fit", "--objective", "infonc", "--out", str(tmp_path / "r"), *QUICK],
                      "Unknown objective 'infonc'", "infonce")


def test_unknown_option_names_the_closest(capsys):
    assert_user_error(capsys, ["fit", "--epoch", "3"], "--epoch", "--epochs")


def test_unknown_yaml_key_names_the_closest(tmp_path, capsys):
    config = tmp_path / "run.yaml"
    config.write_text("temperatur: 0.1\n")
    assert_user_error(capsys, ["fit", "--config", str(config)], "temperatur", "temperature")


def test_unknown_command(capsys):
    assert_user_error(capsys, ["fitt"], "Unknown command 'fitt'", "fit")


def test_invalid_value(capsys):
    assert_user_error(capsys, ["fit", "--optimizer", "adam"], "--optimizer", "adamw")


def test_missing_data_path(tmp_path, capsys):
    missing = tmp_path / "nowhere"
    assert_user_error(capsys, ["fit", "--data", str(missing), "--out", str(tmp_path / "r")], str(missing))


def test_empty_folder(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert_user_error(capsys, ["fit", "--data", str(empty), "--out", str(tmp_path / "r")], str(empty))


def _image_folder(root, n=6, size=12):
    for cls in ("a", "b"):
        (root / cls).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(np.full((size, size, 3), 40 * i, np.uint8)).save(root / cls / f"{i}.png")
    return root


def test_corrupt_image(tmp_path, capsys):
    root = _image_folder(tmp_path / "imgs")
    (root / "a" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    assert_user_error(capsys, ["fit", "--data", str(root), "--out", str(tmp_path / "r")], "broken.jpg")


def test_non_image_file_in_image_folder(tmp_path, capsys):
    root = _image_folder(tmp_path / "imgs")
    (root / "b" / "table.csv").write_text("a,b\n1,2\n")
    assert_user_error(capsys, ["fit", "--data", str(root), "--out", str(tmp_path / "r")], "table.csv")


def test_inconsistent_array_shapes(tmp_path, capsys):
    path = tmp_path / "bad.npz"
    np.savez(path, x=np.zeros((10, 8, 8), np.uint8), y=np.zeros(7, np.int64))
    assert_user_error(capsys, ["fit", "--data", str(path), "--out", str(tmp_path / "r")], "bad.npz", "10", "7")


def test_batch_larger_than_data(tmp_path, capsys):
    assert_user_error(capsys, ["fit", *QUICK, "--batch-size", "500", "--out", str(tmp_path / "r")],
                      "--batch-size", "200")


def test_fit_prints_the_table_and_where_the_run_is(tmp_path, capsys):
    code, out, _ = run_cli(capsys, "fit", "--data", "digits", "--limit", "300", "--batch-size", "32", "--width",
                           "0.25", "--epochs", "1", "--no-report")
    assert code == 0
    assert "knn_top1" in out and "untrained" in out and "raw" in out
    run_dirs = list((tmp_path / "runs").iterdir())  # the default: runs/<method>-<data>-<time>
    assert len(run_dirs) == 1 and run_dirs[0].name.startswith("simclr-digits-")
    assert f"Run directory: {run_dirs[0].relative_to(tmp_path)}" in out


def test_existing_run_is_never_overwritten(tmp_path, capsys):
    out = tmp_path / "run"
    assert run_cli(capsys, "fit", *QUICK, "--out", str(out))[0] == 0
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    assert_user_error(capsys, ["fit", *QUICK, "--out", str(out)], str(out), "--resume")
    after = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    assert before == after


def test_resume_without_checkpoint(tmp_path, capsys):
    assert_user_error(capsys, ["fit", "--out", str(tmp_path / "fresh"), "--resume"], "--resume")


def _naive_weighted_knn_accuracy(bank, bank_labels, queries, query_labels, k, temperature):
    """The kNN monitor written out query by query (cosine, top k, votes exp(s / T))."""
    bank = bank / np.linalg.norm(bank, axis=1, keepdims=True)
    queries = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    correct = 0
    for query, truth in zip(queries.astype(np.float64), query_labels):
        similarities = bank.astype(np.float64) @ query
        nearest = np.argsort(-similarities, kind="stable")[:k]
        votes = np.zeros(int(bank_labels.max()) + 1)
        for row in nearest:
            votes[bank_labels[row]] += np.exp(similarities[row] / temperature)
        correct += int(np.argmax(votes) == truth)
    return correct / len(queries)


def test_evaluate_command_matches_the_library(tmp_path, capsys):
    from sklearn.datasets import load_digits

    from contrastkit.evaluation.linear import linear_probe_accuracy
    from contrastkit.evaluation.splits import stratified_split

    digits = load_digits()
    x, y = digits.data.astype(np.float32), digits.target.astype(np.int64)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", y)
    # Options away from their defaults, so a flag the command drops shows up as a difference.
    code, out, err = run_cli(capsys, "evaluate", "--embeddings", str(tmp_path / "x.npy"), "--labels",
                             str(tmp_path / "y.npy"), "--label-fractions", "0.1,1.0", "--test-fraction", "0.3",
                             "--k", "20", "--seed", "3")
    assert code == 0, err
    results = json.loads(out)

    # The same figures derived here: the library's split and probe, a kNN written out in numpy, and the
    # documented few-label draw (max(1, round(f * n_c)) seeded rows of each class from the train part).
    train, test = stratified_split(y, test_fraction=0.3, seed=3)
    assert (results["n_train"], results["n_test"]) == (len(train), len(test))
    knn = _naive_weighted_knn_accuracy(x[train], y[train], x[test], y[test], k=20, temperature=0.1)
    assert results["knn_top1"] == pytest.approx(knn, abs=1e-12)
    rng = np.random.default_rng(3)
    tenth = np.sort(np.concatenate([rng.choice(train[y[train] == c], size=max(1, round(0.1 * np.sum(y[train] == c))),
                                               replace=False) for c in np.unique(y[train])]))
    expected = {"0.1": linear_probe_accuracy(x[tenth], y[tenth], x[test], y[test], seed=3),
                "1.0": linear_probe_accuracy(x[train], y[train], x[test], y[test], seed=3)}
    assert results["linear_top1_by_label_fraction"] == pytest.approx(expected, abs=1e-12)
    assert results["knn_top1"] > 0.9  # and raw digits pixels are close to separable, as published


def test_evaluate_missing_file(tmp_path, capsys):
    assert_user_error(capsys, ["evaluate", "--embeddings", str(tmp_path / "e.npy"), "--labels",
                               str(tmp_path / "l.npy")], "e.npy")


def test_graph_methods_run_through_fit(capsys):
    """`fit --method graphmae` is a graph run: the graph options answer (here: the data is missing)."""
    assert_user_error(capsys, ["fit", "--method", "graphmae"], "Give --data NAME_OR_FOLDER")


def test_graph_command_is_reachable(capsys):
    code, _, err = run_cli(capsys, "graph", "--method", "graphmae", "--data", "/nowhere/graph")
    assert code == 2 and "/nowhere/graph" in err


def test_a_run_killed_before_its_first_checkpoint_can_start_again(tmp_path, capsys):
    out = tmp_path / "aborted"
    out.mkdir()
    (out / "config.yaml").write_text("epochs: 1\n")
    (out / "metrics.csv").write_text("epoch,step,train/loss\n0,0,5.0\n")
    assert run_cli(capsys, "fit", *QUICK, "--out", str(out))[0] == 0
    kept = list(out.glob("metrics-aborted-*.csv"))
    assert len(kept) == 1 and kept[0].read_text().endswith("0,0,5.0\n")  # the aborted log is kept
    assert (out / "checkpoints" / "last.ckpt").exists()


def test_shard_and_export_commands(tmp_path, capsys):
    from contrastkit.modalities.image.export import load_exported
    from contrastkit.modalities.image.sources.shards import ShardFolder

    code, out, err = run_cli(capsys, "shard", "--data", "digits", "--out", str(tmp_path / "shards"),
                             "--shard-size", "500")
    assert code == 0, err
    assert len(ShardFolder(tmp_path / "shards").read(np.arange(1797))) == 1797
    run = tmp_path / "run"
    assert run_cli(capsys, "fit", *QUICK, "--out", str(run))[0] == 0
    code, out, err = run_cli(capsys, "export", "--checkpoint", str(run / "checkpoints" / "last.ckpt"),
                             "--out", str(tmp_path / "exported"))
    assert code == 0, err
    assert load_exported(tmp_path / "exported").output_dim > 0
