"""`--data stream:PATH`: tar shards and Hugging Face save_to_disk folders read batch by batch.

Each streamed sample is checked against the in-memory reading of the same files (open_image_source);
the epoch order and its split over two processes against a hand-written loop over the per-shard
counts (the shard folder's contract); a fit from a stream against its resumed twin; the resident
memory while streaming against the size of the decoded set."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
import tarfile
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from contrastkit.core.errors import ConfigError, DataError
from contrastkit.modalities.image.config import FitConfig
from contrastkit.modalities.image.sources import open_image_source
from contrastkit.modalities.image.sources.streamed import count_blocks, open_streamed_images
from contrastkit.modalities.image.training.streamed_sources import StreamedSourceImages


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def _write_tar(path: Path, members: list[tuple[str, bytes]]) -> None:
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def _mixed_tars(folder: Path, counts=(5, 3, 6), corrupt: int | None = None) -> list[np.ndarray]:
    """Tar shards of RGB and gray PNGs of 7x6 with .cls or .json labels (a metadata-only sample and
    a directory among them); returns the pixels in sample order."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    pixels, k = [], 0
    for shard, count in enumerate(counts):
        members = [("meta-only.txt", b"not a sample")]
        for _ in range(count):
            array = rng.integers(0, 256, (7, 6, 3) if k % 3 else (7, 6), dtype=np.uint8)
            pixels.append(array)
            label = ["owl", "cat", "dog"][k % 3]
            members.append((f"s{shard}/x{k}.png", b"broken" if k == corrupt else _png(array)))
            members.append((f"s{shard}/x{k}.cls", label.encode()) if k % 2 else
                           (f"s{shard}/x{k}.json", json.dumps({"label": label}).encode()))
            k += 1
        _write_tar(folder / f"part-{shard:02d}.tar", members)
    return pixels


def _hf_folder(folder: Path, images: list[dict], labels: list[int], names: list[str], rows_per_batch: int = 3,
               files: int = 2) -> None:
    """A save_to_disk folder (Arrow IPC streams, several record batches per file), as `datasets` writes it."""
    import pyarrow as pa

    folder.mkdir(parents=True)
    features = {"image": {"_type": "Image"}, "label": {"names": names, "_type": "ClassLabel"}}
    schema = pa.schema([("image", pa.struct([("bytes", pa.binary()), ("path", pa.string())])),
                        ("caption", pa.string()), ("label", pa.int64())])
    bounds = np.linspace(0, len(images), files + 1).astype(int)
    data_files = []
    for k in range(files):
        name = f"data-{k:05d}-of-{files:05d}.arrow"
        with pa.OSFile(str(folder / name), "wb") as sink, pa.ipc.new_stream(sink, schema) as writer:
            for start in range(bounds[k], bounds[k + 1], rows_per_batch):
                rows = slice(start, min(start + rows_per_batch, bounds[k + 1]))
                writer.write_batch(pa.record_batch([
                    pa.array(images[rows], type=schema.field("image").type),
                    pa.array([f"caption {i}" for i in range(rows.start, rows.stop)]),
                    pa.array(labels[rows], type=pa.int64())], schema=schema))
        data_files.append({"filename": name})
    (folder / "dataset_info.json").write_text(json.dumps({"features": {**features, "caption": {"_type": "Value"}}}))
    (folder / "state.json").write_text(json.dumps({"_data_files": data_files}))


def _all(images) -> np.ndarray:
    return images.read(np.arange(len(images)))


# ---------------------------------------------------------------------------------------------
# streamed == in memory


