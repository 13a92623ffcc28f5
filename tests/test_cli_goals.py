"""The commands from embeddings to a user's goal: select (samples to label), index and search (a
persistent search index), evaluate --task ood. Each is checked against the library function it
wraps, or against the sample that must come out first."""

from __future__ import annotations

import json

import numpy as np
import pytest

from contrastkit.cli import main
from contrastkit.evaluation.anomaly import ood_evaluation
from contrastkit.evaluation.selection import select
from tests.evaluation.test_search_index import exported_image_run, write_images


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize("strategy", ["typicality", "k-center", "random"])
def test_select_writes_the_librarys_choice(tmp_path, capsys, strategy):
    embeddings = np.random.default_rng(0).normal(size=(80, 5)).astype(np.float32)
    np.save(tmp_path / "e.npy", embeddings)
    code, _, err = run_cli(capsys, "select", "--embeddings", tmp_path / "e.npy", "--budget", 7, "--strategy",
                           strategy, "--seed", 3, "--out", tmp_path / "chosen.txt")
    assert code == 0, err
    chosen = [int(line) for line in (tmp_path / "chosen.txt").read_text().splitlines()]
    assert chosen == select(embeddings, 7, strategy, seed=3).tolist()


def test_select_from_a_run_keeps_to_its_training_part(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    embeddings = np.random.default_rng(1).normal(size=(50, 4)).astype(np.float32)
    np.save(run / "embeddings.npy", embeddings)
    (run / "split.json").write_text(json.dumps({"train": [0, 30], "holdout": [30, 50]}))
    code, _, err = run_cli(capsys, "select", "--run", run, "--budget", 30, "--strategy", "k-center",
                           "--out", tmp_path / "chosen.txt")
    assert code == 0, err
    chosen = sorted(int(line) for line in (tmp_path / "chosen.txt").read_text().splitlines())
    assert chosen == list(range(30))  # the whole training part, and none of the held-out rows


def test_select_from_a_run_in_data_order_names_rows_of_its_embeddings(tmp_path, capsys):
    """Audio and tabular runs keep their data's order: split.json lists the training rows, and the
    chosen rows are rows of embeddings.npy inside them (the choice made among those rows by hand)."""
    run = tmp_path / "run"
    run.mkdir()
    embeddings = np.random.default_rng(4).normal(size=(30, 4)).astype(np.float32)
    train = [1, 2, 4, 7, 8, 11, 13, 14, 16, 19, 20, 22, 25, 27, 29]
    holdout = sorted(set(range(30)) - set(train))
    np.save(run / "embeddings.npy", embeddings)
    (run / "split.json").write_text(json.dumps({"train": {"rows": train}, "holdout": {"rows": holdout}}))
    code, _, err = run_cli(capsys, "select", "--run", run, "--budget", 5, "--strategy", "k-center",
                           "--seed", 2, "--out", tmp_path / "chosen.txt")
    assert code == 0, err
    chosen = [int(line) for line in (tmp_path / "chosen.txt").read_text().splitlines()]
    among_training = select(embeddings[train], 5, "k-center", seed=2)
    assert chosen == [train[i] for i in among_training] and not set(chosen) & set(holdout)


def test_select_from_an_image_run_also_names_the_datas_rows(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    embeddings = np.random.default_rng(2).normal(size=(40, 4)).astype(np.float32)
    data_rows = np.random.default_rng(3).permutation(100)[:40]  # the data's row of each embedding
    np.save(run / "embeddings.npy", embeddings)
    np.save(run / "rows.npy", data_rows)
    (run / "split.json").write_text(json.dumps({"train": [0, 25], "holdout": [25, 40], "rows": "rows.npy"}))
    code, _, err = run_cli(capsys, "select", "--run", run, "--budget", 6, "--out", tmp_path / "chosen.txt")
    assert code == 0, err
    chosen = [int(line) for line in (tmp_path / "chosen.txt").read_text().splitlines()]
    named = [int(line) for line in (tmp_path / "chosen.data-rows.txt").read_text().splitlines()]
    assert chosen == select(embeddings[:25], 6, "typicality", seed=0).tolist()
    assert named == [int(data_rows[i]) for i in chosen]


def test_select_needs_one_source(capsys):
    code, _, err = run_cli(capsys, "select", "--budget", 3, "--out", "x.txt")
    assert code == 2 and "exactly one of --embeddings" in err


def test_index_search_and_update_from_the_command_line(tmp_path, capsys):
    run = exported_image_run(tmp_path / "export")
    images = tmp_path / "images"
    write_images(images, [f"{c}/{i}.png" for c in ("a", "b") for i in range(3)])
    code, out, err = run_cli(capsys, "index", "--run", run, "--data", images, "--out", tmp_path / "index")
    assert code == 0 and "Embedded 6 new image samples" in out, err
    code, out, err = run_cli(capsys, "search", "--index", tmp_path / "index", "--query", images / "b" / "1.png",
                             "--k", 3, "--out", tmp_path / "hits.json")
    assert code == 0, err
    assert out.splitlines()[0].split("\t")[:2] == ["1", "b/1.png"]
    hits = json.loads((tmp_path / "hits.json").read_text())
    assert len(hits[0]) == 3 and hits[0][0]["id"] == "b/1.png" and hits[0][0]["score"] == pytest.approx(1, abs=1e-5)
    write_images(images, ["c/0.png"], seed=5)
    code, out, err = run_cli(capsys, "index", "--update", "--data", images, "--out", tmp_path / "index")
    assert code == 0 and "Embedded 1 new image samples" in out and "holds 7" in out, err


def test_index_given_embeddings_and_search_with_an_npy(tmp_path, capsys):
    embeddings = np.random.default_rng(2).normal(size=(12, 4)).astype(np.float32)
    np.save(tmp_path / "e.npy", embeddings)
    (tmp_path / "ids.txt").write_text("\n".join(f"item-{i}" for i in range(12)) + "\n")
    code, _, err = run_cli(capsys, "index", "--embeddings", tmp_path / "e.npy", "--ids", tmp_path / "ids.txt",
                           "--out", tmp_path / "index")
    assert code == 0, err
    np.save(tmp_path / "q.npy", embeddings[[4, 9]])
    code, out, err = run_cli(capsys, "search", "--index", tmp_path / "index", "--query", tmp_path / "q.npy", "--k", 2)
    assert code == 0, err
    firsts = [line.split("\t") for line in out.splitlines() if line.split("\t")[1] == "1"]
    assert [(query, sample_id) for query, _, sample_id, _ in firsts] == [("0", "item-4"), ("1", "item-9")]
    code, _, err = run_cli(capsys, "search", "--index", tmp_path / "index", "--query", "some text")
    assert code == 2 and ".npy of query embeddings" in err


def test_evaluate_ood_matches_the_library(tmp_path, capsys):
    rng = np.random.default_rng(3)
    reference, inside, outside = rng.normal(size=(60, 5)), rng.normal(size=(20, 5)), rng.normal(size=(15, 5)) + 2
    labels = rng.integers(0, 2, size=60)
    for name, array in (("ref", reference), ("in", inside), ("out", outside), ("labels", labels)):
        np.save(tmp_path / f"{name}.npy", array)
    code, out, err = run_cli(capsys, "evaluate", "--task", "ood", "--reference", tmp_path / "ref.npy",
                             "--reference-labels", tmp_path / "labels.npy", "--embeddings", tmp_path / "in.npy",
                             "--ood-embeddings", tmp_path / "out.npy", "--k", 3, "--shrinkage", "0.2",
                             "--no-normalize")
    assert code == 0, err
    expected = ood_evaluation(reference, inside, outside, reference_labels=labels, k=3, shrinkage=0.2,
                              normalize=False)
    assert json.loads(out) == pytest.approx(expected)
    code, _, err = run_cli(capsys, "evaluate", "--task", "ood", "--embeddings", tmp_path / "in.npy")
    assert code == 2 and "--reference" in err and "--ood-embeddings" in err
