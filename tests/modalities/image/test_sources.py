"""Image sources: real data sets against their published counts and statistics, readers against
independent decodings (numpy on the raw IDX bytes, PIL file by file), and every bad input
against the DataError that names it."""

from __future__ import annotations

import gzip
import shutil
import time

import numpy as np
import pytest
import torch
from PIL import Image

from contrastkit.core.errors import ConfigError, DataError
from contrastkit.evaluation.splits import stratified_split
from contrastkit.modalities.image.sources import (
    ImageSource,
    open_image_source,
    read_idx,
    read_image_folder,
    read_npz,
)
from contrastkit.modalities.image.sources import pixels as pixels_module
from contrastkit.modalities.image.sources.pixels import convert_channels, resize_images
from tests.conftest import DATA_ROOT, data_path

# From mnist-test/PROVENANCE.txt and cifar10-test/PROVENANCE.txt.
MNIST_TEST_CLASS_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
CIFAR10_CLASSES = [
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"
]
CIFAR10_TEST_MEAN = (0.4941, 0.4851, 0.4504)


# ---------------------------------------------------------------------------------------------
# Real data


@pytest.fixture(scope="module")
def cifar10():
    """CIFAR-10 test read once for the module (10,000 JPEG decodes)."""
    data_path("cifar10-test")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CONTRASTKIT_DATA", str(DATA_ROOT))
        start = time.perf_counter()
        source = open_image_source("cifar10-test")
        source.load_seconds = time.perf_counter() - start
    return source


def test_mnist_test_matches_provenance_and_raw_bytes(tmp_path):
    folder = data_path("mnist-test")
    source = open_image_source("mnist-test")
    assert len(source) == 10_000
    assert (source.channels, *source.image_size) == (1, 28, 28)
    assert source.images.dtype == torch.uint8 and source.images.is_contiguous()
    assert np.bincount(source.labels.numpy()).tolist() == MNIST_TEST_CLASS_COUNTS
    assert source.class_names == [str(k) for k in range(10)]

    # Second derivation: the documented layout (16-byte header, 8-byte header) read by hand.
    raw_images = gzip.decompress((folder / "t10k-images-idx3-ubyte.gz").read_bytes())
    raw_labels = gzip.decompress((folder / "t10k-labels-idx1-ubyte.gz").read_bytes())
    expected = np.frombuffer(raw_images, np.uint8, offset=16).reshape(10_000, 1, 28, 28)
    assert np.array_equal(source.images.numpy(), expected)
    assert np.array_equal(source.labels.numpy(), np.frombuffer(raw_labels, np.uint8, offset=8))

    # The same files un-gzipped read the same, through the folder and through the file path.
    (tmp_path / "t10k-images-idx3-ubyte").write_bytes(raw_images)
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(raw_labels)
    for spec in (tmp_path, tmp_path / "t10k-images-idx3-ubyte"):
        plain = open_image_source(spec)
        assert torch.equal(plain.images, source.images)
        assert torch.equal(plain.labels, source.labels)


def test_cifar10_test_counts_classes_and_mean(cifar10):
    assert len(cifar10) == 10_000
    assert (cifar10.channels, *cifar10.image_size) == (3, 32, 32)
    assert cifar10.class_names == CIFAR10_CLASSES == sorted(CIFAR10_CLASSES)
    assert np.bincount(cifar10.labels.numpy()).tolist() == [1000] * 10
    mean, std = cifar10.channel_mean_std()
    assert mean == pytest.approx(CIFAR10_TEST_MEAN, abs=1e-3)
    pixels = cifar10.images.numpy().astype(np.float64) / 255.0
    assert std == pytest.approx(tuple(pixels.std(axis=(0, 2, 3))), abs=1e-12)
    assert cifar10.load_seconds < 60, f"loading cifar10-test took {cifar10.load_seconds:.1f} s"