@pytest.mark.parametrize("image_size", [None, 4])
def test_streamed_tar_shards_equal_the_in_memory_reading(tmp_path, image_size):
    pixels = _mixed_tars(tmp_path / "wds")
    for spec in (tmp_path / "wds", f"{tmp_path}/wds/part-{{00..02}}.tar", f"{tmp_path}/wds/*.tar"):
        eager = open_image_source(spec, image_size=image_size)
        streamed = open_streamed_images(spec, image_size=image_size)
        assert len(streamed) == len(eager) == 14 and streamed.image_shape == tuple(eager.images.shape[1:])
        assert streamed.counts.tolist() == [5, 3, 6]
        assert np.array_equal(_all(streamed), eager.images.numpy())
        assert np.array_equal(streamed.labels, eager.labels.numpy()) and streamed.class_names == eager.class_names
        backwards = np.arange(14)[::-1]  # a sample read alone, out of order, is the same sample
        assert np.array_equal(streamed.read(backwards), eager.images.numpy()[backwards])
    if image_size is None:  # the second derivation of the in-memory reading itself: PIL, gray repeated to RGB
        expected = np.stack([p if p.ndim == 3 else np.repeat(p[:, :, None], 3, axis=2) for p in pixels])
        assert np.array_equal(_all(streamed), expected.transpose(0, 3, 1, 2))


def test_gray_tar_shards_stream_as_one_channel_and_channels_can_be_forced(tmp_path):
    (tmp_path / "gray").mkdir()
    arrays = [np.full((5, 5), 10 * k, dtype=np.uint8) for k in range(4)]
    _write_tar(tmp_path / "gray" / "a.tar", [(f"{k}.png", _png(a)) for k, a in enumerate(arrays)])
    assert open_streamed_images(tmp_path / "gray").image_shape == (1, 5, 5)
    for channels in (1, 3):
        streamed = open_streamed_images(tmp_path / "gray", channels=channels)
        assert np.array_equal(_all(streamed), open_image_source(tmp_path / "gray", channels=channels).images.numpy())
        assert streamed.labels is None


def test_streamed_hf_folder_equals_the_in_memory_reading(tmp_path):
    rng = np.random.default_rng(1)
    arrays = [rng.integers(0, 256, (6, 6, 3), dtype=np.uint8) for _ in range(11)]
    (tmp_path / "files").mkdir()
    images = []
    for k, array in enumerate(arrays):
        if k % 4 == 0:  # some rows point at a file instead of holding the bytes
            Image.fromarray(array).save(tmp_path / "files" / f"{k}.png")
            images.append({"bytes": None, "path": str(tmp_path / "files" / f"{k}.png")})
        else:
            images.append({"bytes": _png(array), "path": f"{k}.png"})
    labels = [k % 3 for k in range(11)]
    _hf_folder(tmp_path / "hf", images, labels, ["a", "b", "c"])
    for image_size in (None, 5):
        eager = open_image_source(tmp_path / "hf", image_size=image_size)
        streamed = open_streamed_images(tmp_path / "hf", image_size=image_size)
        assert streamed.counts.tolist() == [5, 6]
        assert np.array_equal(_all(streamed), eager.images.numpy())
        assert np.array_equal(streamed.read([10, 0, 5]), eager.images.numpy()[[10, 0, 5]])
        assert streamed.labels.tolist() == eager.labels.tolist() == labels
        assert streamed.class_names == eager.class_names == ["a", "b", "c"]
    assert np.array_equal(_all(open_streamed_images(tmp_path / "hf")).transpose(0, 2, 3, 1), np.stack(arrays))


def test_skip_unreadable_leaves_out_the_same_samples_as_in_memory(tmp_path):
    _mixed_tars(tmp_path / "wds", corrupt=6)
    with pytest.raises(DataError, match=r"x6\.png"):
        open_image_source(tmp_path / "wds")  # the in-memory reading stops too
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        streamed = open_streamed_images(tmp_path / "wds", skip_unreadable=True)
        eager = open_image_source(tmp_path / "wds", skip_unreadable=True)
    assert len(streamed) == 13 and streamed.counts.tolist() == [5, 2, 6]
    assert np.array_equal(_all(streamed), eager.images.numpy()) and np.array_equal(streamed.labels, eager.labels)
    assert len(streamed.skipped) == 1 and "x6.png" in streamed.skipped[0]
    assert sum("Skipped 1 unreadable" in str(w.message) for w in caught) == 2
    # without it, a file whose header cannot be read stops the opening, naming it
    with pytest.raises(DataError, match=r"x6\.png"):
        open_streamed_images(tmp_path / "wds")


