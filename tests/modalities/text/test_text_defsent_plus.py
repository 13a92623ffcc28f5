"""DefSent+: the isotropy measure, the entry matrix, the classification loss, the WordNet entries, the method.

- the partition-function isotropy against its closed forms (the cross-polytope: 1; n copies of w: e^{-2|w|})
  and against a naive loop over directions and vectors;
- entry embeddings against a per-entry loop; the centred space against a loop; the whitened space against an
  inverse square root of the covariance computed another way (SVD of the centred data);
- the loss against a naive loop of log-softmaxes with the definition's other entries left out;
- the WordNet reader against figures of the data's PROVENANCE (135,916 distinct (lemma, pos)) and a known entry;
- `contrastkit fit --method defsent-plus` on (definition, entry) rows: rebuilds counted, and the last entry matrix
  equal to one built afresh from the saved encoder.
"""

from __future__ import annotations

import argparse
import json
import math

import numpy as np
import pytest
import torch

from contrastkit.evaluation.partition_isotropy import partition_isotropy
from contrastkit.modalities.text.methods.defsent_plus import (
    definition_classification_loss,
    entry_embeddings,
    isotropic_entries,
)
from tests.conftest import data_path, requires_minilm, requires_transformers


# ------------------------------------------------------------------------------------------ isotropy


@pytest.mark.parametrize("d", [2, 5, 16])
def test_partition_isotropy_of_the_cross_polytope_is_one(d):
    vectors = np.concatenate([np.eye(d), -np.eye(d)])
    assert partition_isotropy(vectors) == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("length", [0.5, 1.0, 3.0])
def test_partition_isotropy_of_one_repeated_vector_is_exp_minus_twice_its_length(length):
    w = np.array([1.0, 2.0, -2.0]) / 3.0 * length
    assert partition_isotropy(np.tile(w, (7, 1))) == pytest.approx(math.exp(-2 * length), rel=1e-9)


def test_partition_isotropy_matches_a_naive_loop():
    rng = np.random.default_rng(0)
    w = rng.normal(size=(30, 4)) + np.array([0.8, 0.0, -0.3, 0.1])
    _, vectors = np.linalg.svd(w, full_matrices=False)[1:]  # right singular vectors = eigenvectors of W^T W
    z = []
    for k in range(vectors.shape[0]):
        for sign in (1.0, -1.0):
            c = sign * vectors[k]
            z.append(sum(math.exp(sum(c[j] * w[i, j] for j in range(4))) for i in range(30)))
    assert partition_isotropy(torch.tensor(w)) == pytest.approx(min(z) / max(z), rel=1e-9)


# -------------------------------------------------------------------------------------- entry matrix


def test_entry_embeddings_are_the_means_of_their_definitions():
    g = torch.Generator().manual_seed(1)
    definitions = torch.randn(6, 3, generator=g, dtype=torch.float64)
    owners = [[0, 1], [2], [1, 3, 5]]
    expected = torch.stack([sum(definitions[i] for i in rows) / len(rows) for rows in owners])
    assert torch.allclose(entry_embeddings(definitions, owners), expected, atol=1e-12)


def test_centred_and_whitened_entry_spaces_against_second_derivations():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(50, 4, generator=g, dtype=torch.float64) @ torch.tensor(
        [[3.0, 0, 0, 0], [1.0, 0.5, 0, 0], [0, 0, 0.2, 0], [0.4, 0, 0, 1.0]], dtype=torch.float64) + 2.0
    mean = [sum(float(x[i, j]) for i in range(50)) / 50 for j in range(4)]
    centred = [[float(x[i, j]) - mean[j] for j in range(4)] for i in range(50)]
    looped = torch.tensor([[v / math.sqrt(sum(c * c for c in row)) for v in row] for row in centred])
    assert torch.allclose(isotropic_entries(x, "centered"), looped.double(), atol=1e-12)
    # ZCA with the covariance's inverse square root from the SVD of the centred data: C = V S^2 V^T / (n - 1)
    c = x - x.mean(0)
    _, s, vt = torch.linalg.svd(c, full_matrices=False)
    zca = c @ vt.T @ torch.diag(math.sqrt(49) / s) @ vt
    assert torch.allclose(zca.T @ zca / 49, torch.eye(4, dtype=torch.float64), atol=1e-9)
    assert torch.allclose(isotropic_entries(x, "whitened"), zca / zca.norm(dim=1, keepdim=True), atol=1e-9)
    assert torch.allclose(isotropic_entries(x, "raw").norm(dim=1), torch.ones(50, dtype=torch.float64))
    # the centred, whitened space is more isotropic than the raw one
    assert partition_isotropy(isotropic_entries(x, "whitened")) > partition_isotropy(isotropic_entries(x, "raw"))


