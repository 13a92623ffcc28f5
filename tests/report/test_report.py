"""The run report: a synthetic run directory (metrics written by Lightning's own CSVLogger) must
give report.md whose images exist and whose tables show the numbers of summary.json."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from lightning.pytorch.loggers import CSVLogger

from contrastkit.core.errors import DataError
from contrastkit.report import format_comparison_table, write_report
from contrastkit.report.run_files import read_metrics_csv

SUMMARY = {  # the layout contrastkit.modalities.image.training.run writes
    "method": "simclr",
    "data": "digits",
    "epochs": 3,
    "seconds": 12.5,
    "samples_per_second": 431.25,
    "seed": 0,
    "knn_top1": 0.9361,
    "linear_top1": 0.95543,
    "linear_top1_10_per_class": 0.8969,
    "n_train": 1438,
    "n_test": 359,
    "baselines": {
        "untrained": {"knn_top1": 0.4012, "linear_top1": 0.6, "linear_top1_10_per_class": 0.333},
        "raw": {"knn_top1": 0.97549, "linear_top1": 0.9612},
    },
    "collapse": {
        "uniformity": -3.2,
        "effective_rank": 41.7,
        "per_dimension_std": 0.11,
        "collapsed": False,
        "reasons": [],
    },
    "collapse_warnings": [],
}
STEPS_PER_EPOCH = 10
EPOCHS = 3


def write_metrics(run_dir: Path) -> list[float]:
    """Log like the trainer does: loss every step, probe and diagnostics at each epoch's end."""
    logger = CSVLogger(run_dir, name="", version="")
    losses = []
    for epoch in range(EPOCHS):
        for i in range(STEPS_PER_EPOCH):
            step = epoch * STEPS_PER_EPOCH + i
            losses.append(5.0 / (1 + step) + 0.01 * (step % 3))
            logger.log_metrics({"train/loss": losses[-1], "epoch": epoch}, step=step)
        logger.log_metrics(
            {
                "probe/knn_top1": 0.5 + 0.1 * epoch,
                "diag/uniformity": -1.0 - epoch,
                "diag/effective_rank": 10.0 + epoch,
                "epoch": epoch,
            },
            step=step,
        )
    logger.save()
    return losses


def make_run(tmp_path: Path, summary=SUMMARY, metrics=True, embeddings=True, labels=True) -> Path:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    if metrics:  # first: CSVLogger warns about a directory that is not empty
        write_metrics(run_dir)
    if summary is not None:
        (run_dir / "summary.json").write_text(json.dumps(summary))
    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, size=240)
    if embeddings:
        np.save(
            run_dir / "embeddings.npy",
            (rng.normal(size=(4, 16))[y] + 0.3 * rng.normal(size=(240, 16))).astype(np.float32),
        )
    if labels:
        np.save(run_dir / "labels.npy", y)
    return run_dir


def linked_images(report: Path) -> list[Path]:
    return [
        report.parent / link for link in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", report.read_text())
    ]


def table_row(text: str, first_cell: str) -> list[str]:
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and cells[0] == first_cell:
            return cells
    raise AssertionError(f"no table row '{first_cell}'")


def assert_cell_shows(cell: str, value) -> None:
    if value is None:
        assert cell == "-"
    else:
        assert abs(float(cell) - 100 * value) <= 0.05 + 1e-9, (cell, value)


def test_metrics_csv_of_lightning_is_read_sparse(tmp_path):
    losses = write_metrics(tmp_path)
    log = read_metrics_csv(tmp_path / "metrics.csv")
    steps, values = log.series("train/loss")
    np.testing.assert_allclose(values, losses)
    np.testing.assert_array_equal(steps, np.arange(EPOCHS * STEPS_PER_EPOCH))
    epochs, knn = log.per_epoch("probe/knn_top1")
    np.testing.assert_array_equal(epochs, [0, 1, 2])
    np.testing.assert_allclose(knn, [0.5, 0.6, 0.7])


