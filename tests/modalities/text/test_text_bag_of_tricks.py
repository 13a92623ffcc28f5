"""The GLUE bag of tricks (modalities/text/methods/bag_of_tricks.py, ``rtd-contrastive``) and MRPC pair classification.

- `contrastkit fit --modality text --method rtd-contrastive` trains a tiny BERT, switching phase at the step asked;
- the discriminator's labels are a naive token-by-token comparison of its input with the original tokens, and
  they differ only where the generator sampled;
- the step's loss equals L_MLM + 50 L_Disc (+ the InfoNCE in phase 2) recomputed by naive loops from the
  generator's and discriminator's logits;
- MRPC's files read as the PROVENANCE says; accuracy and F1 against a naive count.
"""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import torch

from contrastkit.core.errors import ConfigError
from tests.conftest import requires_minilm, requires_transformers

SENTENCES = ["A cat sits on the warm mat.", "Dogs bark loudly at the postman.", "It rains in Paris every spring.",
             "She reads a long book slowly.", "The market fell sharply on Monday.", "Kids play football after school."]


def small_method(**options):
    from contrastkit.modalities.text.encoders import small_random_encoder
    from contrastkit.modalities.text.methods import build_text_method

    options = {"generator_layers": 1, **options}
    return build_text_method("rtd-contrastive", small_random_encoder(max_length=16), **options)


class Recorder(torch.nn.Module):
    """Passes its objective's value through and keeps the inputs it was called with."""

    def __init__(self, objective):
        super().__init__()
        self.objective, self.calls = objective, []

    def forward(self, *args, **kwargs):
        self.calls.append((args, kwargs))
        return self.objective(*args, **kwargs)


def naive_cross_entropy(logits, targets) -> float:
    losses = [math.log(sum(math.exp(float(v)) for v in row)) - float(row[int(t)]) for row, t in zip(logits, targets)]
    return sum(losses) / len(losses)


def naive_binary_cross_entropy(logits, labels, mask) -> float:
    losses = []
    for i in range(logits.shape[0]):
        for t in range(logits.shape[1]):
            if mask[i, t]:
                p = 1 / (1 + math.exp(-float(logits[i, t])))
                losses.append(-math.log(p) if labels[i, t] else -math.log(1 - p))
    return sum(losses) / len(losses)


def naive_nt_xent(z_a, z_b, temperature) -> float:
    """SimCLR's NT-Xent anchor by anchor: each of the 2N embeddings against the 2N - 1 others, its other view
    the positive."""
    z = [v / float(v.norm()) for v in torch.cat([z_a, z_b]).double()]
    n, losses = len(z_a), []
    for k in range(2 * n):
        logits = {j: float(z[k] @ z[j]) / temperature for j in range(2 * n) if j != k}
        losses.append(math.log(sum(math.exp(v) for v in logits.values())) - logits[(k + n) % (2 * n)])
    return sum(losses) / len(losses)


@requires_transformers
@requires_minilm
def test_generator_shares_the_embeddings_and_phases_switch_at_the_step():
    method = small_method(phase_one_steps=2)
    transformer = method.encoder.transformer
    assert method.generator.embeddings is transformer.embeddings
    assert method.generator_head.decoder.weight is transformer.get_input_embeddings().weight
    assert len(method.generator.encoder.layer) == 1 and len(transformer.encoder.layer) == 2
    assert method.generator.encoder.layer[0] is not transformer.encoder.layer[0]  # a copy, trained apart
    phases = []
    for step in range(1, 4):
        phases.append(method.in_phase_two())
        method.after_optimizer_step(step, 10)
    assert phases == [False, False, True]
    halves = small_method()  # phase_one_steps None: half the planned steps
    halves.after_optimizer_step(4, 10)
    assert not halves.in_phase_two()
    halves.after_optimizer_step(5, 10)
    assert halves.in_phase_two()
    with pytest.raises(ConfigError, match="generator_layers"):
        small_method(generator_layers=3)
    with pytest.raises(ConfigError, match="phase_one_steps"):
        small_method(phase_one_steps=-1)


@requires_transformers
@requires_minilm
@pytest.mark.parametrize("phase", [1, 2])
def test_rtd_labels_and_the_loss_against_naive_loops(phase):
    from contrastkit.modalities.text.masked_lm import IGNORE_INDEX

    method = small_method(phase_one_steps=0 if phase == 2 else 100, contrastive_weight=0.5)
    method.mlm, method.rtd = Recorder(method.mlm), Recorder(method.rtd)
    method.contrastive = Recorder(method.contrastive)
    seen = []
    method.encoder.transformer.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(kwargs["input_ids"].clone()), with_kwargs=True)
    method.eval()  # no dropout: the pieces recomputed below are those of the step
    torch.manual_seed(0)
    loss, logs = method.training_loss({"texts": SENTENCES, "indices": torch.arange(6)})

    original = method.encoder.tokenize(SENTENCES)
    corrupted = seen[0]  # the discriminator's input
    (generator_logits,), mlm_inputs = method.mlm.calls[0]
    targets = mlm_inputs["targets"]
    _, rtd_inputs = method.rtd.calls[0]
    (rtd_logits,) = method.rtd.calls[0][0]
    naive_labels = torch.tensor([[float(corrupted[i, t] != original["input_ids"][i, t])
                                  for t in range(corrupted.shape[1])] for i in range(corrupted.shape[0])])
    assert torch.equal(rtd_inputs["replaced"], naive_labels)
    assert 0 < naive_labels.sum() <= len(targets)  # replaced tokens are among the masked ones
    # The generator's loss covers masked tokens only, whose targets are the original tokens there.
    assert (targets != IGNORE_INDEX).all() and set(targets.tolist()) <= set(original["input_ids"].flatten().tolist())

    expected = naive_cross_entropy(generator_logits.detach(), targets) + 50.0 * naive_binary_cross_entropy(
        rtd_logits.detach(), naive_labels, original["attention_mask"])
    if phase == 2:
        (z_corrupted, z_clean), _ = method.contrastive.calls[0]
        expected += 0.5 * naive_nt_xent(z_corrupted.detach(), z_clean.detach(), temperature=0.05)
        assert logs["phase"] == 2.0
    else:
        assert not method.contrastive.calls and logs["phase"] == 1.0
    assert loss.item() == pytest.approx(expected, rel=1e-5)


