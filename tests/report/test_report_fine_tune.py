"""The run report shows what `contrastkit evaluate --fine-tune` measured on the run: its figures are
kept in the run folder's fine_tune.json and appear as rows of report.md and report.html, read back
here against the command's own JSON output."""

from __future__ import annotations

import json

import pytest

from contrastkit.report.fine_tuning import FINE_TUNE_FILE, read_fine_tune, record_fine_tune
from tests.fine_tune_reference import digits_simclr_run, fine_tuning_report_rows, reported_figures


def figures(labels: int, scored: str = "dev", top1: float = 0.5, lr: float = 0.001) -> dict:
    return {"labels": labels, "scored": scored, "seed": 0, "augment": "none", "knn_top1": 0.25,
            "linear_top1": 0.375, "fine_tune_top1": top1, "fine_tune_dev_top1": top1,
            "chosen": {"lr": lr, "encoder_lr": lr, "epochs": 3, "layer_decay": None}, "tried": [{"lr": lr}]}


def test_a_setting_run_again_replaces_its_entry_and_others_are_kept(tmp_path):
    record_fine_tune(tmp_path, figures(10, top1=0.5))
    record_fine_tune(tmp_path, figures(20, top1=0.6))
    record_fine_tune(tmp_path, figures(10, top1=0.7))  # the same setting again: the latest figures
    record_fine_tune(tmp_path, figures(10, scored="test (once)", top1=0.8))
    kept = read_fine_tune(tmp_path)
    assert [(r["labels"], r["scored"], r["fine_tune_top1"]) for r in kept] == [
        (20, "dev", 0.6), (10, "dev", 0.7), (10, "test (once)", 0.8)]
    assert not list(tmp_path.glob("*.tmp"))  # written atomically, nothing left beside it


@pytest.fixture(scope="module")
def image_run(tmp_path_factory):
    return digits_simclr_run(tmp_path_factory.mktemp("report-fine-tune") / "run", limit=400, max_steps=2, report=True)


def test_the_report_shows_the_fine_tuning_rows_of_the_run(image_run, tmp_path):
    from contrastkit.cli import main

    report = image_run / "report.md"
    assert "## Fine-tuning" not in report.read_text()  # nothing measured yet, no section
    outputs = []
    for labels in (20, 40):
        output = tmp_path / f"ft-{labels}.json"
        assert main(["evaluate", "--fine-tune", "--run", str(image_run), "--labels", str(labels), "--epochs", "1",
                     "--dev-size", "50", "--output", str(output)]) == 0
        outputs.append(json.loads(output.read_text()))
    assert (image_run / FINE_TUNE_FILE).is_file()
    assert main(["report", str(image_run), "--map", "pca"]) == 0
    rows = fine_tuning_report_rows(image_run)
    assert len(rows) == 2
    page = (image_run / "report.html").read_text()
    assert "<h2>Fine-tuning</h2>" in page
    for cells, result in zip(rows, outputs):
        expected = reported_figures(result)
        assert cells[0] == str(result["labels"]) and cells[1] == "dev" and cells[2:6] == expected
        assert all(f"<td>{value}</td>" in page for value in expected)
