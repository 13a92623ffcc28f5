"""Fine-tuning a tabular run's encoder on its labelled rows, against second derivations: the label
counts in closed form, the rows against the run's own development carve, a frozen encoder against a
head trained by the same loop on the run's embeddings.npy, and NSL-KDD's test rows read only with
--split test (the test accuracies of the five cyclic shifts of every test family sum to 1)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from contrastkit.core.errors import ConfigError
from contrastkit.evaluation.fine_tune import balanced_labels
from contrastkit.evaluation.linear import linear_probe_accuracy
from tests.fine_tune_reference import fine_tuning_report_rows, hand_trained_head, reported_figures
from tests.conftest import data_path
from tests.modalities.tabular.small_tables import SMALL, write_rows

N_LABELS = 12  # 4 per class of the table's three
OPTIONS = dict(epochs=4, lrs=(0.05,), batch_size=8, seed=0)


@pytest.fixture(scope="module")
def table_run(tmp_path_factory):
    from contrastkit.cli import main

    folder = tmp_path_factory.mktemp("tabular-fine-tune")
    assert main(["fit", "--method", "scarf", "--data", str(write_rows(folder)), "--label-column", "kind", *SMALL,
                 "--out", str(folder / "run")]) == 0
    return folder / "run"


def test_short_classes_give_every_row_and_the_others_share_the_rest_evenly():
    from contrastkit.modalities.tabular.fine_tune import labels_as_balanced_as_classes_allow

    y = np.repeat([0, 1, 2, 3, 4], [50, 30, 9, 2, 40])
    candidates = np.arange(len(y))
    chosen = labels_as_balanced_as_classes_allow(y, candidates, 40, seed=4)
    # An even share is 8; class 3 (2 rows) gives both, leaving 38 over four classes (9.5 each), so
    # class 2 (9 rows) gives all nine too: 29 over the three others, 10 / 10 / 9 (which one has 9: seeded).
    counts = np.bincount(y[chosen], minlength=5)
    assert counts[2] == 9 and counts[3] == 2 and sorted(counts[[0, 1, 4]]) == [9, 10, 10] and counts.sum() == 40
    np.testing.assert_array_equal(chosen, labels_as_balanced_as_classes_allow(y, candidates, 40, seed=4))
    assert not np.array_equal(chosen, labels_as_balanced_as_classes_allow(y, candidates, 40, seed=5))
    # With no class short it is balanced_labels itself.
    np.testing.assert_array_equal(labels_as_balanced_as_classes_allow(y, candidates, 10, seed=4),
                                  balanced_labels(y, candidates, 10, seed=4))
    with pytest.raises(ConfigError, match="ask for fewer"):
        labels_as_balanced_as_classes_allow(y, candidates, len(y), seed=4)


def test_the_rows_are_the_runs_carve_and_the_labels_are_off_it(table_run):
    from contrastkit.engine.run_folder import read_split
    from contrastkit.modalities.tabular.cli import dev_carve
    from contrastkit.modalities.tabular.fine_tune import encoded_rows, labels_as_balanced_as_classes_allow

    _, _, x, names, candidates, dev, test = encoded_rows(table_run, "dev")
    kept, carve = dev_carve(np.load(table_run / "labels.npy"))  # the carve the run was scored on
    np.testing.assert_array_equal(candidates, kept)
    np.testing.assert_array_equal(dev, carve)
    recorded_train, recorded_dev = read_split(table_run)  # the run names the same parts in split.json
    np.testing.assert_array_equal(recorded_train, kept)
    np.testing.assert_array_equal(recorded_dev, carve)
    assert test is None and len(x) == len(names) == 90
    y = np.searchsorted(np.unique(names), names)
    labelled = labels_as_balanced_as_classes_allow(y, candidates, N_LABELS, seed=1)
    assert np.bincount(y[labelled]).tolist() == [4, 4, 4] and not set(labelled) & set(dev)
    with pytest.raises(ConfigError, match="no test part"):
        encoded_rows(table_run, "test")


def test_semi_supervised_evaluation_of_the_run_uses_its_carve_and_class_names(table_run, capsys):
    """The run's labels are class names; the command scores the carve split.json names, as the library
    does on the same rows with the names coded 0..C-1."""
    import json

    from contrastkit.cli import main
    from contrastkit.evaluation.semi_supervised import semi_supervised_evaluation
    from contrastkit.evaluation.splits import few_labels_per_class
    from contrastkit.modalities.tabular.cli import dev_carve

    names = np.load(table_run / "labels.npy")
    assert names.dtype.kind == "U"
    code = main(["evaluate", "--task", "semi-supervised", "--run", str(table_run), "--labels-per-class", "2",
                 "--k", "5"])
    out, err = capsys.readouterr()
    assert code == 0, err
    y = np.array([sorted(set(names)).index(name) for name in names])
    pool, test = dev_carve(names)
    labelled = few_labels_per_class(y, pool, 2, 0)
    expected = semi_supervised_evaluation(np.load(table_run / "embeddings.npy"), y, labelled,
                                          np.setdiff1d(pool, labelled), test, k=5, alpha=0.99, threshold=0.95,
                                          rounds=5, seed=0)
    assert json.loads(out) == json.loads(json.dumps(expected))


def test_a_frozen_encoder_gives_the_head_trained_on_the_runs_embeddings(table_run, one_torch_thread):
    from contrastkit.modalities.tabular.fine_tune import fine_tune_tabular_run

    figures = fine_tune_tabular_run(table_run, N_LABELS, encoder_lr_scale=0.0, **OPTIONS)
    # Second derivation: the embeddings the training process wrote, then the same loop over a head alone.
    frozen = torch.from_numpy(np.load(table_run / "embeddings.npy"))
    names = np.load(table_run / "labels.npy")
    from contrastkit.modalities.tabular.cli import dev_carve

    candidates, dev = dev_carve(names)
    y_numpy = np.searchsorted(np.unique(names), names)
    y = torch.from_numpy(y_numpy)
    labelled = balanced_labels(y_numpy, candidates, N_LABELS, 0)
    dev_top1, _ = hand_trained_head(frozen, y, labelled, dev, 3, epochs=4, lr=0.05, batch_size=8)
    assert figures["method"] == "scarf" and figures["classes"] == ["x", "y", "z"]
    assert figures["labels_per_class"] == [4, 4, 4] and figures["n_scored"] == len(dev)
    assert figures["fine_tune_dev_top1"] == pytest.approx(max(dev_top1))
    assert figures["chosen"]["epochs"] == int(np.argmax(dev_top1)) + 1
    assert figures["linear_top1"] == pytest.approx(
        linear_probe_accuracy(frozen[labelled].numpy(), y_numpy[labelled], frozen[dev].numpy(), y_numpy[dev], 0))


def test_evaluate_fine_tune_on_a_tabular_run_is_kept_and_reported(table_run, tmp_path, one_torch_thread):
    from contrastkit.cli import main

    output = tmp_path / "ft.json"
    assert main(["evaluate", "--fine-tune", "--run", str(table_run), "--labels", str(N_LABELS), "--epochs", "2",
                 "--batch-size", "8", "--output", str(output)]) == 0
    figures = json.loads(output.read_text())
    assert figures["labels"] == N_LABELS and figures["scored"] == "dev" and figures["n_scored"] == figures["dev_size"]
    assert json.loads((table_run / "fine_tune.json").read_text())["results"][-1] == figures
    assert main(["report", str(table_run), "--map", "pca"]) == 0
    cells = next(row for row in fine_tuning_report_rows(table_run) if row[0] == str(N_LABELS))
    assert cells[1] == "dev" and cells[2:6] == reported_figures(figures)


@pytest.fixture(scope="module")
def nsl_kdd_run(tmp_path_factory):
    from contrastkit.cli import main

    data_path("nsl-kdd/KDDTest+.txt")
    out = tmp_path_factory.mktemp("nsl-kdd-fine-tune") / "run"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(["fit", "--method", "scarf", "--data", "nsl-kdd", "--max-steps", "2", "--batch-size", "64",
                     "--hidden-dims", "16", "--depth", "2", "--out", str(out)]) == 0
    finally:
        torch.set_num_threads(threads)
    return out


@pytest.mark.slow  # NSL-KDD's training file (25,192 rows) fitted, its test file (22,544) read five times
def test_nsl_kdd_test_rows_are_read_only_with_split_test(nsl_kdd_run, monkeypatch, one_torch_thread):
    from contrastkit.modalities.tabular import sources
    from contrastkit.modalities.tabular.fine_tune import fine_tune_tabular_run

    families = np.array(sorted(("normal",) + sources.FAMILIES))
    load_nsl_kdd = sources.load_nsl_kdd

    def shifting_test_families_by(shift: int):
        def loaded(root, split):
            data = load_nsl_kdd(root, split)
            if split == "test":
                data.family = families[(np.searchsorted(families, data.family) + shift) % len(families)]
            return data
        return loaded

    options = dict(epochs=2, lrs=(0.01,), batch_size=64, seed=0)
    figures = {}
    for shift in range(len(families)):
        monkeypatch.setattr(sources, "load_nsl_kdd", shifting_test_families_by(shift))
        figures[shift] = {split: fine_tune_tabular_run(nsl_kdd_run, 100, split=split, **options)
                          for split in (("dev", "test") if shift in (0, 1) else ("test",))}
    assert figures[0]["dev"] == figures[1]["dev"]  # the dev figures never saw a test row
    honest = figures[0]["test"]
    assert honest["classes"] == families.tolist() and honest["n_scored"] == 22544
    assert honest["labels_per_class"] == [23, 23, 23, 8, 23]  # U2R: its 8 training rows, all of them
    for key in ("knn_top1", "linear_top1", "fine_tune_top1"):  # scored with them, when asked
        assert sum(figures[shift]["test"][key] for shift in range(len(families))) == pytest.approx(1.0)
    assert honest["fine_tune_dev_top1"] == figures[0]["dev"]["fine_tune_top1"]  # chosen on dev alone