def test_cifar10_order_and_pixels_match_pil(cifar10):
    folder = data_path("cifar10-test")
    # Classes sorted, files sorted within a class: cat is class 3, so cat/0321.jpg is 3,321st.
    samples = [(0, "airplane/0000.jpg"), (1, "airplane/0001.jpg"), (3321, "cat/0321.jpg"),
               (9999, "truck/0999.jpg")]
    for position, file in samples:
        with Image.open(folder / file) as image:
            expected = np.asarray(image.convert("RGB")).transpose(2, 0, 1)
        item = cifar10[position]
        assert item["index"] == position
        assert item["label"] == CIFAR10_CLASSES.index(file.split("/")[0])
        assert np.array_equal(item["image"].numpy(), expected)


def test_digits_match_sklearn():
    from sklearn.datasets import load_digits

    digits = load_digits()
    source = open_image_source("digits")
    assert len(source) == 1797 and (source.channels, *source.image_size) == (1, 8, 8)
    assert np.array_equal(source.labels.numpy(), digits.target)
    assert int(source.images.max()) == 255
    # Inverse of the 255/16 scaling recovers sklearn's 0..16 values exactly.
    recovered = np.rint(source.images.numpy()[:, 0].astype(np.float64) * 16 / 255)
    assert np.array_equal(recovered, digits.images)
    assert source.name == "digits" and source.class_names == [str(k) for k in range(10)]


def test_digits_resized_and_to_rgb():
    source = open_image_source("digits", image_size=16, channels=3)
    assert source.images.shape == (1797, 3, 16, 16) and source.images.dtype == torch.uint8
    assert torch.equal(source.images[:, 0], source.images[:, 2])


# ---------------------------------------------------------------------------------------------
# npz


def _random_images(n=5, c=3, h=6, w=7, seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=(n, c, h, w), dtype=np.uint8)


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_npz_round_trip(tmp_path, layout):
    x = _random_images()
    y = np.array([0, 2, 1, 2, 0])
    stored = x if layout == "NCHW" else x.transpose(0, 2, 3, 1)
    np.savez(tmp_path / "set.npz", x=stored, y=y, class_names=np.array(["a", "b", "c"]))
    source = open_image_source(tmp_path / "set.npz")
    assert np.array_equal(source.images.numpy(), x)
    assert source.labels.tolist() == y.tolist()
    assert source.class_names == ["a", "b", "c"] and source.name == "set"


def test_npz_alpha_is_dropped(tmp_path):
    x = _random_images(c=4)
    np.savez(tmp_path / "rgba.npz", x=x.transpose(0, 2, 3, 1))
    assert np.array_equal(read_npz(tmp_path / "rgba.npz").images.numpy(), x[:, :3])


def test_npz_gray_and_float_pixels(tmp_path):
    x = _random_images(c=1)[:, 0]
    np.savez(tmp_path / "gray.npz", x=x)
    np.savez(tmp_path / "unit.npz", x=x / 255.0)
    np.savez(tmp_path / "float255.npz", x=x.astype(np.float32) + 0.2)
    for name in ("gray", "unit", "float255"):
        source = read_npz(tmp_path / f"{name}.npz")
        assert np.array_equal(source.images.numpy()[:, 0], x), name
        assert not source.has_labels and source[3]["label"] == -1


@pytest.mark.parametrize(
    ("arrays", "needle"),
    [
        ({"images": np.zeros((2, 4, 4), np.uint8)}, "images"),  # no x: names what is there
        ({"x": np.zeros((3, 4, 4), np.uint8), "y": np.zeros(2, np.int64)}, "(2,)"),
        ({"x": np.zeros((2, 4, 4, 3, 1), np.uint8)}, "(2, 4, 4, 3, 1)"),
        ({"x": np.zeros((2, 6, 5, 6), np.uint8)}, "(2, 6, 5, 6)"),  # channel axis ambiguous
        # (wider values are no longer errors: they are scaled per channel, test_sources_formats.py)
        ({"x": np.full((2, 4, 4), np.nan)}, "NaN"),
        ({"x": np.full((2, 4, 4), "a")}, "expected numbers"),
        ({"x": np.zeros((2, 4, 4), np.uint8), "y": np.array([0, -1])}, "-1"),
    ],
)
def test_npz_errors_name_the_problem(tmp_path, arrays, needle):
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(DataError, match="bad.npz") as err:
        open_image_source(tmp_path / "bad.npz")
    assert needle in str(err.value)