def test_refusals_say_what_to_do(tmp_path):
    from contrastkit.modalities.image.training.run import fit

    (tmp_path / "gz").mkdir()
    with tarfile.open(tmp_path / "gz" / "a.tar.gz", "w:gz") as tar:
        info = tarfile.TarInfo("0.png")
        data = _png(np.zeros((4, 4), dtype=np.uint8))
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    with pytest.raises(DataError, match="compressed"):
        open_streamed_images(tmp_path / "gz" / "a.tar.gz")
    np.save(tmp_path / "x.npy", np.zeros((4, 1, 4, 4), dtype=np.uint8))
    with pytest.raises(DataError, match="contrastkit shard"):
        open_streamed_images(tmp_path / "x.npy")
    with pytest.raises(ConfigError, match="names nothing"):
        fit(FitConfig(data="stream:", out=str(tmp_path / "run")))
    (tmp_path / "wide").mkdir()
    _write_tar(tmp_path / "wide" / "a.tar", [(f"{k}.png", _png(np.zeros((4, 6), dtype=np.uint8))) for k in range(8)])
    with pytest.raises(ConfigError, match="square"):
        fit(FitConfig(data=f"stream:{tmp_path / 'wide'}", batch_size=4, out=str(tmp_path / "run")))
    _write_tar(tmp_path / "wide" / "b.tar", [("0.png", _png(np.zeros((5, 5), dtype=np.uint8)))])
    with pytest.raises(DataError, match="differ in size"):
        open_streamed_images(tmp_path / "wide")  # found while indexing, not mid-epoch
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------------------------------------
# epoch order and processes: the shard folder's contract, from the per-shard counts


def _naive_epoch(counts: list[int], rows: np.ndarray, seed: int, epoch: int) -> list[int]:
    """Positions p of the training rows in epoch order, by hand: the shards in the order of a
    generator seeded by (seed, epoch), then the positions of each shard's rows in the next
    permutation's order (shards.py's module docstring)."""
    rng = np.random.default_rng((seed, epoch))
    starts = [sum(counts[:k]) for k in range(len(counts))]
    order = []
    for k in rng.permutation(len(counts)):
        members = [p for p, row in enumerate(rows) if starts[k] <= row < starts[k] + counts[k]]
        order += [members[i] for i in rng.permutation(len(members))]
    return order


def _batches(datamodule, rank=0, world_size=1, epoch=0) -> list[dict]:
    datamodule.trainer = SimpleNamespace(global_rank=rank, world_size=world_size)
    loader = datamodule.train_dataloader()
    loader.batch_sampler.set_epoch(epoch)
    return list(loader)


