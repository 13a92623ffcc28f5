"""Image data in the formats people have: a CSV/Parquet list of paths, a Hugging Face save_to_disk
folder, webdataset tar shards, TIFF and multi-band arrays at any depth, and --skip-unreadable.

Each format is checked against a second reading of the same images: the class-folder layout read
by the image-folder reader, PIL's own decoding, or the per-channel scaling computed here by hand."""

from __future__ import annotations

import io
import json
import tarfile
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from contrastkit.core.errors import DataError
from contrastkit.modalities.image.sources import open_image_source, read_image_folder
from contrastkit.modalities.image.sources.pixels import PERCENTILE_RANGE, scale_to_uint8
from contrastkit.modalities.image.sources.shards import ShardFolder

CLASSES = ("cat", "dog", "owl")


def _rgb(seed: int, h: int = 6, w: int = 5) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def _png_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture()
def photos(tmp_path) -> tuple[Path, list[tuple[str, str, np.ndarray]]]:
    """A class folder of 9 PNGs, and its (relative path, class, pixels) in sorted order."""
    root = tmp_path / "photos"
    entries = []
    for k in range(9):
        name, array = f"{CLASSES[k % 3]}/img{k}.png", _rgb(k)
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(array).save(root / name)
        entries.append((name, CLASSES[k % 3], array))
    return root, sorted(entries)


def _same(a, b):
    assert torch.equal(a.images, b.images)
    assert (a.labels is None and b.labels is None) or torch.equal(a.labels, b.labels)
    assert a.class_names == b.class_names


# ---------------------------------------------------------------------------------------------
# CSV / Parquet lists


def test_csv_list_reads_what_the_class_folder_holds(photos, tmp_path):
    root, entries = photos
    table = tmp_path / "lists" / "images.csv"
    table.parent.mkdir()
    # Relative to the table's folder for some rows, absolute for others; a header in other case.
    lines = ["File,Class"] + [f"{'../photos/' + name if k % 2 else (root / name).resolve()},{cls}"
                               for k, (name, cls, _) in enumerate(entries)]
    table.write_text("\n".join(lines) + "\n")
    from_csv = open_image_source(table)
    _same(from_csv, read_image_folder(root))
    assert from_csv.class_names == list(CLASSES) and from_csv.name == "images"