def test_npz_resize_agrees_with_pil(tmp_path):
    # A smooth image, so PIL's and torch's antialiased bilinear filters agree closely.
    yy, xx = np.mgrid[0:40, 0:48]
    x = np.stack([(yy * 5 + xx * 2) % 256, (xx * 4) % 256, 255 - yy * 3], axis=-1).astype(np.uint8)
    np.savez(tmp_path / "smooth.npz", x=x[None])
    source = open_image_source(tmp_path / "smooth.npz", image_size=(20, 12))
    assert source.images.shape == (1, 3, 20, 12)
    expected = np.asarray(Image.fromarray(x).resize((12, 20), Image.Resampling.BILINEAR))
    diff = np.abs(source.images[0].numpy().transpose(1, 2, 0).astype(int) - expected.astype(int))
    assert diff.max() <= 3 and diff.mean() < 1.0


# ---------------------------------------------------------------------------------------------
# Image folders


def _save(path, array, fmt=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, format=fmt)


def _rgb(h, w, seed):
    return np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def test_image_folder_mixed_sizes_need_and_obey_image_size(tmp_path):
    files = {"cat/b.png": _rgb(10, 12, 1), "cat/a.PNG": _rgb(20, 16, 2), "dog/x.bmp": _rgb(9, 9, 3)}
    for name, array in files.items():
        _save(tmp_path / name, array, fmt="PNG" if name.lower().endswith("png") else "BMP")
    (tmp_path / "PROVENANCE.txt").write_text("where these came from\n")

    with pytest.raises(DataError, match="--image-size") as err:
        read_image_folder(tmp_path)
    assert "a.PNG" in str(err.value) and "b.png" in str(err.value)

    source = open_image_source(tmp_path, image_size=(8, 6))  # (H, W), not square on purpose
    assert source.images.shape == (3, 3, 8, 6)
    assert source.class_names == ["cat", "dog"] and source.labels.tolist() == [0, 0, 1]
    for position, name in enumerate(["cat/a.PNG", "cat/b.png", "dog/x.bmp"]):
        expected = Image.fromarray(files[name]).resize((6, 8), Image.Resampling.BILINEAR)
        ours = source.images[position].numpy().transpose(1, 2, 0)
        assert np.array_equal(ours, np.asarray(expected))


def test_flat_folder_is_unlabeled_and_ignores_notes(tmp_path):
    arrays = [_rgb(5, 4, seed) for seed in range(3)]
    for i, array in enumerate(arrays):
        _save(tmp_path / f"img{i}.png", array)
    (tmp_path / ".DS_Store").write_bytes(b"\0\1junk")
    (tmp_path / "README.md").write_text("# notes\n")
    source = read_image_folder(tmp_path)
    assert len(source) == 3 and not source.has_labels and source.class_names is None
    item = source[2]
    assert (item["index"], item["label"]) == (2, -1)
    assert torch.equal(item["image"], source.images[2])
    assert np.array_equal(source.images.numpy(), np.stack(arrays).transpose(0, 3, 1, 2))


def test_folder_channels_gray_colour_and_forced(tmp_path):
    gray = np.random.default_rng(0).integers(0, 256, size=(6, 6), dtype=np.uint8)
    colour = _rgb(6, 6, 1)
    _save(tmp_path / "gray" / "a.png", gray)
    assert read_image_folder(tmp_path / "gray").channels == 1  # every image grayscale -> 1 channel

    _save(tmp_path / "mixed" / "a.png", gray)
    _save(tmp_path / "mixed" / "b.png", colour)
    mixed = read_image_folder(tmp_path / "mixed")
    assert mixed.channels == 3
    assert all(np.array_equal(mixed.images[0, c].numpy(), gray) for c in range(3))

    # 16-bit grayscale PNG: scaled to 8 bits, not clipped.
    wide = (gray.astype(np.uint16) * 257)  # v * 257 maps 0..255 onto 0..65535 exactly
    Image.fromarray(wide).save(tmp_path / "gray" / "b.png")
    assert torch.equal(read_image_folder(tmp_path / "gray").images[1, 0], torch.from_numpy(gray))

    forced = read_image_folder(tmp_path / "mixed", channels=1)
    expected = np.asarray(Image.fromarray(colour).convert("L"))
    assert forced.channels == 1 and np.array_equal(forced.images[1, 0].numpy(), expected)