def test_full_report_links_existing_pngs_and_shows_summary(tmp_path):
    run_dir = make_run(tmp_path)
    report = write_report(run_dir, tsne=True)
    assert report == run_dir / "report.md"
    images = linked_images(report)
    assert {p.name for p in images} == {
        "loss_curve.png",
        "probe_accuracy.png",
        "diagnostics.png",
        "singular_values.png",
        "embedding_pca.png",
        "embedding_tsne.png",
    }
    for image in images:
        assert image.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", image

    text = report.read_text()
    header = table_row(text, "metric (%)")
    assert header[1:] == ["learned", "untrained", "raw"]
    for metric in ("knn_top1", "linear_top1", "linear_top1_10_per_class"):
        cells = table_row(text, metric)
        assert_cell_shows(cells[1], SUMMARY.get(metric))
        for column, baseline in zip(cells[2:], ("untrained", "raw"), strict=True):
            assert_cell_shows(column, SUMMARY["baselines"][baseline].get(metric))
    assert table_row(text, "method")[1] == "simclr"
    assert text.count("| knn_top1 |") == 1  # accuracies are not repeated among the run facts
    assert float(table_row(text, "samples_per_second")[1]) == pytest.approx(431.25, rel=1e-3)
    assert float(table_row(text, "effective_rank")[1]) == pytest.approx(41.7)
    assert "Warning" not in text


def test_comparison_table_text_matches_summary():
    lines = format_comparison_table(SUMMARY).splitlines()
    assert lines[0].split()[-3:] == ["learned", "untrained", "raw"]
    rows = {line.split()[0]: line.split()[1:] for line in lines[2:]}
    assert set(rows) == {"knn_top1", "linear_top1", "linear_top1_10_per_class"}
    for metric, cells in rows.items():
        assert_cell_shows(cells[0], SUMMARY.get(metric))
        assert_cell_shows(cells[1], SUMMARY["baselines"]["untrained"].get(metric))
        assert_cell_shows(cells[2], SUMMARY["baselines"]["raw"].get(metric))


def test_comparison_table_uses_the_few_label_counts_present():
    summary = {
        "knn_top1": 0.5,
        "linear_top1_5_per_class": 0.25,
        "linear_top1_20_per_class": 0.4,
        "baselines": {"random-projection": {"knn_top1": 0.1}},
    }
    lines = format_comparison_table(summary).splitlines()
    assert lines[0].split()[-1] == "random-projection"
    assert [line.split()[0] for line in lines[2:]] == [
        "knn_top1",
        "linear_top1",
        "linear_top1_5_per_class",
        "linear_top1_20_per_class",
    ]


def test_collapse_warnings_are_shown(tmp_path):
    reason = "effective rank (RankMe) is 1.02, below 10.2: dimensional collapse"
    during_training = "epoch 1: representations look collapsed (uniformity is -0.01)"
    summary = dict(
        SUMMARY,
        collapse={"effective_rank": 1.02, "collapsed": True, "reasons": [reason]},
        collapse_warnings=[during_training] + [f"epoch {e}: ..." for e in range(2, 7)],
    )
    text = write_report(
        make_run(tmp_path, summary=summary, metrics=False, embeddings=False)
    ).read_text()
    assert "Warning" in text and reason in text and during_training in text
    assert "epoch 3: ..." in text and "epoch 4: ..." not in text and "3 more epochs" in text
    assert float(table_row(text, "effective_rank")[1]) == pytest.approx(1.02)


def test_missing_pieces_are_named(tmp_path):
    text = write_report(
        make_run(tmp_path, metrics=False, embeddings=False, labels=False)
    ).read_text()
    assert "No metrics.csv" in text and "No embeddings.npy" in text
    assert linked_images(tmp_path / "run" / "report.md") == []


def test_embeddings_without_labels_or_summary(tmp_path):
    report = write_report(make_run(tmp_path, summary=None, metrics=False, labels=False))
    text = report.read_text()
    assert "No summary.json" in text and "No labels.npy" in text
    assert {p.name for p in linked_images(report)} == {"singular_values.png", "embedding_pca.png"}
    assert all(p.is_file() for p in linked_images(report))


def test_missing_run_directory_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        write_report(tmp_path / "nope")