def test_parquet_list_with_integer_labels(photos, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    root, entries = photos
    ids = [CLASSES.index(cls) for _, cls, _ in entries]
    pq.write_table(pa.table({"path": [str(root / n) for n, _, _ in entries], "label": ids}), tmp_path / "l.parquet")
    source = open_image_source(tmp_path / "l.parquet")
    assert np.array_equal(source.images.numpy(), np.stack([a for _, _, a in entries]).transpose(0, 3, 1, 2))
    assert source.labels.tolist() == ids and source.class_names is None

    pq.write_table(pa.table({"image": [str(root / n) for n, _, _ in entries]}), tmp_path / "unlabelled.parquet")
    assert not open_image_source(tmp_path / "unlabelled.parquet").has_labels


def test_csv_errors_name_the_columns_and_rows(photos, tmp_path):
    root, entries = photos
    (tmp_path / "cols.csv").write_text("name,y\na.png,1\n")
    with pytest.raises(DataError, match=r"'name', 'y'.*path, image, file"):
        open_image_source(tmp_path / "cols.csv")
    (tmp_path / "gap.csv").write_text(f"path,label\n{root / entries[0][0]},cat\n{root / entries[1][0]},\n")
    with pytest.raises(DataError, match="row 2 has no label"):
        open_image_source(tmp_path / "gap.csv")
    (tmp_path / "missing.csv").write_text("path\nnot-there.png\n")
    with pytest.raises(DataError, match="not-there.png"):
        open_image_source(tmp_path / "missing.csv")


# ---------------------------------------------------------------------------------------------
# Hugging Face save_to_disk folders (written here as `datasets` lays them out, with pyarrow)


def _save_to_disk_layout(folder: Path, images: list[dict], labels: list[int], names: list[str], files: int = 2):
    """data-0000k-of-0000K.arrow Arrow IPC streams + dataset_info.json + state.json, the layout of
    ``datasets.Dataset.save_to_disk`` for features {image: Image(), label: ClassLabel(names)}."""
    import pyarrow as pa

    folder.mkdir(parents=True)
    features = {"image": {"_type": "Image"}, "label": {"names": names, "_type": "ClassLabel"}}
    schema = pa.schema([("image", pa.struct([("bytes", pa.binary()), ("path", pa.string())])),
                        ("label", pa.int64())],
                       metadata={"huggingface": json.dumps({"info": {"features": features}})})
    bounds = np.linspace(0, len(images), files + 1).astype(int)
    data_files = []
    for k in range(files):
        name = f"data-{k:05d}-of-{files:05d}.arrow"
        rows = slice(bounds[k], bounds[k + 1])
        batch = pa.record_batch([pa.array(images[rows], type=schema.field("image").type),
                                 pa.array(labels[rows], type=pa.int64())], schema=schema)
        with pa.OSFile(str(folder / name), "wb") as sink, pa.ipc.new_stream(sink, schema) as writer:
            writer.write_batch(batch)
        data_files.append({"filename": name})
    (folder / "dataset_info.json").write_text(json.dumps({"features": features, "citation": "", "description": ""}))
    (folder / "state.json").write_text(json.dumps({"_data_files": data_files, "_fingerprint": "0", "_split": "train",
                                                   "_format_type": None, "_output_all_columns": False}))


def test_hf_save_to_disk_folder_equals_the_class_folder(photos, tmp_path):
    root, entries = photos
    images = [{"bytes": _png_bytes(a), "path": name} if k % 3 else {"bytes": None, "path": str(root / name)}
              for k, (name, _, a) in enumerate(entries)]  # bytes for most, a file path for some
    labels = [CLASSES.index(cls) for _, cls, _ in entries]
    _save_to_disk_layout(tmp_path / "hf" / "train", images, labels, list(CLASSES))
    source = open_image_source(tmp_path / "hf" / "train")
    _same(source, read_image_folder(root))

    (tmp_path / "hf" / "dataset_dict.json").write_text(json.dumps({"splits": ["train"]}))
    with pytest.raises(DataError, match="DatasetDict.*train"):
        open_image_source(tmp_path / "hf")


def test_hf_folder_read_back_by_pyarrow_matches_what_was_written(tmp_path):
    """The fixture itself: pyarrow reads the streams back to the rows that were written."""
    import pyarrow as pa

    images = [{"bytes": _png_bytes(_rgb(k)), "path": f"{k}.png"} for k in range(4)]
    _save_to_disk_layout(tmp_path / "hf", images, [0, 1, 0, 1], ["a", "b"])
    rows = []
    for file in sorted((tmp_path / "hf").glob("data-*.arrow")):
        with pa.memory_map(str(file)) as source:
            rows += pa.ipc.open_stream(source).read_all().to_pylist()
    assert [r["image"] for r in rows] == images and [r["label"] for r in rows] == [0, 1, 0, 1]


# ---------------------------------------------------------------------------------------------
# webdataset tar shards


def _write_tar(path: Path, members: dict[str, bytes]):
    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def _tar_shards(folder: Path, entries, per_shard: int = 4, corrupt: str | None = None) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    shards = []
    for start in range(0, len(entries), per_shard):
        members = {}
        for k, (name, cls, array) in enumerate(entries[start : start + per_shard], start):
            key = name.removesuffix(".png")
            members[f"{key}.png"] = b"not a png" if name == corrupt else _png_bytes(array)
            if k % 2:
                members[f"{key}.cls"] = cls.encode()
            else:
                members[f"{key}.json"] = json.dumps({"class": cls, "source": "test"}).encode()
        shards.append(folder / f"train-{start // per_shard:03d}.tar")
        _write_tar(shards[-1], members)
    return shards


def test_tar_shards_by_folder_glob_and_braces_equal_the_class_folder(photos, tmp_path):
    root, entries = photos
    _tar_shards(tmp_path / "wds", entries)  # 3 shards: 4 + 4 + 1 samples
    expected = read_image_folder(root)
    for spec in (tmp_path / "wds", f"{tmp_path}/wds/*.tar", f"{tmp_path}/wds/train-{{000..002}}.tar"):
        _same(open_image_source(spec), expected)
    first_two = open_image_source(f"{tmp_path}/wds/train-{{000,001}}.tar")
    assert torch.equal(first_two.images, expected.images[:8])


def test_tar_shards_convert_to_streamed_shards(photos, tmp_path):
    root, entries = photos
    _tar_shards(tmp_path / "wds", entries)
    from contrastkit.cli import main

    assert main(["shard", "--data", str(tmp_path / "wds"), "--out", str(tmp_path / "streamed"),
                 "--shard-size", "4"]) == 0
    folder = ShardFolder(tmp_path / "streamed")
    expected = read_image_folder(root)
    assert np.array_equal(folder.read(np.arange(len(folder))), expected.images.numpy())
    assert np.array_equal(np.asarray(folder.labels), expected.labels.numpy())
    assert folder.index["class_names"] == list(CLASSES)


# ---------------------------------------------------------------------------------------------
# 16-bit, float and multi-band images


def _by_hand(values: np.ndarray) -> np.ndarray:
    """The documented per-channel stretch, written out independently: percentiles by linear
    interpolation between sorted values, then round(255 * clip((v - lo) / (hi - lo), 0, 1))."""
    out = np.empty(values.shape, dtype=np.uint8)
    for c in range(values.shape[1]):
        ordered = np.sort(values[:, c].ravel()).astype(np.float64)

        def percentile(q):
            position = q / 100 * (len(ordered) - 1)
            below = int(np.floor(position))
            above = min(below + 1, len(ordered) - 1)
            return ordered[below] + (position - below) * (ordered[above] - ordered[below])

        low, high = percentile(PERCENTILE_RANGE[0]), percentile(PERCENTILE_RANGE[1])
        for index in np.ndindex(values[:, c].shape):
            v = (float(values[:, c][index]) - low) / (high - low)
            out[:, c][index] = int(np.floor(min(max(v, 0.0), 1.0) * 255 + 0.5))
    return out


def _bands(n=6, c=5, h=7, w=8, seed=0) -> np.ndarray:
    """uint16 bands of very different ranges, with outliers beyond the percentiles."""
    rng = np.random.default_rng(seed)
    tops = np.array([65535, 4095, 300, 1000, 20000][:c]).reshape(1, c, 1, 1)
    x = (rng.random((n, c, h, w)) * tops).astype(np.uint16)
    x[0, :, 0, 0] = 0
    return x


def test_scale_to_uint8_is_the_documented_percentile_stretch():
    x = _bands()
    ours = scale_to_uint8(x, "test")
    # Rounding halves may differ between floor(v + 0.5) and numpy's rint (half to even): at most 1.
    hand = _by_hand(x)
    assert np.abs(ours.astype(int) - hand.astype(int)).max() <= 1 and (ours != hand).mean() < 0.01
    floats = scale_to_uint8(x.astype(np.float32) / 7 - 3, "floats")  # an affine map: same stretch
    assert np.abs(floats.astype(int) - ours.astype(int)).max() <= 1
    eight_bit = np.random.default_rng(1).integers(0, 256, (2, 4, 3, 3)).astype(np.uint16)
    assert np.array_equal(scale_to_uint8(eight_bit, "8-bit"), eight_bit.astype(np.uint8))  # kept as it is


def test_multiband_npy_npz_and_tiff_read_the_same(tmp_path):
    import tifffile

    x = _bands()
    np.save(tmp_path / "nhwc.npy", x.transpose(0, 2, 3, 1))
    np.savez(tmp_path / "nchw.npz", x=x, y=np.arange(6) % 2)
    # One page per image, 5 samples per pixel (contiguous): axes QYXS.
    tifffile.imwrite(tmp_path / "stack.tif", x.transpose(0, 2, 3, 1), planarconfig="contig", photometric="minisblack")
    # A folder of one TIFF per image (planar bands: axes SYX), in class folders.
    for k in range(6):
        (tmp_path / "tiffs" / f"c{k % 2}").mkdir(parents=True, exist_ok=True)
        tifffile.imwrite(tmp_path / "tiffs" / f"c{k % 2}" / f"{k}.tif", x[k], planarconfig="separate",
                         photometric="minisblack")
    expected = scale_to_uint8(x, "x")
    for name in ("nhwc.npy", "nchw.npz", "stack.tif"):
        source = open_image_source(tmp_path / name)
        assert source.images.shape == (6, 5, 7, 8) and np.array_equal(source.images.numpy(), expected), name
    folder = open_image_source(tmp_path / "tiffs")
    order = [0, 2, 4, 1, 3, 5]  # class c0 first, then c1
    assert np.array_equal(folder.images.numpy(), scale_to_uint8(x[order], "x"))
    assert folder.labels.tolist() == [0, 0, 0, 1, 1, 1]


def test_16_bit_multipage_tiff_written_by_pil(tmp_path):
    gray = _bands(n=3, c=1)[:, 0]
    pages = [Image.fromarray(page) for page in gray]  # mode I;16
    pages[0].save(tmp_path / "pages.tif", save_all=True, append_images=pages[1:])
    source = open_image_source(tmp_path / "pages.tif")
    assert source.images.shape == (3, 1, 7, 8)
    assert np.abs(source.images.numpy().astype(int) - _by_hand(gray[:, None]).astype(int)).max() <= 1


def test_ambiguous_band_axis_is_refused(tmp_path):
    np.save(tmp_path / "cube.npy", np.zeros((2, 6, 5, 6), np.uint16))
    with pytest.raises(DataError, match="ambiguous"):
        open_image_source(tmp_path / "cube.npy")


@pytest.mark.slow
def test_fit_trains_on_five_band_16_bit_images(tmp_path):
    from sklearn.datasets import load_digits

    from contrastkit.cli import main

    digits = load_digits()
    x = digits.images[:240]
    rng = np.random.default_rng(0)
    bands = np.stack([x * 4000, (16 - x) * 1000 + 500, rng.integers(0, 60000, x.shape), x * x * 100,
                      x[:, ::-1] * 10 + 3], axis=1).astype(np.uint16)
    np.savez(tmp_path / "multi.npz", x=bands, y=digits.target[:240])
    out = tmp_path / "run"
    assert main(["fit", "--data", str(tmp_path / "multi.npz"), "--epochs", "1", "--batch-size", "64",
                 "--width", "0.25", "--no-report", "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_samples_evaluated"] == 240 and np.load(out / "embeddings.npy").shape[0] == 240
    from contrastkit.modalities.image.training.restore import load_method

    method, _, data = load_method(out / "checkpoints" / "last.ckpt")
    assert data.channels == 5 and len(data.mean) == 5


# ---------------------------------------------------------------------------------------------
# --skip-unreadable


def test_skip_unreadable_in_a_folder_a_list_and_tar_shards(photos, tmp_path):
    root, entries = photos
    bad = entries[4][0]
    good = read_image_folder(root)
    keep = [k for k in range(len(entries)) if k != 4]
    (root / bad).write_bytes(_png_bytes(entries[4][2])[:40])  # truncated PNG
    table = tmp_path / "list.csv"
    table.write_text("path,label\n" + "".join(f"{root / n},{c}\n" for n, c, _ in entries))
    _tar_shards(tmp_path / "wds", entries, corrupt=bad)
    for spec in (root, table, tmp_path / "wds"):
        with pytest.raises(DataError, match=r"img4\.png"):
            open_image_source(spec)  # stopping stays the default
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            source = open_image_source(spec, skip_unreadable=True)
        assert torch.equal(source.images, good.images[keep]) and torch.equal(source.labels, good.labels[keep])
        assert len(source.skipped) == 1 and "img4.png" in source.skipped[0]
        assert any("Skipped 1 unreadable" in str(w.message) for w in caught), spec


def test_fit_with_skip_unreadable_reports_the_files_in_the_run_folder(tmp_path):
    from sklearn.datasets import load_digits

    from contrastkit.cli import main

    digits = load_digits()
    lines = ["path,label"]
    for k in range(120):
        Image.fromarray((digits.images[k] * 15).astype(np.uint8)).save(tmp_path / f"{k}.png")
        lines.append(f"{k}.png,{digits.target[k]}")
    (tmp_path / "7.png").write_bytes(b"\x89PNG broken")
    (tmp_path / "set.csv").write_text("\n".join(lines) + "\n")
    out = tmp_path / "run"
    with pytest.warns(UserWarning, match="Skipped 1 unreadable"):
        assert main(["fit", "--data", str(tmp_path / "set.csv"), "--skip-unreadable", "--epochs", "1",
                     "--batch-size", "32", "--width", "0.25", "--no-report", "--no-baselines", "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["unreadable_skipped"] == 1 and "7.png" in summary["unreadable_files"][0]
    assert summary["n_samples_evaluated"] == 119