def test_epoch_order_and_two_rank_slices_follow_the_shard_contract(tmp_path):
    counts = [5, 3, 6, 2]
    _mixed_tars(tmp_path / "wds", counts=counts)
    images = open_streamed_images(tmp_path / "wds")
    eager = open_image_source(tmp_path / "wds")
    rows = np.array([0, 1, 3, 4, 5, 7, 8, 9, 10, 12, 13, 14, 15])  # a training part with holes
    assert [b.tolist() for b in count_blocks(rows, images.counts)] == [[0, 1, 2, 3], [4, 5], [6, 7, 8, 9, 10], [11, 12]]
    labels = eager.labels.numpy()[rows]
    for epoch in (0, 3):
        naive = _naive_epoch(counts, rows, seed=7, epoch=epoch)
        single = _batches(StreamedSourceImages(images, rows, labels, 4, seed=7), epoch=epoch)
        assert [p for b in single for p in b["index"].tolist()] == naive[:12]  # 3 global batches of 4
        for batch in single:
            assert torch.equal(batch["image"], eager.images[rows[batch["index"].numpy()]])
            assert torch.equal(batch["label"], eager.labels[rows[batch["index"].numpy()]])
        for rank in (0, 1):  # process r takes [2r, 2r + 2) of each global batch
            mine = _batches(StreamedSourceImages(images, rows, labels, 2, seed=7), rank, 2, epoch)
            assert [b["index"].tolist() for b in mine] == [naive[g * 4 + 2 * rank : g * 4 + 2 * rank + 2]
                                                          for g in range(3)]
    assert _naive_epoch(counts, rows, 7, 0) != _naive_epoch(counts, rows, 7, 1)
    in_memory_order = _batches(StreamedSourceImages(images, rows, labels, 4, seed=7, order="global"), epoch=1)
    expected = torch.randperm(len(rows), generator=torch.Generator().manual_seed(8))[:12]
    assert torch.equal(torch.cat([b["index"] for b in in_memory_order]), expected)


def test_loader_workers_read_the_same_batches(tmp_path):
    _mixed_tars(tmp_path / "wds")
    images = open_streamed_images(tmp_path / "wds")
    rows = np.arange(14)
    alone = _batches(StreamedSourceImages(images, rows, None, 3, seed=1), epoch=2)
    workers = _batches(StreamedSourceImages(images, rows, None, 3, seed=1, num_workers=2), epoch=2)
    assert len(alone) == len(workers) == 4
    assert all(torch.equal(a[key], b[key]) for a, b in zip(alone, workers) for key in a)


# ---------------------------------------------------------------------------------------------
# fit and embed from a stream


