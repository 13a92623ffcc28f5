"""report.html: the self-contained run page. Its previews are checked against the images they
show (decoded back), its neighbours against a naive loop, its size at 2,000 points, and the page
itself in a real headless Chromium (no error, one point per mapped sample) where one is installed."""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from contrastkit.cli import main
from contrastkit.modalities.image.sources.images import open_image_source
from contrastkit.report.html import comparison_table, write_comparison_page, write_html_report
from contrastkit.report.svg import line_chart, nice_ticks
from tests.report.test_report import SUMMARY, make_run

CHROMIUM = next((shutil.which(name) for name in ("chromium", "chromium-browser", "google-chrome")
                 if shutil.which(name)), None)
requires_chromium = pytest.mark.skipif(CHROMIUM is None, reason="no Chromium on this machine (.ci/run installs "
                                                                "the system's package)")


def page_data(page: Path) -> dict:
    text = page.read_text()
    block = re.search(r'<script type="application/json" id="report-data">(.*?)</script>', text, re.S).group(1)
    return json.loads(block.replace("<\\/", "</"))


def image_run(tmp_path: Path, data: str, n_rows: int, seed: int = 0) -> Path:
    """An image run folder as fit writes it: config.yaml naming the data, rows.npy (which sample of
    the data each embedding row is: here a permutation), embeddings and labels in that order."""
    source = open_image_source(data)
    rng = np.random.default_rng(seed)
    data_rows = rng.permutation(len(source))[:n_rows]
    run = tmp_path / "image-run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "last.ckpt").write_bytes(b"")  # what marks an image run folder (loading.run_kind)
    (run / "config.yaml").write_text(yaml.safe_dump({"method": "simclr", "data": data, "image_size": None}))
    np.save(run / "rows.npy", data_rows)
    labels = source.labels.numpy()[data_rows] if source.labels is not None else np.zeros(n_rows, dtype=int)
    np.save(run / "labels.npy", labels)
    centres = rng.normal(size=(int(labels.max()) + 1, 8))
    np.save(run / "embeddings.npy", (centres[labels] + 0.5 * rng.normal(size=(n_rows, 8))).astype(np.float32))
    n_train = int(0.8 * n_rows)
    (run / "split.json").write_text(json.dumps({"train": [0, n_train], "holdout": [n_train, n_rows]}))
    return run


def decode(src: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))))


def test_each_point_previews_its_own_image(tmp_path):
    run = image_run(tmp_path, "digits", n_rows=300)
    page = write_html_report(run, max_points=120)
    data = page_data(page)
    source = open_image_source("digits")
    data_rows = np.load(run / "rows.npy")
    assert len(data["points"]) == 120
    for _, _, _, preview, row in data["points"]:
        shown = decode(data["previews"][preview]["src"])
        np.testing.assert_array_equal(shown, source.images[data_rows[row], 0].numpy())  # 8x8: never resized
    labels = np.load(run / "labels.npy")
    assert [data["labels"][p[2]] for p in data["points"]] == [str(labels[p[4]]) for p in data["points"]]


def test_neighbour_gallery_equals_a_naive_cosine_ranking(tmp_path):
    run = image_run(tmp_path, "digits", n_rows=200)
    page = write_html_report(run, queries=3, neighbours=4)
    embeddings = np.load(run / "embeddings.npy").astype(np.float64)
    text = page.read_text()
    gallery = text[text.index("Nearest neighbours"):]
    rows = re.findall(r"<tr>(.*?)</tr>", gallery, re.S)
    assert len(rows) == 3
    for row in rows:
        shown = [int(r) for r in re.findall(r"<small>row (\d+)", row)]
        query, neighbours = shown[0], shown[1:]
        assert 160 <= query < 200  # drawn from the held-out part (split.json)
        cosines = []
        for other in range(len(embeddings)):  # the naive loop
            if other != query:
                a, b = embeddings[query], embeddings[other]
                cosines.append((-(a @ b) / np.sqrt((a @ a) * (b @ b)), other))
        assert neighbours == [other for _, other in sorted(cosines)[:4]]


def test_page_stays_under_10_mb_at_2000_noise_images(tmp_path):
    rng = np.random.default_rng(0)  # noise: the worst case for the thumbnails' compression
    np.savez(tmp_path / "noise.npz", x=rng.integers(0, 256, size=(2000, 3, 32, 32), dtype=np.uint8),
             y=rng.integers(0, 10, size=2000))
    run = image_run(tmp_path, str(tmp_path / "noise.npz"), n_rows=2000)
    page = write_html_report(run)
    assert len(page_data(page)["points"]) == 2000
    assert page.stat().st_size < 10 * 2**20, page.stat().st_size


def test_run_without_readable_data_still_gets_a_page(tmp_path):
    run = make_run(tmp_path)  # embeddings and labels, no config naming data
    page = write_html_report(run)
    data = page_data(page)
    assert len(data["points"]) == 240
    assert all(p["kind"] == "text" for p in data["previews"])
    assert "rows and labels are shown" in page.read_text()


def test_tables_show_the_summary(tmp_path):
    page = write_html_report(make_run(tmp_path)).read_text()
    learned = re.search(r"<tr><td>knn_top1</td><td>([^<]*)</td><td>([^<]*)</td><td>([^<]*)</td></tr>", page)
    assert learned.groups() == ("93.6", "40.1", "97.5")


