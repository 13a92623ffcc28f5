"""`contrastkit pairs` on the engine: killed with SIGKILL and resumed (the final checkpoint equals
the uninterrupted run's, momentum encoders and queues included), two processes against one on the
concatenated batch, the run folder and its reloadable towers, and the option checks."""

from __future__ import annotations

import argparse
import json
import os
import subprocess

import pytest
import torch

from contrastkit.core.errors import ConfigError
from tests.conftest import data_path, requires_minilm, requires_transformers
from tests.resume_harness import assert_kill_and_resume_is_exact, cli, load_checkpoint, training_losses

# A small random text tower keeps a step at a fraction of a second; the rest is the real command.
TOWER = {"hidden_size": 32, "layers": 1, "heads": 2, "max_length": 64}
METHOD_OPTIONS = ["--max-length-first", "16", "--max-length-second", "32", "--momentum", "0.9",
                  "--queue-size", "16", "--in-modality-weight-first", "0.5", "--in-modality-weight-second", "0.25",
                  "--harmonize"]


def _tower(folder, dropout: bool = True):
    from contrastkit.modalities.text.encoders import small_random_encoder

    encoder = small_random_encoder(**TOWER)
    if not dropout:  # saved in config.json: the reloaded model is built without dropout
        encoder.transformer.config.hidden_dropout_prob = 0.0
        encoder.transformer.config.attention_probs_dropout_prob = 0.0
    encoder.save(folder)
    return folder


def _env() -> dict:
    # After conftest has set CONTRASTKIT_DATA; one thread per process on a shared machine.
    return {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}


def _losses(run_dir) -> list[float]:
    return [loss for _, loss in training_losses(run_dir)]


@requires_transformers
@requires_minilm
@pytest.mark.slow
def test_a_pairs_run_killed_between_step_checkpoints_resumes_exactly(tmp_path):
    """Dropout, soft augmentation, the momentum branch's EMA, its queues and the harmonizer's
    curriculum all depend on the step: the resumed run must end with the uninterrupted run's
    weights, buffers, optimiser and schedule, and log the same losses."""
    data_path("code-docstring")
    tower = _tower(tmp_path / "tower")
    command = ["pairs", "--data", "code-docstring", "--backbone", str(tower), "--max-steps", "24",
               "--checkpoint-every-steps", "3", "--batch-size", "8", "--augment-rate-first", "0.1",
               "--augment-rate-second", "0.15", "--curriculum-share", "0.25", "--seed", "3", *METHOD_OPTIONS]
    done = subprocess.run(cli(*command, "--out", str(tmp_path / "whole")), env=_env(), capture_output=True)
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    run_dir = tmp_path / "killed"
    assert_kill_and_resume_is_exact(cli(*command, "--out", str(run_dir)),
                                    cli("pairs", "--out", str(run_dir), "--resume"), run_dir, tmp_path / "whole",
                                    kill_after_step=6, seed=2, env=_env())
    state = load_checkpoint(run_dir)["state_dict"]
    assert int(state["method.model.momentum_branch.queue_a.filled"]) == 16
    assert _losses(run_dir) == _losses(tmp_path / "whole")
    assert json.loads((run_dir / "summary.json").read_text())["steps"] == 24


@requires_transformers
@requires_minilm
@pytest.mark.slow
@pytest.mark.distributed
def test_two_processes_equal_one_process_on_the_concatenated_batch(tmp_path):
    """2 gloo processes with 4 pairs each train like one process with 8: the cross-modal and the
    in-modality losses see the negatives of both processes (gathered with gradient), the queues
    hold the keys of both, and the harmonized gradients are averaged by DDP. Dropout is off and the
    views are not augmented (each process draws its own random numbers); the curriculum, which
    ranks each process's own samples, is off."""
    data_path("code-docstring")
    tower = _tower(tmp_path / "tower", dropout=False)
    common = ["pairs", "--data", "code-docstring", "--backbone", str(tower), "--max-steps", "4", "--seed", "5",
              "--lr", "1e-3", *METHOD_OPTIONS]

    def run(*extra: str, out: str) -> None:
        done = subprocess.run(cli(*common, *extra, "--out", str(tmp_path / out)), env=_env(), capture_output=True,
                              timeout=600)
        assert done.returncode == 0, done.stderr.decode()[-3000:]

    run("--batch-size", "8", out="single")
    run("--batch-size", "4", "--devices", "2", "--strategy", "ddp", out="ddp")
    single, ddp = tmp_path / "single", tmp_path / "ddp"
    assert len(_losses(single)) == len(_losses(ddp)) == 4
    torch.testing.assert_close(torch.tensor(_losses(ddp)), torch.tensor(_losses(single)), rtol=1e-4, atol=1e-5)
    a, b = load_checkpoint(single)["state_dict"], load_checkpoint(ddp)["state_dict"]
    assert a.keys() == b.keys() and "method.model.momentum_branch.queue_b.rows" in a
    for key in a:
        if a[key].is_floating_point():
            torch.testing.assert_close(b[key], a[key], rtol=1e-4, atol=1e-5, msg=key)
        else:
            assert torch.equal(a[key], b[key]), key
    assert json.loads((ddp / "summary.json").read_text())["world_size"] == 2