def _digit_tars(folder: Path, counts=(130, 150, 120)) -> Path:
    """The first 400 of scikit-learn's digits as gray 8x8 PNGs with .cls labels, in tar shards."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    folder.mkdir(parents=True)
    k = 0
    for shard, count in enumerate(counts):
        members = []
        for _ in range(count):
            members.append((f"{k:04d}.png", _png(np.rint(digits.images[k] * 255 / 16).astype(np.uint8))))
            members.append((f"{k:04d}.cls", str(digits.target[k]).encode()))
            k += 1
        _write_tar(folder / f"digits-{shard}.tar", members)
    return folder


QUICK = {"holdout": 0.2, "batch_size": 64, "width": 0.25, "epochs": 1, "report": False, "baselines": False,
         "probe_every": 1, "seed": 3}


@pytest.fixture(scope="module")
def stream_run(tmp_path_factory) -> tuple[Path, Path]:
    """(the digit tars, a one-epoch run streamed from them); the run may not decode the set into
    memory: the in-memory readers fail if it tries."""
    from contrastkit.modalities.image.sources import tar_shards
    from contrastkit.modalities.image.training import run_data
    from contrastkit.modalities.image.training.run import fit

    base = tmp_path_factory.mktemp("stream-fit")
    tars = _digit_tars(base / "digits")

    def refuse(*args, **kwargs):
        raise AssertionError("the streamed run decoded the whole set into an ImageSource")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(run_data, "open_image_source", refuse)
        patch.setattr(tar_shards, "decode_into_source", refuse)
        fit(FitConfig(data=f"stream:{tars}", out=str(base / "run"), **QUICK))
    return tars, base / "run"


def test_fit_streams_tar_shards_without_decoding_the_set(stream_run):
    tars, run = stream_run
    summary = json.loads((run / "summary.json").read_text())
    assert summary["data_format"] == "stream" and summary["n_samples_trained"] == 320
    assert summary["n_samples_evaluated"] == 400 and summary["n_test"] == 80
    with open(run / "metrics.csv") as handle:
        assert len([r for r in csv.DictReader(handle) if r.get("train/loss")]) == 5  # 320 // 64
    # what the run embedded is what its rows are: the in-memory reading of the tars
    rows = np.load(run / "rows.npy")
    assert sorted(rows.tolist()) == list(range(400))
    from contrastkit.modalities.image.training.restore import load_method

    method, _, data = load_method(run / "checkpoints" / "last.ckpt")
    eager = open_image_source(tars)
    train = json.loads((run / "split.json").read_text())
    assert data.channels == 1 and data.image_size == 8
    # the statistics: every training image was counted (fewer than STATS_SAMPLE_SIZE)
    train_rows = rows[: len(rows) - summary["n_test"]]
    assert (tuple(data.mean), tuple(data.std)) == eager.subset(np.sort(train_rows)).channel_mean_std()
    assert train is not None


def test_embed_streams_and_skips_unreadable_files(stream_run, tmp_path, capsys):
    from contrastkit.cli import main

    tars, run = stream_run
    checkpoint = str(run / "checkpoints" / "last.ckpt")
    assert main(["embed", "--checkpoint", checkpoint, "--data", str(tars), "--out", str(tmp_path / "memory.npy")]) == 0
    assert main(["embed", "--checkpoint", checkpoint, "--data", f"stream:{tars}", "--out",
                 str(tmp_path / "stream.npy")]) == 0
    memory = np.load(tmp_path / "memory.npy")
    assert memory.shape[0] == 400
    np.testing.assert_allclose(np.load(tmp_path / "stream.npy"), memory, rtol=0, atol=1e-6)
    assert np.array_equal(np.load(tmp_path / "stream.labels.npy"), np.load(tmp_path / "memory.labels.npy"))

    # a folder of PNGs with one corrupt file
    eager = open_image_source(tars)
    (tmp_path / "pngs").mkdir()
    for k in range(20):
        Image.fromarray(eager.images[k, 0].numpy()).save(tmp_path / "pngs" / f"{k:02d}.png")
    (tmp_path / "pngs" / "07.png").write_bytes(b"\x89PNG truncated")
    capsys.readouterr()
    assert main(["embed", "--checkpoint", checkpoint, "--data", str(tmp_path / "pngs"), "--out",
                 str(tmp_path / "bad.npy")]) != 0  # stopping stays the default
    assert "07.png" in capsys.readouterr().err
    with pytest.warns(UserWarning, match="Skipped 1 unreadable"):
        assert main(["embed", "--checkpoint", checkpoint, "--data", str(tmp_path / "pngs"), "--out",
                     str(tmp_path / "skip.npy"), "--skip-unreadable"]) == 0
    out = capsys.readouterr().out
    assert "Skipped 1 unreadable image(s)" in out
    kept = [k for k in range(20) if k != 7]
    np.testing.assert_allclose(np.load(tmp_path / "skip.npy"), memory[kept], rtol=0, atol=1e-5)
    assert "07.png" in (tmp_path / "skip.skipped.txt").read_text()


@pytest.mark.slow
def test_a_streamed_run_resumes_to_the_uninterrupted_weights(stream_run, tmp_path, monkeypatch):
    """As for shards:DIR (test_streaming_fit): a crash right after the first epoch's checkpoint,
    then --resume, gives the weights and losses of the run that was never stopped."""
    from contrastkit.engine import callbacks
    from contrastkit.modalities.image.training.run import fit
    from tests.resume_harness import crash_after_first_epoch_checkpoint

    tars, _ = stream_run
    config = FitConfig(data=f"stream:{tars}", **{**QUICK, "epochs": 2, "probe_every": 0})
    whole, broken = tmp_path / "whole", tmp_path / "broken"
    fit(FitConfig(**{**config.__dict__, "out": str(whole)}))
    save = crash_after_first_epoch_checkpoint(monkeypatch)
    with pytest.raises(RuntimeError, match="simulated crash"):
        fit(FitConfig(**{**config.__dict__, "out": str(broken)}))
    monkeypatch.setattr(callbacks.Checkpointing, "on_train_epoch_end", save)
    fit(FitConfig(**{**config.__dict__, "out": str(broken), "resume": True}))

    def state(run):
        return torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)["state_dict"]

    def losses(run):
        with open(run / "metrics.csv") as handle:
            return [float(r["train/loss"]) for r in csv.DictReader(handle) if r.get("train/loss")]

    a, b = state(whole), state(broken)
    assert a.keys() == b.keys() and all(torch.equal(a[key], b[key]) for key in a)
    assert losses(broken) == losses(whole) and len(losses(whole)) == 10


MEMORY_SCRIPT = r"""
import io, resource, sys, tarfile
from pathlib import Path
from types import SimpleNamespace
import numpy as np
from PIL import Image
from contrastkit.modalities.image.sources.streamed import open_streamed_images
from contrastkit.modalities.image.training.streamed_sources import StreamedSourceImages