def test_folder_threads_give_the_same_result(tmp_path):
    for i in range(300):
        _save(tmp_path / f"c{i % 3}" / f"{i:03d}.png", _rgb(4, 4, i))
    one = read_image_folder(tmp_path, num_threads=1)
    many = read_image_folder(tmp_path, num_threads=4)
    assert torch.equal(one.images, many.images) and torch.equal(one.labels, many.labels)


def _good_jpeg_bytes(tmp_path):
    _save(tmp_path / "tmp.jpg", _rgb(32, 32, 0), fmt="JPEG")
    data = (tmp_path / "tmp.jpg").read_bytes()
    (tmp_path / "tmp.jpg").unlink()
    return data


def test_image_folder_errors_name_the_file(tmp_path):
    jpeg = _good_jpeg_bytes(tmp_path)

    truncated = tmp_path / "truncated" / "cls"
    truncated.mkdir(parents=True)
    (truncated / "ok.jpg").write_bytes(jpeg)
    (truncated / "broken.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    with pytest.raises(DataError, match=r"broken\.jpg.*remove or replace it"):
        read_image_folder(tmp_path / "truncated")

    fake = tmp_path / "fake"
    fake.mkdir()
    (fake / "notes.jpeg").write_text("this is text, not a JPEG")
    with pytest.raises(DataError, match=r"notes\.jpeg"):
        read_image_folder(fake)

    stranger = tmp_path / "stranger"
    (stranger / "cls").mkdir(parents=True)
    (stranger / "cls" / "a.jpg").write_bytes(jpeg)
    (stranger / "cls" / "labels.csv").write_text("a,1\n")
    with pytest.raises(DataError, match=r"labels\.csv.*move"):
        read_image_folder(stranger)

    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="empty"):
        open_image_source(tmp_path / "empty")

    hollow = tmp_path / "hollow"
    (hollow / "full").mkdir(parents=True)
    (hollow / "full" / "a.jpg").write_bytes(jpeg)
    (hollow / "nothing_here").mkdir()
    with pytest.raises(DataError, match="nothing_here"):
        read_image_folder(hollow)

    mixed = tmp_path / "mixed"
    (mixed / "cls").mkdir(parents=True)
    (mixed / "cls" / "a.jpg").write_bytes(jpeg)
    (mixed / "loose.jpg").write_bytes(jpeg)
    with pytest.raises(DataError, match=r"loose\.jpg.*cls"):
        read_image_folder(mixed)

    with pytest.raises(DataError, match="missing_folder"):
        read_image_folder(tmp_path / "missing_folder")


# ---------------------------------------------------------------------------------------------
# IDX


def _idx_bytes(array: np.ndarray, code: int) -> bytes:
    header = bytes([0, 0, code, array.ndim]) + np.array(array.shape, ">u4").tobytes()
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


def test_idx_plain_gzip_and_label_dtypes(tmp_path):
    images = _random_images(n=4, c=1, h=3, w=5)[:, 0]
    labels = np.array([3, 0, 7, 1], dtype=np.int32)
    (tmp_path / "a-images-idx3-ubyte").write_bytes(_idx_bytes(images, 0x08))
    # gzip detected by magic bytes, whatever the name says
    (tmp_path / "a-labels-idx1-ubyte").write_bytes(gzip.compress(_idx_bytes(labels, 0x0C)))
    source = read_idx(tmp_path / "a-images-idx3-ubyte", tmp_path / "a-labels-idx1-ubyte")
    assert np.array_equal(source.images.numpy()[:, 0], images)
    assert source.labels.tolist() == labels.tolist() and source.name == "a"
    found = open_image_source(tmp_path / "a-images-idx3-ubyte")  # labels found beside it
    assert torch.equal(found.labels, source.labels)


