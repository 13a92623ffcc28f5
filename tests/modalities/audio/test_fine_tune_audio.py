"""Fine-tuning an audio run's encoder on FSDD clips, against second derivations: the rows against the
repetitions in the file names, a frozen encoder against a head trained by the same loop on the run's
own clip embeddings (embed_clips, one clip per batch), the parts that embed does not use left as they
were, and the test clips' labels read only with --split test (the test accuracies of the three cyclic
shifts of every test label sum to 1: each prediction matches exactly one of them)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from contrastkit.core.errors import ConfigError
from contrastkit.evaluation.fine_tune import balanced_labels
from contrastkit.evaluation.linear import linear_probe_accuracy
from tests.fine_tune_reference import fine_tuning_report_rows, hand_trained_head, reported_figures
from tests.conftest import data_path

DIGITS, SPEAKERS = (0, 1, 2), ("george", "jackson")
REPETITIONS = (0, 1, 5, 6, 10, 11, 12, 13)  # test (0-4), development (5-9) and training repetitions
N_LABELS = 12  # 4 per digit of the 24 training clips
OPTIONS = dict(epochs=4, lrs=(0.05,), batch_size=8, seed=0)


@pytest.fixture(scope="module")
def small_fsdd(tmp_path_factory):
    """48 FSDD recordings (3 digits x 2 speakers x 8 repetitions), named as FSDD names them."""
    source = data_path("fsdd") / "recordings"
    folder = tmp_path_factory.mktemp("fsdd-fine-tune") / "recordings"
    folder.mkdir()
    for digit in DIGITS:
        for speaker in SPEAKERS:
            for repetition in REPETITIONS:
                shutil.copy(source / f"{digit}_{speaker}_{repetition}.wav", folder)
    return folder.parent


@pytest.fixture(scope="module")
def audio_run(small_fsdd, tmp_path_factory):
    from contrastkit.cli import main

    out = tmp_path_factory.mktemp("audio-fine-tune") / "run"
    torch_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(["fit", "--method", "simclr", "--data", str(small_fsdd), "--max-steps", "2", "--width", "16",
                     "--depth", "2", "--batch-size", "8", "--out", str(out)]) == 0
    finally:
        torch.set_num_threads(torch_threads)
    return out


def clips_of(folder):
    from contrastkit.modalities.audio.sources import open_audio_folder

    return open_audio_folder(folder)


def repetition_of(clips) -> np.ndarray:
    return np.array([int(path.rsplit("_", 1)[1].removesuffix(".wav")) for path in clips.paths])


def test_rows_are_the_splits_parts_balanced_and_fixed_by_seed(small_fsdd):
    from contrastkit.modalities.audio.cli import DEFAULTS
    from contrastkit.modalities.audio.fine_tune import clip_rows

    clips = clips_of(small_fsdd)
    repetition = repetition_of(clips)
    options = {**DEFAULTS, "data": str(small_fsdd)}
    candidates, dev, test = clip_rows(clips, options, "dev")
    assert test is None  # the test part is not even located without --split test
    np.testing.assert_array_equal(candidates, np.flatnonzero(repetition >= 10))
    np.testing.assert_array_equal(dev, np.flatnonzero((repetition >= 5) & (repetition <= 9)))
    _, _, test = clip_rows(clips, options, "test")
    np.testing.assert_array_equal(test, np.flatnonzero(repetition <= 4))
    labelled = balanced_labels(clips.labels, candidates, N_LABELS, seed=1)
    assert np.bincount(clips.labels[labelled]).tolist() == [N_LABELS // 3] * 3
    assert not set(labelled) & set(dev) and not (set(labelled) | set(dev)) & set(test)
    np.testing.assert_array_equal(labelled, balanced_labels(clips.labels, candidates, N_LABELS, seed=1))
    assert not np.array_equal(labelled, balanced_labels(clips.labels, candidates, N_LABELS, seed=2))


def test_a_folder_without_fsdds_split_has_no_test_part(tmp_path):
    from contrastkit.modalities.audio.cli import DEFAULTS
    from contrastkit.modalities.audio.fine_tune import clip_rows
    from contrastkit.modalities.audio.sources import AudioClips

    clips = AudioClips(np.zeros(40, np.float32), np.arange(0, 41, 2), 8000, [f"{i}.wav" for i in range(20)],
                       labels=np.arange(20) % 2)
    candidates, dev, _ = clip_rows(clips, {**DEFAULTS, "data": "clips/"}, "dev")
    assert len(dev) == 6 and not set(candidates) & set(dev)  # the run's stratified 30% carve
    with pytest.raises(ConfigError, match="no test part"):
        clip_rows(clips, {**DEFAULTS, "data": "clips/"}, "test")


def test_a_clips_features_are_its_embedding_alone_whatever_its_batch(audio_run, small_fsdd, one_torch_thread):
    import contrastkit
    from contrastkit.modalities.audio.fine_tune import ClipFeatures, frozen_features
    from contrastkit.modalities.audio.training import embed_clips

    method = contrastkit.load(audio_run)
    clips = clips_of(small_fsdd)
    alone = embed_clips(method, clips, batch_size=1)  # the run's embedding path, no padding
    rows = np.random.default_rng(0).permutation(len(clips))
    features = frozen_features(method, ClipFeatures(clips), rows, len(clips))
    np.testing.assert_allclose(features, alone, rtol=0, atol=1e-5)
    # Why not one padded batch: the convolutions reach into the padding, and a clip's embedding
    # would then depend on the longest clip it was drawn with.
    padded = embed_clips(method, clips, batch_size=len(clips))
    assert np.abs(padded - alone).max() > 1e-3


def test_a_frozen_encoder_gives_the_head_trained_on_the_runs_clip_embeddings(audio_run, small_fsdd, one_torch_thread):
    import contrastkit
    from contrastkit.modalities.audio.fine_tune import fine_tune_audio_run
    from contrastkit.modalities.audio.training import embed_clips

    figures = fine_tune_audio_run(audio_run, N_LABELS, encoder_lr_scale=0.0, **OPTIONS)
    # Second derivation: the run's own embedding path (method.embed in eval mode, one clip per batch,
    # so no padding), then the same loop over a head alone.
    method = contrastkit.load(audio_run)
    clips = clips_of(small_fsdd)
    frozen = torch.from_numpy(embed_clips(method, clips, batch_size=1))
    repetition = repetition_of(clips)
    y = torch.from_numpy(clips.labels)
    labelled = balanced_labels(clips.labels, np.flatnonzero(repetition >= 10), N_LABELS, 0)
    dev = np.flatnonzero((repetition >= 5) & (repetition <= 9))
    dev_top1, _ = hand_trained_head(frozen, y, labelled, dev, 3, epochs=4, lr=0.05, batch_size=8)
    assert figures["method"] == "simclr" and figures["labels"] == N_LABELS and figures["n_scored"] == len(dev) == 12
    assert figures["fine_tune_dev_top1"] == pytest.approx(max(dev_top1))
    assert figures["chosen"]["epochs"] == int(np.argmax(dev_top1)) + 1
    assert figures["linear_top1"] == pytest.approx(
        linear_probe_accuracy(frozen[labelled].numpy(), clips.labels[labelled], frozen[dev].numpy(),
                              clips.labels[dev], 0))


def test_fine_tuning_trains_what_embed_uses_and_leaves_the_other_parts(audio_run, small_fsdd, one_torch_thread):
    import contrastkit
    from contrastkit.evaluation.fine_tune import fine_tune
    from contrastkit.modalities.audio.fine_tune import ClipFeatures

    method = contrastkit.load(audio_run)
    before = {name: p.detach().clone() for name, p in method.named_parameters()}
    clips = clips_of(small_fsdd)
    repetition = repetition_of(clips)
    result = fine_tune(method, ClipFeatures(clips), torch.arange(len(clips)), clips.labels,
                       np.flatnonzero(repetition >= 10), np.flatnonzero(repetition <= 9), num_classes=3,
                       feature_dim=16, epochs=1, lr=0.01, batch_size=8)
    tuned = dict(result.model.encoder.named_parameters())
    assert all(torch.equal(p, before[name]) for name, p in method.named_parameters())  # the run's method untouched
    changed = {name for name, p in tuned.items() if not torch.equal(p, before[name])}
    assert changed and all(name.startswith("encoder.") for name in changed)  # embed = frontend + encoder + mean
    assert {name for name in before if name.startswith("encoder.")} == changed
    assert any(name.startswith("projection") for name in before)  # the projection head was there, and kept


def test_the_test_labels_are_read_only_with_split_test(audio_run, monkeypatch, one_torch_thread):
    from contrastkit.modalities.audio import sources
    from contrastkit.modalities.audio.fine_tune import fine_tune_audio_run

    open_audio_folder = sources.open_audio_folder

    def shifting_test_labels_by(shift: int):
        def opened(*args, **kwargs):
            clips = open_audio_folder(*args, **kwargs)
            test = repetition_of(clips) <= 4
            clips.labels[test] = (clips.labels[test] + shift) % 3
            return clips
        return opened

    figures = {}
    for shift in range(3):
        monkeypatch.setattr(sources, "open_audio_folder", shifting_test_labels_by(shift))
        figures[shift] = {split: fine_tune_audio_run(audio_run, N_LABELS, split=split, **OPTIONS)
                          for split in ("dev", "test")}
    assert figures[1]["dev"] == figures[0]["dev"] == figures[2]["dev"]  # the dev figures never saw a test label
    assert figures[0]["test"]["n_scored"] == 12 and figures[0]["test"]["scored"].startswith("test")
    for key in ("knn_top1", "linear_top1", "fine_tune_top1"):  # scored with them, when asked: each prediction
        assert sum(figures[shift]["test"][key] for shift in range(3)) == pytest.approx(1.0)  # is one shift's label
    assert figures[0]["test"]["fine_tune_dev_top1"] == figures[0]["dev"]["fine_tune_top1"]  # chosen on dev alone


def test_evaluate_fine_tune_on_an_audio_run_is_kept_and_reported(audio_run, tmp_path, one_torch_thread):
    from contrastkit.cli import main

    output = tmp_path / "ft.json"
    assert main(["evaluate", "--fine-tune", "--run", str(audio_run), "--labels", str(N_LABELS), "--epochs", "2",
                 "--batch-size", "8", "--output", str(output)]) == 0
    figures = json.loads(output.read_text())
    assert figures["labels"] == N_LABELS and figures["n_scored"] == figures["dev_size"] == 12
    assert figures["scored"] == "dev" and figures["rows"] == "fsdd repetition split"
    assert json.loads((audio_run / "fine_tune.json").read_text())["results"][-1] == figures
    assert main(["report", str(audio_run), "--map", "pca"]) == 0
    cells = next(row for row in fine_tuning_report_rows(audio_run) if row[0] == str(N_LABELS))
    assert cells[1] == "dev" and cells[2:6] == reported_figures(figures)