# -- the run folder, in process --------------------------------------------------------------

WORDS = ["sum", "quote", "parse", "open", "close", "sort", "merge", "split", "join", "read", "write", "find"]


def _arguments(tmp_path, *extra: str) -> argparse.Namespace:
    from contrastkit.modalities.pairs import cli as pairs_cli

    records = [{"doc": f"{w} the items", "code": f"def {w}(items):\n    return {w}_all(items)",
                "split": "valid" if i % 3 == 0 else "train"} for i, w in enumerate(WORDS)]
    (tmp_path / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    if not (tmp_path / "tower").is_dir():
        _tower(tmp_path / "tower")
    parser = argparse.ArgumentParser()
    pairs_cli.add_arguments(parser)
    return parser.parse_args([
        "--data", str(tmp_path / "pairs.jsonl"), "--first-field", "doc", "--second-field", "code",
        "--train-split", "train", "--eval-split", "valid", "--backbone", str(tmp_path / "tower"),
        "--batch-size", "4", *extra])


@requires_transformers
@requires_minilm
def test_the_run_folder_reloads_the_trained_towers_and_resume_keeps_the_options(tmp_path):
    from contrastkit.modalities.pairs import cli as pairs_cli
    from contrastkit.modalities.pairs import load_pairs_run
    from contrastkit.modalities.pairs.pairs import read_pairs
    from contrastkit.modalities.pairs.train import evaluate_pairs

    run_dir = tmp_path / "run"
    args = _arguments(tmp_path, "--max-steps", "3", "--separate-towers", "--embedding-dim", "16",
                      "--out", str(run_dir))
    assert pairs_cli.run(args) == 0
    for name in ("config.yaml", "checkpoints/last.ckpt", "metrics.csv", "summary.json", "report.md",
                 "plots/loss_curve.png", "tower_a/config.json", "tower_b/config.json", "heads.pt"):
        assert (run_dir / name).is_file(), name
    summary = json.loads((run_dir / "summary.json").read_text())
    # The towers reloaded from the folder score what the trained model scored.
    model, input_a, input_b = load_pairs_run(run_dir)
    evaluation = read_pairs(tmp_path / "pairs.jsonl", "doc", "code", split="valid")
    reloaded = evaluate_pairs(model, evaluation, input_a, input_b)
    for direction, metrics in summary["retrieval"].items():
        assert reloaded[direction] == pytest.approx(metrics, abs=1e-6), direction
    # --resume takes the saved options; one given with another value is refused.
    resume = _arguments(tmp_path, "--out", str(run_dir), "--resume", "--max-steps", "5")
    with pytest.raises(ConfigError, match="--max-steps is 3"):
        pairs_cli.run(resume)
    resume = argparse.Namespace(**{**vars(_arguments(tmp_path, "--out", str(run_dir), "--resume")), "data": None})
    assert pairs_cli.run(resume) == 0  # the run had finished: nothing more to train
    assert json.loads((run_dir / "summary.json").read_text())["steps"] == 3


@requires_transformers
@requires_minilm
@pytest.mark.parametrize("extra, message", [
    (["--augment-rate-second", "0.2"], "--augment-rate-second 0.2 augments"),
    (["--concentration", "2"], "needs --objective hcl"),
    ([], "--data is required"),
])
def test_options_without_effect_are_errors(tmp_path, extra, message):
    from contrastkit.modalities.pairs import cli as pairs_cli

    args = _arguments(tmp_path, "--out", str(tmp_path / "run"), *extra)
    if not extra:
        args.data = None
    with pytest.raises(ConfigError, match=message):
        pairs_cli.run(args)
    assert not (tmp_path / "run").exists()


def test_heads_train_at_head_lr_and_encoders_at_lr():
    from torch import nn

    from contrastkit.modalities.pairs.method import TwoTowerMethod
    from contrastkit.modalities.pairs.towers import TensorInput
    from contrastkit.modalities.pairs.two_tower import TwoTowerOptions, build_two_tower

    encoder = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 8))
    model = build_two_tower(encoder, None, TwoTowerOptions(momentum=0.9, queue_size=4), dim_a=8)
    groups = TwoTowerMethod(model, TensorInput(), TensorInput(), head_lr_scale=50.0).parameter_groups(0.01)
    encoder_ids = {id(p) for p in encoder.parameters()}
    for group in groups:
        in_encoder = {id(p) in encoder_ids for p in group["params"]}
        assert len(in_encoder) == 1
        assert group["lr_scale"] == (1.0 if in_encoder.pop() else 50.0)
        assert group["weight_decay"] == (0.01 if group["params"][0].ndim > 1 else 0.0)
    trained = [p for group in groups for p in group["params"]]
    assert len(trained) == len({id(p) for p in trained}) == sum(1 for p in model.parameters() if p.requires_grad)
    assert not any(p is q for p in trained for q in model.momentum_branch.parameters())