def test_idx_errors_name_the_file(tmp_path):
    images = _random_images(n=4, c=1, h=3, w=5)[:, 0]
    good = _idx_bytes(images, 0x08)

    (tmp_path / "short-images-idx3-ubyte").write_bytes(good[:-7])
    with pytest.raises(DataError, match=r"short-images-idx3-ubyte' is truncated.*\(4, 3, 5\)"):
        read_idx(tmp_path / "short-images-idx3-ubyte")

    (tmp_path / "shortgz-images-idx3-ubyte.gz").write_bytes(gzip.compress(good)[:-9])
    with pytest.raises(DataError, match="shortgz-images-idx3-ubyte.gz"):
        read_idx(tmp_path / "shortgz-images-idx3-ubyte.gz")

    (tmp_path / "magic.idx").write_bytes(b"\x12\x34" + good[2:])
    with pytest.raises(DataError, match=r"magic\.idx.*12 34"):
        read_idx(tmp_path / "magic.idx")

    (tmp_path / "ok-images-idx3-ubyte").write_bytes(good)
    (tmp_path / "few-labels").write_bytes(_idx_bytes(np.array([1, 2, 3], np.uint8), 0x08))
    with pytest.raises(DataError, match=r"few-labels' has 3 labels.*4 images"):
        read_idx(tmp_path / "ok-images-idx3-ubyte", tmp_path / "few-labels")

    with pytest.raises(DataError, match="few-labels.*shape"):
        read_idx(tmp_path / "few-labels")  # a label file passed as images


def test_folder_with_two_idx_sets_asks_for_one(tmp_path):
    good = _idx_bytes(_random_images(n=2, c=1)[:, 0], 0x08)
    (tmp_path / "train-images-idx3-ubyte").write_bytes(good)
    (tmp_path / "t10k-images-idx3-ubyte").write_bytes(good)
    with pytest.raises(DataError, match="t10k-images-idx3-ubyte.*train-images-idx3-ubyte"):
        open_image_source(tmp_path)


# ---------------------------------------------------------------------------------------------
# Specs


def test_unknown_spec_lists_builtins_and_suggests(tmp_path):
    with pytest.raises(DataError, match="Did you mean: mnist-test") as err:
        open_image_source("mnist-tset")
    assert all(name in str(err.value) for name in ("digits", "cifar10-test", ".npz", "IDX"))
    with pytest.raises(DataError, match="no_such_thing"):
        open_image_source(tmp_path / "no_such_thing")
    (tmp_path / "table.csv").write_text("1,2\n")
    with pytest.raises(DataError, match=r"table\.csv"):
        open_image_source(tmp_path / "table.csv")


def test_builtin_missing_says_set_contrastkit_data(tmp_path, monkeypatch):
    monkeypatch.setenv("CONTRASTKIT_DATA", str(tmp_path))
    with pytest.raises(DataError, match="CONTRASTKIT_DATA") as err:
        open_image_source("cifar10-test")
    assert str(tmp_path) in str(err.value)


def test_bad_options_are_config_errors():
    with pytest.raises(ConfigError, match="channels"):
        open_image_source("digits", channels=2)
    with pytest.raises(ConfigError, match="image_size"):
        open_image_source("digits", image_size=0)


# ---------------------------------------------------------------------------------------------
# ImageSource


def test_channel_mean_std_chunked_equals_numpy(monkeypatch):
    images = torch.from_numpy(_random_images(n=23, c=3, h=5, w=4, seed=7))
    source = ImageSource(images)
    monkeypatch.setattr(pixels_module, "chunk_length", lambda images: 4)  # 6 uneven chunks
    mean, std = source.channel_mean_std()
    pixels = images.numpy().astype(np.float64) / 255
    assert mean == pytest.approx(tuple(pixels.mean(axis=(0, 2, 3))), abs=1e-14)
    assert std == pytest.approx(tuple(pixels.std(axis=(0, 2, 3))), abs=1e-14)


