"""`contrastkit fit` on audio: each method writes the run folder; a run killed with SIGKILL resumes
to the uninterrupted run's weights; two processes train as one process on the concatenated batch."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess

import numpy as np
import pytest
import torch

from contrastkit.cli import main
from contrastkit.core.registry import METHODS
from contrastkit.fit_command import resolve_method
from tests.conftest import data_path
from tests.resume_harness import ENV, assert_fit_resumes_exactly, cli, load_checkpoint

REPETITIONS = (0, 5, 10, 11)  # test, development, and two training repetitions of every digit and speaker
SMALL = ["--width", "16", "--batch-size", "8", "--seed", "3"]


@pytest.fixture(scope="module")
def small_fsdd(tmp_path_factory):
    """240 FSDD recordings (10 digits x 6 speakers x 4 repetitions), named as FSDD names them."""
    source = data_path("fsdd") / "recordings"
    folder = tmp_path_factory.mktemp("fsdd-small") / "recordings"
    folder.mkdir()
    for path in sorted(source.glob("*.wav")):
        if int(path.stem.split("_")[2]) in REPETITIONS:
            shutil.copy(path, folder / path.name)
    return folder.parent


@pytest.mark.parametrize("method", ["simclr", "byol", "cpc", "wav2vec2", "hubert", "mae"])
def test_each_method_writes_the_run_folder(method, small_fsdd, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["fit", "--method", method, "--data", str(small_fsdd), "--max-steps", "2", *SMALL,
                 "--out", str(out)]) == 0, capsys.readouterr().err
    assert resolve_method(method, None, str(small_fsdd), None, False)[0].name == "audio"
    for name in ("config.yaml", "checkpoints/last.ckpt", "metrics.csv", "summary.json", "report.md", "split.json"):
        assert (out / name).is_file(), name
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 2 and summary["training_clips"] == 120 and summary["modality"] == "audio"
    assert summary["evaluation"]["scored_clips"] == 60  # repetition 5: the development part
    assert set(summary["evaluation"]) >= {"probe_accuracy", "probe_accuracy_10_per_class", "speaker_probe_accuracy"}
    embeddings = np.load(out / "embeddings.npy")
    assert embeddings.shape[0] == 240 and np.isfinite(embeddings).all()
    assert np.load(out / "labels.npy").shape == (240,)
    # split.json names the rows by the clips' repetitions (embeddings in file order): 10 and 11 train,
    # 5 (the development part) is scored, 0 (the test part) is neither.
    repetition = np.array([int(path.stem.split("_")[2]) for path in sorted((small_fsdd / "recordings").glob("*.wav"))])
    split = json.loads((out / "split.json").read_text())
    assert split["train"] == {"rows": np.flatnonzero(repetition >= 10).tolist()}
    assert split["holdout"] == {"rows": np.flatnonzero(repetition == 5).tolist()}
    assert split["held_out"] == "fsdd repetition split, dev part"


def test_resume_continues_the_audio_run_named_in_its_folder(small_fsdd, tmp_path, capsys):
    """`fit --out RUN --resume` alone: simclr is a method of images and of audio; the folder says audio."""
    out = tmp_path / "run"
    assert main(["fit", "--method", "simclr", "--data", str(small_fsdd), "--max-steps", "1", *SMALL,
                 "--out", str(out)]) == 0
    assert main(["fit", "--out", str(out), "--resume", "--max-steps", "2"]) == 0, capsys.readouterr().err
    assert load_checkpoint(out)["global_step"] == 2
    assert main(["fit", "--method", "simclr", "--data", str(small_fsdd), "--out", str(out)]) == 2  # never overwritten


def test_an_option_of_another_method_is_refused(small_fsdd, capsys):
    assert main(["fit", "--method", "cpc", "--data", str(small_fsdd), "--temperature", "0.1"]) == 2
    assert "--temperature does not apply" in " ".join(capsys.readouterr().err.split())
    assert "audio" in [entry.modality for entry in METHODS.entries("cpc")]


def test_hubert_second_iteration_clusters_the_first_runs_frames(small_fsdd, tmp_path, capsys):
    first, second = tmp_path / "first", tmp_path / "second"
    assert main(["fit", "--method", "hubert", "--data", str(small_fsdd), "--max-steps", "1", "--clusters", "8",
                 "--depth", "2", *SMALL, "--out", str(first)]) == 0, capsys.readouterr().err
    assert main(["fit", "--method", "hubert", "--data", str(small_fsdd), "--max-steps", "1", "--clusters", "8",
                 "--depth", "2", "--targets-from", str(first), "--target-layer", "1", *SMALL,
                 "--out", str(second)]) == 0, capsys.readouterr().err
    assert "targets_from: " + str(first.resolve()) in (second / "config.yaml").read_text()
    assert main(["fit", "--method", "hubert", "--data", str(small_fsdd), "--targets-from", str(first),
                 "--target-layer", "3", "--depth", "2", *SMALL, "--out", str(tmp_path / "bad")]) == 2
    assert "blocks 1..2" in capsys.readouterr().err
    assert main(["fit", "--method", "hubert", "--data", str(small_fsdd), "--mask-ratio", "0.5"]) == 2
    assert "--mask-ratio does not apply" in " ".join(capsys.readouterr().err.split())


def test_the_test_part_is_scored_only_when_named(small_fsdd, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["fit", "--method", "cpc", "--data", str(small_fsdd), "--max-steps", "1", "--split", "speaker",
                 "--eval-split", "test", *SMALL, "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["evaluation"]["scored_clips"] == 40 and "speaker_probe_accuracy" not in summary["evaluation"]
    assert "scoring the test split" in capsys.readouterr().err


@pytest.mark.slow
def test_a_byol_run_killed_with_sigkill_resumes_exactly(small_fsdd, tmp_path):
    """BYOL (its EMA target is part of the state compared) on 120 clips, 15 steps per epoch of 8,
    24 steps with a checkpoint every 4: killed after step 8 plus a random moment."""
    options = ["--method", "byol", "--data", str(small_fsdd), "--max-steps", "24", "--checkpoint-every-steps", "4",
               *SMALL]
    whole = assert_fit_resumes_exactly(tmp_path, options, kill_after_step=8, seed=1)
    assert any(k.startswith("method.target_encoder.") for k in load_checkpoint(whole)["state_dict"])
    np.testing.assert_array_equal(np.load(tmp_path / "killed" / "embeddings.npy"), np.load(whole / "embeddings.npy"))


@pytest.mark.slow
@pytest.mark.parametrize("method", ["wav2vec2", "hubert"])  # MAE's patch masks: the same step seeds, no state of its own
def test_a_masked_prediction_run_killed_with_sigkill_resumes_exactly(method, small_fsdd, tmp_path):
    """The masks, distractors and Gumbel noise of every step come from the step's seed, the Gumbel
    temperature is a buffer of the checkpoint, and HuBERT's k-means targets are fitted again (seeded)
    on resuming: 16 steps, a checkpoint every 4, killed after step 4 plus a random moment."""
    options = ["--method", method, "--data", str(small_fsdd), "--max-steps", "16", "--checkpoint-every-steps", "4",
               "--depth", "2", *SMALL]
    whole = assert_fit_resumes_exactly(tmp_path, options, kill_after_step=4, seed=2)
    np.testing.assert_array_equal(np.load(tmp_path / "killed" / "embeddings.npy"), np.load(whole / "embeddings.npy"))


@pytest.mark.slow
@pytest.mark.distributed
# HuBERT's and MAE's masks are drawn for the global batch from the step's seed by masking.py, as wav2vec2's are;
# their losses are per sample: the suite's time goes to the cases that couple the processes differently.
@pytest.mark.parametrize("method", ["simclr", "cpc", "wav2vec2"])
def test_two_processes_train_as_one_process_on_the_concatenated_batch(method, small_fsdd, tmp_path):
    """SimCLR (every view drawn for the global batch, mixing with clips of the other process,
    NT-Xent over both processes' views, the projection's BatchNorm over the global batch), CPC
    (negatives from both processes), and wav2vec2, HuBERT and MAE (masks, distractors and Gumbel
    noise drawn for the global batch; the codebook usage over both processes' frames; the key
    bias's noise gradient removed, encoders.freeze_key_bias): 2 processes of 8 clips equal 1 of 16."""
    env = {**ENV, "OMP_NUM_THREADS": "1"}
    options = ["--method", method, "--data", str(small_fsdd), "--max-steps", "3", "--width", "16", "--seed", "3"]

    def run(*extra: str, out: str) -> None:
        done = subprocess.run(cli("fit", *options, *extra, "--out", str(tmp_path / out)), env=env,
                              capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]

    run("--batch-size", "16", out="one")
    run("--batch-size", "8", "--devices", "2", "--strategy", "ddp", out="two")

    def losses(out: str) -> torch.Tensor:
        with open(tmp_path / out / "metrics.csv") as handle:
            return torch.tensor([float(r["train/loss"]) for r in csv.DictReader(handle) if r["train/loss"]])

    assert len(losses("one")) == 3
    torch.testing.assert_close(losses("two"), losses("one"), rtol=0, atol=1e-5)
    one, two = load_checkpoint(tmp_path / "one")["state_dict"], load_checkpoint(tmp_path / "two")["state_dict"]
    assert one.keys() == two.keys()
    for key in one:
        # AdamW divides each gradient element by its own running size, so an element whose gradient is near
        # rounding level (summed in another order over 2 processes) can step differently by up to ~lr/50
        # (seen: 1.8e-5 on one element of wav2vec2's FFN on one CPU); a wrong gradient moves whole tensors by
        # ~lr = 1e-3. So: every element within 1e-4, and each tensor within 1e-6 on average.
        torch.testing.assert_close(two[key], one[key], rtol=0, atol=1e-4, msg=key)
        if one[key].is_floating_point():
            assert float((two[key] - one[key]).abs().mean()) < 1e-6, key
    summary = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["global_batch_size"] == 16


def test_contrastkit_load_rebuilds_the_trained_method(small_fsdd, tmp_path):
    """The method `contrastkit.load` rebuilds embeds the clips as the run's embeddings.npy does."""
    import contrastkit
    from contrastkit.modalities.audio.sources import open_audio_folder
    from contrastkit.modalities.audio.training import embed_clips

    out = tmp_path / "run"
    assert main(["fit", "--method", "byol", "--data", str(small_fsdd), "--max-steps", "2", *SMALL,
                 "--out", str(out)]) == 0
    method = contrastkit.load(out)
    np.testing.assert_allclose(embed_clips(method, open_audio_folder(small_fsdd)), np.load(out / "embeddings.npy"),
                               rtol=0, atol=1e-5)