def test_classification_loss_matches_a_naive_loop_with_the_other_entries_left_out():
    g = torch.Generator().manual_seed(3)
    embeddings = torch.randn(3, 4, generator=g, dtype=torch.float64)
    entries = torch.nn.functional.normalize(torch.randn(5, 4, generator=g, dtype=torch.float64), dim=1)
    targets = torch.tensor([0, 2, 4])
    excluded = torch.zeros(3, 5, dtype=torch.bool)
    excluded[0, 1] = True  # definition 0 also defines entry 1
    excluded[2, 0] = excluded[2, 3] = True
    tau = 0.1
    total = 0.0
    for i in range(3):
        u = embeddings[i] / embeddings[i].norm()
        logits = {e: float(u @ entries[e]) / tau for e in range(5) if not excluded[i, e]}
        total += -(logits[int(targets[i])] - math.log(sum(math.exp(v) for v in logits.values())))
    loss = definition_classification_loss(embeddings, entries, targets, excluded, tau)
    assert loss.item() == pytest.approx(total / 3, rel=1e-12)


# ------------------------------------------------------------------------------------------- WordNet


def test_wordnet_entries_match_the_provenance():
    from contrastkit.modalities.text.dictionary import read_wordnet_entries, sample_entries

    folder = data_path("wordnet")
    entries = read_wordnet_entries(folder)
    assert len(entries) == 135_916  # PROVENANCE.txt: 135916 distinct (lemma, pos)
    by_name = {e.name: e for e in entries}
    assert by_name["dog (n)"].definitions[0].startswith("a member of the genus Canis")
    assert by_name["domestic dog (n)"].definitions[0] == by_name["dog (n)"].definitions[0]  # one synset, two entries
    sample = sample_entries(entries, 100, seed=0)
    assert len(sample) == 100 and sample == sample_entries(entries, 100, seed=0)


# -------------------------------------------------------------------------------------------- method

ROWS = [("a domesticated carnivorous mammal that barks", "dog (n)"),
        ("a domesticated carnivorous mammal that barks", "domestic dog (n)"),
        ("a small domesticated feline", "cat (n)"),
        ("a large body of salt water", "sea (n)"),
        ("a large body of salt water", "ocean (n)"),
        ("the expanse of water covering much of the earth", "ocean (n)"),
        ("a building where people live", "house (n)"),
        ("a vehicle with four wheels", "car (n)")]


def _rows_file(path):
    path.write_text("definition\tentry\n" + "".join(f"{d}\t{e}\n" for d, e in ROWS))
    return path


@requires_transformers
@requires_minilm
def test_use_training_data_indexes_entries_and_shared_definitions(tmp_path):
    from contrastkit.modalities.text.encoders import small_random_encoder
    from contrastkit.modalities.text.methods import build_text_method
    from contrastkit.modalities.text.pair_data import PairData

    method = build_text_method("defsent-plus", small_random_encoder(max_length=16), rebuild_every=None)
    data = PairData.from_file(_rows_file(tmp_path / "rows.tsv"))
    method.use_training_data(data)
    assert method.entry_names == ["dog (n)", "domestic dog (n)", "cat (n)", "sea (n)", "ocean (n)", "house (n)", "car (n)"]
    ocean = method.entry_definitions[method.entry_index["ocean (n)"]]
    assert [method.definitions[i] for i in ocean] == [ROWS[4][0], ROWS[5][0]]
    # the matrix: centred means of the encoder's definition embeddings, rows of unit norm
    embedded = method.encoder.encode(method.definitions)
    expected = isotropic_entries(torch.stack([embedded[rows].mean(0) for rows in method.entry_definitions]), "centered")
    assert torch.allclose(method.entry_matrix, expected, atol=1e-5)
    batch = data.samples().__getitems__([0, 3])
    loss, logs = method.training_loss(batch)
    assert torch.isfinite(loss) and 0 < logs["entry_isotropy"] <= 1


@requires_transformers
@requires_minilm
def test_fit_defsent_plus_rebuilds_the_entries_from_the_trained_encoder(tmp_path):
    from contrastkit.modalities.text import cli as text_cli
    from contrastkit.modalities.text.encoders import load_text_encoder

    parser = argparse.ArgumentParser()
    text_cli.add_arguments(parser)
    args = parser.parse_args([
        "--method", "defsent-plus", "--backbone", "random-small", "--data", str(_rows_file(tmp_path / "rows.tsv")),
        "--out", str(tmp_path / "run"), "--batch-size", "4", "--max-steps", "3", "--max-length", "16",
        "--device", "cpu", "--option", "rebuild_every=1", "--checkpoint-every-steps", "3",
    ])
    assert text_cli.run(args) == 0
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["steps"] == 3
    state = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    method_state = next(v for v in state.values() if isinstance(v, dict) and any(k.endswith("entry_matrix") for k in v))
    matrix = next(v for k, v in method_state.items() if k.endswith("entry_matrix"))
    rebuilds = next(v for k, v in method_state.items() if k.endswith("rebuilds"))
    assert int(rebuilds) == 3
    encoder = load_text_encoder(tmp_path / "run" / "encoder")
    definitions = list(dict.fromkeys(d for d, _ in ROWS))
    embedded = encoder.encode(definitions)
    owners = {}
    for d, e in ROWS:
        owners.setdefault(e, []).append(definitions.index(d))
    expected = isotropic_entries(torch.stack([embedded[rows].mean(0) for rows in owners.values()]), "centered")
    assert torch.allclose(matrix, expected, atol=1e-5)