@requires_transformers
@requires_minilm
def test_fit_rtd_contrastive_from_the_command_line(tmp_path):
    from contrastkit.cli import main

    data = tmp_path / "sentences.txt"
    data.write_text("".join(f"{s} Number {i}.\n" for i in range(4) for s in SENTENCES))
    status = main(["fit", "--modality", "text", "--method", "rtd-contrastive", "--backbone", "random-small",
                   "--data", str(data), "--out", str(tmp_path / "run"), "--batch-size", "4", "--max-steps", "4",
                   "--max-length", "16", "--device", "cpu", "--log-every", "1",
                   "--option", "phase_one_steps=2", "--option", "generator_layers=1"])
    assert status == 0
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["steps"] == 4 and summary["method"] == "rtd-contrastive"
    with open(tmp_path / "run" / "metrics.csv") as handle:
        phases = [float(row["train/phase"]) for row in csv.DictReader(handle) if row.get("train/phase")]
    assert phases == [1.0, 1.0, 2.0, 2.0]
    state = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    method_state = next(v for v in state.values() if isinstance(v, dict) and any(k.endswith("completed_steps")
                                                                                 for k in v))
    assert int(next(v for k, v in method_state.items() if k.endswith("completed_steps"))) == 4
    assert (tmp_path / "run" / "encoder" / "config.json").is_file()


def test_mrpc_reader_and_binary_metrics(tmp_path):
    from contrastkit.modalities.text.pair_classifier import binary_metrics, choose_threshold, read_mrpc

    path = tmp_path / "mrpc.txt"
    path.write_text('1\t1\t2\tHe said "yes" today.\tHe agreed "today".\n0\t3\t4\tA b\tC d\n', encoding="utf-8-sig")
    pairs = read_mrpc(path)
    assert pairs.first == ['He said "yes" today.', "A b"] and pairs.labels.tolist() == [1, 0]
    generator = np.random.default_rng(0)
    probabilities, labels = generator.random(50), generator.integers(0, 2, 50)
    threshold = 0.4
    predicted = [p >= threshold for p in probabilities]
    tp = sum(p and y for p, y in zip(predicted, labels))
    fp = sum(p and not y for p, y in zip(predicted, labels))
    fn = sum(y and not p for p, y in zip(predicted, labels))
    metrics = binary_metrics(probabilities, labels, threshold)
    assert metrics["accuracy"] == pytest.approx(sum(p == y for p, y in zip(predicted, labels)) / 50)
    precision, recall = tp / (tp + fp), tp / (tp + fn)
    assert metrics["f1"] == pytest.approx(2 * precision * recall / (precision + recall))
    best = choose_threshold(probabilities, labels)
    assert binary_metrics(probabilities, labels, best)["accuracy"] == max(
        binary_metrics(probabilities, labels, t)["accuracy"] for t in [*probabilities, 2.0])


def test_mrpc_files_match_their_provenance():
    from contrastkit.core.paths import data_root
    from contrastkit.modalities.text.pair_classifier import MRPC_TEST, MRPC_TRAIN, read_mrpc

    folder = data_root() / "mrpc"
    if not (folder / MRPC_TRAIN).is_file():
        pytest.skip(f"MRPC is not in {folder}")
    train, test = read_mrpc(folder / MRPC_TRAIN), read_mrpc(folder / MRPC_TEST)
    assert (len(train), int(train.labels.sum())) == (4076, 2753)
    assert (len(test), int(test.labels.sum())) == (1725, 1147)


def _fit_small(run_dir, resume=False, crash_at_call=None):
    """6 steps of 4 sentences (3 per epoch), phase 2 from step 3, a checkpoint every 2 steps and at each epoch's
    end; ``crash_at_call`` raises in that call of training_loss (1-based)."""
    from contrastkit.modalities.text.data import SentenceData
    from contrastkit.modalities.text.train import fit_text

    from tests.resume_harness import crash_on_call

    method = small_method(phase_one_steps=3)
    crash_on_call(method, crash_at_call)
    lines = [f"{s} Number {i}." for i in range(2) for s in SENTENCES]
    return fit_text(method, SentenceData(lines), batch_size=4, lr=1e-3, max_steps=6, warmup_steps=1, seed=3,
                    out_dir=run_dir, log_every=1, resume=resume, checkpoint_every_steps=2)


@pytest.mark.slow
@requires_transformers
@requires_minilm
def test_a_stopped_run_resumes_to_the_uninterrupted_state_across_the_phase_switch(tmp_path):
    from tests.resume_harness import assert_same_training_state, load_checkpoint

    _fit_small(tmp_path / "whole")
    with pytest.raises(RuntimeError, match="simulated crash"):
        _fit_small(tmp_path / "broken", crash_at_call=4)  # the checkpoint of step 3 (the epoch's end) survives
    assert load_checkpoint(tmp_path / "broken")["global_step"] == 3  # the resumed run starts phase 2 from its buffers
    _fit_small(tmp_path / "broken", resume=True)
    assert_same_training_state(load_checkpoint(tmp_path / "whole"), load_checkpoint(tmp_path / "broken"))
