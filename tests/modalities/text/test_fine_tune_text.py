"""Fine-tuning a text encoder on labelled texts (WordNet definitions by supersense), against second
derivations: the layer-wise rates in closed form over BERT's layers, a frozen encoder against a head
trained by the same loop on TextEncoder.encode's features, and the test data never read unless asked."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from contrastkit.core.errors import DataError
from contrastkit.evaluation.fine_tune import balanced_labels, carve_development, layer_decay_groups
from contrastkit.evaluation.linear import linear_probe_accuracy
from tests.fine_tune_reference import hand_trained_head
from tests.conftest import data_path, requires_minilm

pytestmark = requires_minilm  # the tiny BERT borrows MiniLM's tokenizer (bundled, no download)

N_LABELS, DEV_SIZE = 26, 300  # 26 supersenses: one label each


def tiny_encoder():
    from contrastkit.modalities.text.encoders import small_random_encoder

    return small_random_encoder(hidden_size=32, layers=3, heads=2, max_length=32, seed=0)


@pytest.fixture(scope="module")
def task() -> Path:
    data_path("wordnet/synsets.tsv.gz")
    return Path(__file__).resolve().parents[3] / "benchmarks" / "text_tasks" / "wordnet-supersenses.yaml"


@pytest.fixture(scope="module")
def text_run(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("text-run")
    tiny_encoder().save(run / "encoder")  # the layout of a text run folder: encoder/
    return run


def test_layer_decay_over_the_bert_layers_is_the_closed_form():
    encoder = tiny_encoder()
    lr, decay, layers = 0.1, 0.5, 3
    rate = {id(p): g["lr"] for g in layer_decay_groups(encoder, lr, decay) for p in g["params"]}
    for name, p in encoder.named_parameters():
        layer = re.search(r"encoder\.layer\.(\d+)\.", name)
        if layer:  # BERT layer i (0-based) is layer i + 1 of depth L + 1: rate lr * decay^(L - i)
            expected = lr * decay ** (layers - int(layer.group(1)))
        else:
            assert ".embeddings." in name, name  # nothing else before the layers, nothing after (no pooler)
            expected = lr * decay ** (layers + 1)
        assert rate[id(p)] == pytest.approx(expected), name
    assert len(rate) == len(list(encoder.parameters()))


def test_class_indices_put_unseen_classes_past_the_head():
    from contrastkit.modalities.text.fine_tune import class_indices

    np.testing.assert_array_equal(class_indices(["b", "z", "a", "y", "b"], ["a", "b"]), [1, 3, 0, 2, 1])


def rows_of(task: Path):
    from contrastkit.modalities.text.fine_tune import class_indices, labelled_text_task, read_labelled_texts

    texts, names = read_labelled_texts(labelled_text_task(task), "dev")
    y = class_indices(names, sorted(set(names)))
    rest, dev = carve_development(y, np.arange(len(texts)), DEV_SIZE, 0)
    return texts, y, balanced_labels(y, rest, N_LABELS, 0), dev


def test_a_frozen_encoder_gives_the_head_trained_on_encode_features(task):
    from contrastkit.modalities.text.fine_tune import fine_tune_text_encoder

    encoder = tiny_encoder()
    figures = fine_tune_text_encoder(encoder, task, N_LABELS, epochs=3, lrs=(0.05,), encoder_lr_scale=0.0,
                                     dev_size=DEV_SIZE, batch_size=8, seed=0)
    # Second derivation: TextEncoder.encode (its own batching: length-sorted, padded per batch) gives the
    # features once; the same loop then trains a head alone on them.
    texts, y, labelled, dev = rows_of(task)
    frozen = encoder.encode(texts, batch_size=64)
    dev_top1, _ = hand_trained_head(frozen, torch.as_tensor(y), labelled, dev, len(np.unique(y)), epochs=3, lr=0.05,
                                    batch_size=8)
    assert figures["labels"] == N_LABELS and figures["n_scored"] == len(dev) and figures["scored"] == "dev"
    assert figures["fine_tune_dev_top1"] == pytest.approx(max(dev_top1), abs=1.5 / len(dev))
    assert figures["chosen"]["epochs"] == int(np.argmax(dev_top1)) + 1
    probe = linear_probe_accuracy(frozen[labelled].numpy(), y[labelled], frozen[dev].numpy(), y[dev], 0)
    assert figures["linear_top1"] == pytest.approx(probe, abs=1.5 / len(dev))
    labelled_classes = np.bincount(y[labelled])
    assert labelled_classes.min() == labelled_classes.max() == 1  # balanced: one per supersense


def test_the_test_data_is_read_only_with_split_test(task, tmp_path):
    from contrastkit.modalities.text.fine_tune import fine_tune_text_encoder

    spec = task.read_text().replace("$CONTRASTKIT_DATA", str(data_path("wordnet").parent))
    dev_only = tmp_path / "task.yaml"  # the test entry points at a file that does not exist
    dev_only.write_text(spec.replace("wordnet/synsets.tsv.gz\n    where: {pos: n}\n    carve: {key: synset_id, "
                                     "modulus: 40, remainder: 1}", "missing/test.tsv"))
    assert "missing/test.tsv" in dev_only.read_text()
    options = dict(epochs=1, lrs=(0.01,), dev_size=DEV_SIZE, batch_size=16, seed=3)
    first = fine_tune_text_encoder(tiny_encoder(), dev_only, N_LABELS, **options)
    again = fine_tune_text_encoder(tiny_encoder(), dev_only, N_LABELS, **options)
    assert first == again  # rows, draws and training fixed by the seed
    with pytest.raises(DataError):
        fine_tune_text_encoder(tiny_encoder(), dev_only, N_LABELS, split="test", **options)


def test_evaluate_fine_tune_on_a_text_run_and_its_test_split(text_run, task, tmp_path):
    from contrastkit.cli import main
    from contrastkit.modalities.text.fine_tune import labelled_text_task, read_labelled_texts

    output = tmp_path / "ft.json"
    common = ["evaluate", "--fine-tune", "--run", str(text_run), "--labels", str(N_LABELS), "--data", str(task),
              "--epochs", "1", "--dev-size", str(DEV_SIZE), "--batch-size", "16", "--output", str(output)]
    assert main(common) == 0
    figures = json.loads(output.read_text())
    assert figures["scored"] == "dev" and figures["classes"] == 26 and figures["labels"] == N_LABELS
    assert main([*common, "--split", "test"]) == 0
    tested = json.loads(output.read_text())
    test_texts, _ = read_labelled_texts(labelled_text_task(task), "test")
    assert tested["scored"].startswith("test") and tested["n_scored"] == len(test_texts)
    kept = json.loads((text_run / "fine_tune.json").read_text())["results"]
    assert [r["scored"] for r in kept] == [figures["scored"], tested["scored"]]  # both settings kept in the run
    assert main([*common[:-2]]) == 0 and len(json.loads((text_run / "fine_tune.json").read_text())["results"]) == 2


def test_a_text_run_needs_labelled_texts(text_run):
    from contrastkit.cli import main

    assert main(["evaluate", "--fine-tune", "--run", str(text_run), "--labels", "4"]) == 2