def test_nice_ticks_are_round_and_cover_the_range():
    for low, high in [(0.0, 1.0), (-3.2, 17.9), (1e-4, 3e-4), (5.4, 6.1), (0, 1234)]:
        ticks = nice_ticks(low, high)
        steps = np.diff(ticks)
        np.testing.assert_allclose(steps, steps[0], rtol=1e-9)
        mantissa = steps[0] / 10 ** np.floor(np.log10(steps[0]))
        assert min(abs(mantissa - m) for m in (1, 2, 5, 10)) < 1e-9
        assert ticks[0] >= low - 1e-12 and ticks[0] - low < steps[0]
        assert ticks[-1] <= high + 1e-12 and high - ticks[-1] < steps[0]


def test_line_chart_draws_one_polyline_per_series():
    chart = line_chart([("a", [0, 1, 2], [1, 2, 3]), ("b", [0, 1], [float("nan"), 4]), ("c", [], [])], "t")
    assert chart.count("<polyline") == 1 and chart.count("<circle") == 1  # b has one finite point; c none


def test_compare_table_and_page(tmp_path):
    first = make_run(tmp_path)
    second_summary = dict(SUMMARY, method="byol", knn_top1=0.5)
    second = tmp_path / "second"
    second.mkdir()
    (second / "summary.json").write_text(json.dumps(second_summary))
    header, rows = comparison_table([first, second])
    assert header[:4] == ["run", "method", "data", "knn_top1 (%)"]
    assert [row[1] for row in rows] == ["simclr", "byol"]
    assert [row[3] for row in rows] == ["93.6", "50.0"]
    page = write_comparison_page([first, second], tmp_path / "compare.html").read_text()
    assert page.count("<polyline") >= 1  # the first run's loss curve; the second has no metrics.csv


def test_report_and_compare_commands(tmp_path, capsys):
    run = make_run(tmp_path)
    assert main(["report", str(run), "--map", "pca"]) == 0
    assert (run / "report.html").is_file() and (run / "report.md").is_file()
    assert main(["compare", str(run), str(tmp_path / "missing"), "--out", str(tmp_path / "c.html")]) == 2
    assert "does not exist" in " ".join(capsys.readouterr().err.split())


def chromium_dom(page: Path, screenshot: Path | None = None) -> str:
    base = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars"]
    if screenshot is not None:
        subprocess.run(base + ["--window-size=1100,2400", f"--screenshot={screenshot}", page.as_uri()],
                       capture_output=True, timeout=120, check=True)
    return subprocess.run(base + ["--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120,
                          check=True).stdout


@requires_chromium
def test_page_runs_in_chromium_without_errors(tmp_path):
    run = image_run(tmp_path, "digits", n_rows=500)
    page = write_html_report(run, max_points=400)
    dom = chromium_dom(page, screenshot=tmp_path / "report.png")
    assert re.search(r'<body[^>]*data-errors="0"', dom), re.search(r"<body[^>]*>", dom).group(0)
    points = re.search(r'<svg id="map"[^>]*data-points="(\d+)"', dom)
    assert points and int(points.group(1)) == 400
    assert dom.count("<circle") >= 400
    assert (tmp_path / "report.png").stat().st_size > 10_000


@requires_chromium
def test_chromium_check_sees_a_broken_page(tmp_path):
    """The check above can fail: the same page with an error in its script reports it."""
    run = image_run(tmp_path, "digits", n_rows=50)
    page = write_html_report(run)
    page.write_text(page.read_text().replace("const data = JSON.parse", "const data = JSON.parse(undefinedName) ||"
                                                                         " JSON.parse"))
    dom = chromium_dom(page)
    assert not re.search(r'<body[^>]*data-errors="0"', dom)
    assert re.search(r'<svg id="map"[^>]*data-points="0"', dom)


@pytest.mark.slow
def test_umap_map_keeps_the_classes_apart(tmp_path):
    """The UMAP map (umap-learn, ~20 s to import numba) keeps well-separated classes apart: a 1-NN
    classifier on the 2-D points, leave-one-out, agrees with the labels almost always; and the caller's torch
    thread count survives it."""
    pytest.importorskip("umap", reason="umap-learn (the report extra) is not installed")
    run = image_run(tmp_path, "digits", n_rows=300)
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        points = np.array([p[:3] for p in page_data(write_html_report(run, map_method="umap"))["points"]])
        # UMAP's numba kernels reset the OpenMP thread count torch shares; the report gives it back.
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(threads)
    xy, label = points[:, :2], points[:, 2]
    distance = ((xy[:, None] - xy[None]) ** 2).sum(-1)
    np.fill_diagonal(distance, np.inf)
    assert (label[distance.argmin(1)] == label).mean() > 0.9


def test_timeseries_points_preview_their_own_series(tmp_path):
    """A TS2Vec run's map shows each training series: the rows of train_embeddings.npy are the series
    the dev carve keeps, in order (carve_dev_split, read here independently of the page)."""
    pytest.importorskip("aeon", reason="aeon (the timeseries extra) is not installed")
    from contrastkit.modalities.timeseries.cli import carve_dev_split
    from contrastkit.modalities.timeseries.sources import open_timeseries_source

    run = tmp_path / "ts"
    assert main(["fit", "--method", "ts2vec", "--data", "GunPoint", "--max-steps", "2", "--out", str(run)]) == 0
    data = page_data(run / "report.html")
    train = open_timeseries_source("GunPoint", split="train")
    kept, _ = carve_dev_split(len(train), train.y)
    assert len(data["points"]) == len(kept)
    for _, _, label, preview, row in data["points"]:
        series = train.x[kept[row], 0]
        np.testing.assert_allclose(data["previews"][preview]["values"], series, atol=1e-5)
        assert data["labels"][label] == str(train.y[kept[row]])