def test_subset_keeps_positions_within_subset_and_origin():
    images = torch.from_numpy(_random_images(n=10, c=1, h=2, w=2))
    source = ImageSource(images, torch.arange(10) % 3, ["a", "b", "c"], name="toy")
    first = source.subset([7, 2, 9, 4])
    second = first.subset(np.array([3, 0]))
    assert [first[i]["index"] for i in range(len(first))] == [0, 1, 2, 3]
    assert first.source_indices.tolist() == [7, 2, 9, 4]
    assert second.source_indices.tolist() == [4, 7]
    assert torch.equal(second.images, images[[4, 7]])
    assert second.labels.tolist() == [1, 1] and second.class_names == ["a", "b", "c"]
    with pytest.raises(DataError, match="10 images"):
        source.subset([10])


def test_image_source_batches_through_a_dataloader():
    source = ImageSource(torch.from_numpy(_random_images(n=6)), torch.arange(6))
    batch = next(iter(torch.utils.data.DataLoader(source, batch_size=4)))
    assert batch["image"].shape == (4, 3, 6, 7) and batch["index"].tolist() == [0, 1, 2, 3]
    assert batch["label"].tolist() == [0, 1, 2, 3]


def test_image_source_rejects_inconsistent_labels():
    images = torch.zeros(3, 1, 2, 2, dtype=torch.uint8)
    with pytest.raises(DataError, match="2 labels for 3 images"):
        ImageSource(images, torch.tensor([0, 1]))
    with pytest.raises(DataError, match="uint8"):
        ImageSource(images.float())


# ---------------------------------------------------------------------------------------------
# Pixel helpers


def test_rgb_to_gray_matches_pil():
    rgb = _rgb(16, 16, 5)
    ours = convert_channels(torch.from_numpy(rgb.transpose(2, 0, 1).copy())[None], 1)[0, 0].numpy()
    pil = np.asarray(Image.fromarray(rgb).convert("L"))
    assert np.abs(ours.astype(int) - pil.astype(int)).max() <= 1


def test_resize_is_chunk_invariant(monkeypatch):
    images = torch.from_numpy(_random_images(n=9, c=3, h=12, w=10))
    whole = resize_images(images, (5, 7))
    monkeypatch.setattr(pixels_module, "chunk_length", lambda images: 2)
    assert torch.equal(resize_images(images, (5, 7)), whole)


# ---------------------------------------------------------------------------------------------
# Splits


def _imbalanced_labels():
    counts = [50, 7, 2, 1, 13]
    labels = np.repeat(np.arange(len(counts)), counts)
    return np.random.default_rng(3).permutation(labels), counts


def test_stratified_split_is_disjoint_covering_and_stratified():
    labels, counts = _imbalanced_labels()
    train, test = stratified_split(labels, test_fraction=0.3, seed=11)
    assert np.intersect1d(train, test).size == 0
    assert np.array_equal(np.sort(np.concatenate([train, test])), np.arange(len(labels)))
    expected_test = [min(max(round(n * 0.3), 1), n - 1) if n >= 2 else 0 for n in counts]
    assert np.bincount(labels[test], minlength=5).tolist() == expected_test
    assert np.bincount(labels[train], minlength=5).tolist() == [
        n - t for n, t in zip(counts, expected_test)
    ]
    again = stratified_split(labels, 0.3, seed=11)
    assert np.array_equal(again[1], test)
    assert not np.array_equal(stratified_split(labels, 0.3, seed=12)[1], test)
    with pytest.raises(ConfigError, match="test_fraction"):
        stratified_split(labels, 1.0, seed=0)


def test_unzipped_mnist_copy_path_has_its_own_name(tmp_path):
    folder = data_path("mnist-test")
    shutil.copy(folder / "t10k-labels-idx1-ubyte.gz", tmp_path)
    shutil.copy(folder / "t10k-images-idx3-ubyte.gz", tmp_path)
    source = open_image_source(tmp_path)
    assert source.name == "t10k" and source.root == tmp_path / "t10k-images-idx3-ubyte.gz"
    assert len(source) == 10_000