root = Path(sys.argv[1])
n, side, per_tar = 12_000, 64, 3000   # decoded: 12,000 x 3 x 64 x 64 = 147 MB
if not root.exists():
    root.mkdir()
    for start in range(0, n, per_tar):
        with tarfile.open(root / f"{start // per_tar}.tar", "w") as tar:
            for k in range(start, start + per_tar):
                buffer = io.BytesIO()
                Image.new("RGB", (side, side), (k % 251, 0, 0)).save(buffer, format="PNG")
                info = tarfile.TarInfo(f"{k:05d}.png")
                info.size = buffer.tell()
                buffer.seek(0)
                tar.addfile(info, buffer)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
images = open_streamed_images(root)
data = StreamedSourceImages(images, np.arange(n), None, 256, seed=0)
data.trainer = SimpleNamespace(global_rank=0, world_size=1)
seen = 0
for batch in data.train_dataloader():
    assert (batch["image"][:, 0, 0, 0].numpy() == batch["index"].numpy() % 251).all()
    seen += len(batch["index"])
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(seen, (after - before) * 1024)
"""


@pytest.mark.slow
def test_resident_memory_stays_bounded_while_streaming(tmp_path):
    """Indexing and one epoch over 12,000 64x64 RGB images (147 MB decoded) raise the peak resident
    memory by less than 40 MB: the index and a batch, not the set."""
    done = subprocess.run([sys.executable, "-c", MEMORY_SCRIPT, str(tmp_path / "tars")], capture_output=True,
                          text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    seen, growth = map(int, done.stdout.split())
    assert seen == 12_000 // 256 * 256
    assert growth < 40e6, f"peak resident memory grew by {growth / 1e6:.1f} MB while streaming 147 MB of pixels"


# ---------------------------------------------------------------------------------------------
# a constant band


def test_a_constant_band_is_named_and_normalises_to_zero(tmp_path):
    """A blank band of a 16-bit multi-band set: the statistics warn naming the band and the set, and
    take its std as 1 (it would divide by 0); the other bands keep their figures."""
    rng = np.random.default_rng(0)
    bands = rng.integers(0, 60_000, size=(40, 3, 6, 6)).astype(np.uint16)
    bands[:, 1] = 1234  # the blank band
    np.save(tmp_path / "tiles.npy", bands)
    source = open_image_source(tmp_path / "tiles.npy")
    assert (source.images[:, 1] == 0).all()  # scale_to_uint8 maps a constant band to 0
    with pytest.warns(UserWarning, match=r"'tiles'.*channel 1 \(value 0\)"):
        mean, std = source.channel_mean_std()
    assert std[1] == 1.0 and mean[1] == 0.0
    for c in (0, 2):  # the others by hand: population std of the uint8 values, in [0, 1] units
        values = source.images[:, c].numpy().astype(np.float64) / 255
        assert mean[c] == pytest.approx(values.mean(), abs=1e-12) and std[c] == pytest.approx(values.std(), abs=1e-12)
    from contrastkit.modalities.image.views.image import Normalize

    Normalize(mean, std, 3)  # refused a std of 0 before
