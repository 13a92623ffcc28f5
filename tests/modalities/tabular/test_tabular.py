"""Tabular sources, views, anomaly metrics and the SCARF / CLAN methods, each checked against a
second derivation (naive loops, closed forms, scipy tests, known file counts)."""

from __future__ import annotations

import copy
import csv
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from scipy import stats

from contrastkit.engine import EpochShuffleSampler, step_seed
from contrastkit.core.errors import ConfigError, DataError
from contrastkit.evaluation.anomaly import (
    auroc,
    auroc_by_family,
    autoencoder_scores,
    isolation_forest_scores,
)
from contrastkit.modalities.tabular.sources import (
    ATTACK_FAMILIES,
    TabularEncoder,
    load_nsl_kdd,
    read_csv_table,
)
from contrastkit.modalities.tabular.estimators import CLAN, SCARF
from contrastkit.modalities.tabular.views import (
    CorrelatedFeatureMasking,
    SCARFCorruption,
    correlated_feature_groups,
    mutual_information_matrix,
    scarf_corrupt,
)
from tests.conftest import data_path
from tests.resume_harness import ENV, assert_kill_and_resume_is_exact


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny models: one torch thread (tests/conftest.py)

# ---------------------------------------------------------------------------------- SCARF corruption


@pytest.mark.parametrize("rate, n_features, expected", [(0.3, 10, 3), (0.6, 10, 6), (0.25, 8, 2), (1.0, 5, 5), (0.0, 5, 0)])
def test_scarf_corrupts_exactly_rate_times_features_in_every_row(rate, n_features, expected):
    # x holds -1, which no reference row holds: every corrupted entry visibly changes, so the
    # count of changed entries is the number of corrupted features (an inverted rate 1 - c fails).
    reference = torch.arange(1, 50 * n_features + 1, dtype=torch.float32).reshape(50, n_features)
    x = -torch.ones(400, n_features)
    corrupted, mask = scarf_corrupt(x, reference, rate, generator=torch.Generator().manual_seed(0))
    changed = (corrupted != x).sum(dim=1)
    assert torch.all(changed == expected)
    assert torch.equal(corrupted != x, mask)
    if 0 < expected < n_features:  # the subset is uniform: each feature corrupted with probability q / D
        frequency = mask.float().mean(0)
        assert torch.allclose(frequency, torch.full_like(frequency, expected / n_features), atol=0.1)


def test_scarf_draws_each_feature_from_its_empirical_marginal():
    rng = np.random.default_rng(0)
    n = 3000
    categorical = rng.choice([0.0, 1.0, 5.0], size=n, p=[0.7, 0.2, 0.1])  # skewed: not uniform
    continuous = rng.exponential(2.0, size=n)
    reference = torch.tensor(np.stack([categorical, continuous], axis=1), dtype=torch.float32)
    x = -torch.ones(20000, 2)
    corrupted, mask = scarf_corrupt(x, reference, 1.0, generator=torch.Generator().manual_seed(1))
    assert mask.all()
    drawn = corrupted[:, 0].numpy()
    values, reference_counts = np.unique(categorical, return_counts=True)
    observed = np.array([(drawn == v).sum() for v in values])
    assert observed.sum() == len(drawn)  # nothing outside the column's support
    expected = reference_counts / n * len(drawn)
    assert stats.chisquare(observed, expected).pvalue > 1e-3
    # A uniform draw over the support would be rejected by the same test.
    assert stats.chisquare(np.full(3, len(drawn) / 3), expected).pvalue < 1e-6
    assert stats.ks_2samp(corrupted[:, 1].numpy(), continuous).pvalue > 1e-3
    assert stats.ks_2samp(rng.uniform(continuous.min(), continuous.max(), 20000), continuous).pvalue < 1e-6


def test_scarf_replaces_a_one_hot_block_as_one_feature_from_one_donor():
    reference = torch.tensor([[10.0, 1, 0, 0], [20.0, 0, 1, 0], [30.0, 0, 0, 1]])
    groups = np.array([0, 1, 1, 1])
    x = torch.tensor([[-1.0, 0, 0, 0]]).repeat(300, 1)  # the block is "unknown category" (all zero)
    corrupted, mask = scarf_corrupt(x, reference, 0.5, groups, torch.Generator().manual_seed(0))
    assert mask.shape == (300, 2) and torch.all(mask.sum(1) == 1)
    block = corrupted[:, 1:]
    assert torch.all(block[mask[:, 1]].sum(1) == 1)  # a valid one-hot row from the reference
    assert torch.all(block[~mask[:, 1]] == 0)


# ---------------------------------------------------------------------------------- correlated masking


def _naive_mutual_information(a: np.ndarray, b: np.ndarray) -> float:
    total = 0.0
    for va in np.unique(a):
        for vb in np.unique(b):
            joint = np.mean((a == va) & (b == vb))
            if joint > 0:
                total += joint * math.log(joint / (np.mean(a == va) * np.mean(b == vb)))
    return total


def test_mutual_information_groups_recover_known_correlated_pairs():
    rng = np.random.default_rng(0)
    n = 2000
    a = rng.integers(0, 5, n)
    b = rng.integers(0, 4, n)
    flip = rng.random(n) < 0.1
    columns = {
        "a": a, "noise1": rng.integers(0, 5, n), "b": b, "a_copy": (a + 1) % 5,
        "b_noisy": np.where(flip, rng.integers(0, 4, n), 3 - b), "noise2": rng.normal(size=n),
    }
    x = np.stack(list(columns.values()), axis=1).astype(np.float64)
    mi = mutual_information_matrix(x, n_bins=10)
    assert mi[0, 2] == pytest.approx(_naive_mutual_information(a, b), abs=1e-9)
    assert mi[0, 3] == pytest.approx(_naive_mutual_information(a, (a + 1) % 5), abs=1e-9)
    groups = correlated_feature_groups(mi, group_size=2)
    names = list(columns)
    assert [names[j] for j in groups[names.index("a")]] == ["a", "a_copy"]
    assert [names[j] for j in groups[names.index("a_copy")]] == ["a_copy", "a"]
    assert [names[j] for j in groups[names.index("b")]] == ["b", "b_noisy"]
    assert [names[j] for j in groups[names.index("b_noisy")]] == ["b_noisy", "b"]


def test_correlated_masking_views_mask_a_group_and_its_complement():
    mi = np.eye(4) + np.array([[0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 1], [0, 0, 1, 0]]) * 0.5
    view = CorrelatedFeatureMasking(mi, mask_fraction=0.5, fill_value=0.0)
    x = torch.arange(1, 201, dtype=torch.float32).reshape(50, 4)
    first, second = view(x, torch.Generator().manual_seed(0))
    masked_first, masked_second = first == 0, second == 0
    assert torch.equal(masked_first, ~masked_second)
    pairs = {(0, 1), (2, 3)}
    for row in masked_first:
        assert tuple(torch.nonzero(row).flatten().tolist()) in pairs


# ---------------------------------------------------------------------------------- encoder


def _table(rows):
    return {"proto": np.array([r[0] for r in rows]), "bytes": np.array([str(r[1]) for r in rows]),
            "flag": np.array([str(r[2]) for r in rows])}


def test_encoder_statistics_come_from_training_rows_only():
    train = _table([("tcp", 1, 0), ("udp", 2, 0), ("tcp", 4, 0), ("icmp", 10, 0), ("tcp", 3, 0)])
    test = _table([("sctp", 1000, 7), ("udp", 2, 0)])
    encoder = TabularEncoder(categorical=["proto"], numeric=["bytes", "flag"]).fit(train)
    before = encoder.transform(test)
    encoder.transform(_table([("gre", 1e9, -5)] * 3))  # transform must not refit
    after = encoder.transform(test)
    assert np.array_equal(before, after)
    # Hand computation from the training column only: median 3, IQR = q75 - q25 = 4 - 2 = 2;
    # 'flag' is constant (IQR 0) so it is scaled by 1.
    assert encoder.median.tolist() == [3.0, 0.0] and encoder.iqr.tolist() == [2.0, 1.0]
    np.testing.assert_allclose(before[:, :2], [[(1000 - 3) / 2, 7.0], [(2 - 3) / 2, 0.0]])
    # Categories sorted: icmp, tcp, udp; the unseen 'sctp' encodes to zeros.
    np.testing.assert_array_equal(before[:, 2:], [[0, 0, 0], [0, 0, 1]])
    refit = TabularEncoder(categorical=["proto"], numeric=["bytes", "flag"]).fit(
        {k: np.concatenate([train[k], test[k]]) for k in train})
    assert refit.iqr[0] != encoder.iqr[0]  # test rows would have moved the statistics


def test_csv_reader_names_the_ragged_line_and_missing_file(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("a,b,c\n1,2,3\n\n4,5\n")
    with pytest.raises(DataError, match="line 4"):
        read_csv_table(path)
    with pytest.raises(DataError, match="does not exist"):
        read_csv_table(tmp_path / "missing.csv")


# ---------------------------------------------------------------------------------- NSL-KDD


@pytest.mark.parametrize("split, file, rows, normal", [
    ("train20", "KDDTrain+_20Percent.txt", 25192, 13449), ("test", "KDDTest+.txt", 22544, 9711)])
def test_nsl_kdd_reader_matches_known_and_naively_counted_rows(split, file, rows, normal):
    root = data_path("nsl-kdd")
    data = load_nsl_kdd(root, split)
    naive_rows = naive_normal = 0
    with open(root / file, newline="") as handle:
        for fields in csv.reader(handle):
            naive_rows += 1
            naive_normal += fields[41] == "normal"
    assert len(data) == naive_rows == rows
    assert (data.label == "normal").sum() == naive_normal == normal
    assert len(data.table) == 41 and data.difficulty.min() >= 0 and data.difficulty.max() <= 21
    assert set(data.family) <= {"normal", "DoS", "Probe", "R2L", "U2R"}
    assert np.array_equal(data.family == "normal", data.label == "normal")
    assert all(ATTACK_FAMILIES[name] == fam for name, fam in zip(data.label, data.family) if name != "normal")


# ---------------------------------------------------------------------------------- AUROC


def test_auroc_matches_hand_computation_and_is_not_flipped():
    scores = np.array([0.1, 0.4, 0.35, 0.8, 0.4])
    anomaly = np.array([0, 0, 1, 1, 1])
    # Pairs (anomaly, normal) with the anomaly scored higher: 0.35>0.1, 0.8>0.1, 0.8>0.4, 0.4>0.1,
    # and one tie 0.4=0.4 counted 1/2: (4 + 0.5) / 6.
    assert auroc(scores, anomaly) == pytest.approx(4.5 / 6)
    assert auroc(-scores, anomaly) == pytest.approx(1.5 / 6)  # below 0.5, reported as is
    family = np.array(["normal", "normal", "DoS", "Probe", "DoS"])
    result = auroc_by_family(scores, family)
    assert result["DoS"] == pytest.approx(2.5 / 4) and result["Probe"] == pytest.approx(1.0)
    with pytest.raises(DataError):
        auroc(scores, np.zeros(5))


def test_baselines_rank_outliers_above_inliers():
    rng = np.random.default_rng(0)
    train = rng.normal(size=(300, 5)).astype(np.float32)
    test = np.concatenate([rng.normal(size=(50, 5)), rng.normal(size=(50, 5)) + 6]).astype(np.float32)
    labels = np.r_[np.zeros(50), np.ones(50)]
    assert auroc(isolation_forest_scores(train, test), labels) > 0.95
    assert auroc(autoencoder_scores(train, test, epochs=30, hidden_dim=16, bottleneck_dim=2), labels) > 0.95


# ---------------------------------------------------------------------------------- SCARF / CLAN


def _structured_plus_noise_data(seed: int = 0, n_train: int = 1200, n_test: int = 300):
    """Benign rows: 4 features on a 1-D curve plus 12 independent N(0, 1) noise features.
    Anomalies have the same marginals (the 4 curve features shuffled independently across rows)
    but not the joint structure. In input space the noise features dominate distances, so a
    random-init encoder ranks poorly; a trained one must learn which features carry structure."""
    rng = np.random.default_rng(seed)

    def curve(m):
        z = rng.uniform(-2, 2, size=(m, 1))
        return np.concatenate([z, np.sin(2 * z), z**2 - 1.3, np.cos(3 * z)], 1) + 0.05 * rng.normal(size=(m, 4))

    benign = np.concatenate([curve(n_train), rng.normal(size=(n_train, 12))], 1)
    test_benign = np.concatenate([curve(n_test), rng.normal(size=(n_test, 12))], 1)
    shuffled = curve(n_test)
    shuffled = np.stack([rng.permutation(shuffled[:, j]) for j in range(4)], 1)
    anomalies = np.concatenate([shuffled, rng.normal(size=(n_test, 12))], 1)
    test = np.concatenate([test_benign, anomalies]).astype(np.float32)
    return benign.astype(np.float32), test, np.r_[np.zeros(n_test), np.ones(n_test)]


# SCARF is not an anomaly objective (it learns invariance to corruption); with a milder rate its
# embedding still separates the structure better than a random network. Measured (seed 0):
# CLAN 0.68 -> 0.86, SCARF(rate 0.3) 0.68 -> 0.73.
@pytest.mark.parametrize("method, options, margin", [(CLAN, {}, 0.1), (SCARF, {"corruption_rate": 0.3}, 0.03)])
def test_training_improves_anomaly_auroc_over_random_init(method, options, margin):
    benign, test, labels = _structured_plus_noise_data()
    untrained = method(16, hidden_dims=64, depth=2, batch_size=128, seed=0, **options)
    untrained.reference = torch.from_numpy(benign)
    trained = method(16, hidden_dims=64, depth=2, batch_size=128, seed=0, **options)
    losses = trained.fit(benign, n_epochs=15)
    assert losses[-1] < losses[0]
    before = auroc(untrained.score(test), labels)
    after = auroc(trained.score(test), labels)
    assert after > before + margin, (before, after)


def test_few_label_head_on_frozen_encoder_classifies():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(3, 8)) * 4
    y = np.repeat(np.arange(3), 60)
    x = (centres[y] + rng.normal(size=(180, 8))).astype(np.float32)
    model = CLAN(8, hidden_dims=32, depth=2, batch_size=64, seed=0)
    model.fit(x[y == 0], n_epochs=2)
    few = np.r_[0:5, 60:65, 120:125]
    weights_before = [p.clone() for p in model.encoder.parameters()]
    model.fit_classifier(x[few], y[few])
    assert all(torch.equal(a, b) for a, b in zip(weights_before, model.encoder.parameters()))  # frozen
    assert (model.predict(x) == y).mean() > 0.9


def test_fit_keeps_a_run_folder_whose_log_gives_the_returned_losses(tmp_path):
    x = np.random.default_rng(0).normal(size=(100, 6)).astype(np.float32)
    run_dir = tmp_path / "run"
    model = SCARF(6, hidden_dims=16, depth=1, batch_size=32, seed=0)
    caller_state = torch.get_rng_state()
    losses = model.fit(x, n_epochs=2, out=run_dir)
    assert torch.equal(torch.get_rng_state(), caller_state)  # the engine's per-step reseeding stays inside fit
    summary = json.loads((run_dir / "summary.json").read_text())
    # 100 rows in batches of 32: three batches an epoch, the 4 rows left over are dropped.
    assert summary["steps"] == 2 * (100 // 32) and summary["epoch_losses"] == losses
    with open(run_dir / "metrics.csv", newline="") as handle:
        logged = [(int(row["epoch"]), float(row["train/loss"])) for row in csv.DictReader(handle) if row["train/loss"]]
    assert losses == pytest.approx([np.mean([v for e, v in logged if e == epoch]) for epoch in (0, 1)], rel=1e-12)
    exported = load_file(run_dir / "model.safetensors")
    for name, value in model.encoder.state_dict().items():
        assert torch.equal(exported[f"encoder.{name}"], value), name
    assert (run_dir / "config.yaml").is_file() and (run_dir / "checkpoints" / "last.ckpt").is_file()
    with pytest.raises(ConfigError, match="already holds a run"):
        SCARF(6, hidden_dims=16, depth=1, batch_size=32, seed=0).fit(x, n_epochs=2, out=run_dir)
    with pytest.raises(ConfigError, match="needs out="):
        model.fit(x, n_epochs=2, resume=True)


def test_fit_equals_a_plain_adam_loop_over_the_same_batches_and_step_seeds():
    """The engine's fit against the loop it replaced, written out: Adam at lr (no weight decay,
    constant rate), epochs of 70 // 16 = 4 batches (the 6 rows left over dropped), the fit's seed
    the object's second draw, torch reseeded before every step as the engine does."""
    x = np.random.default_rng(1).normal(size=(70, 5)).astype(np.float32)
    model = SCARF(5, hidden_dims=8, depth=2, output_dims=4, batch_size=16, seed=3)
    plain = copy.deepcopy(model)
    losses = model.fit(x, n_epochs=2)

    rows = torch.from_numpy(x)
    fit_seed = int(np.random.default_rng(3).integers(2**62, size=2)[1])
    sampler = EpochShuffleSampler(70, 16, fit_seed)
    optimizer = torch.optim.Adam([*plain.encoder.parameters(), *plain.projector.parameters()], lr=1e-3)
    corruption = SCARFCorruption(rows, 0.6)
    expected, step = [], 0
    for epoch in range(2):
        sampler.set_epoch(epoch)
        epoch_losses = []
        for positions in sampler:
            torch.manual_seed(step_seed(fit_seed, step, 0))
            loss = plain._loss(rows[positions], corruption)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            epoch_losses.append(loss.item())
            step += 1
        expected.append(float(np.mean(epoch_losses)))
    assert step == 8 and losses == pytest.approx(expected, rel=1e-6)
    for (name, trained), reference in zip(model._state_dict().items(), plain._state_dict().values(), strict=True):
        torch.testing.assert_close(trained, reference, rtol=1e-5, atol=1e-6, msg=name)


@pytest.mark.slow
def test_a_clan_run_on_nsl_kdd_killed_between_checkpoints_resumes_exactly(tmp_path):
    """CLAN on 1,024 NSL-KDD rows (tests/modalities/tabular/tabular_resume_run.py) killed with SIGKILL after its
    checkpoint of step 10; resumed, it must end where the uninterrupted run ends, and return the
    same per-epoch losses."""
    script = [sys.executable, str(Path(__file__).with_name("tabular_resume_run.py")), str(data_path("nsl-kdd"))]
    subprocess.run([*script, str(tmp_path / "whole")], check=True, env=ENV, capture_output=True)
    run_dir = tmp_path / "killed"
    assert_kill_and_resume_is_exact([*script, str(run_dir)], [*script, str(run_dir), "--resume"], run_dir,
                                    tmp_path / "whole", kill_after_step=10, seed=2)
    whole, resumed = (json.loads((d / "summary.json").read_text()) for d in (tmp_path / "whole", run_dir))
    assert resumed["epoch_losses"] == whole["epoch_losses"] and len(whole["epoch_losses"]) == 10


def test_parquet_reads_the_same_table_as_csv(tmp_path):
    pd = pytest.importorskip("pandas")
    pytest.importorskip("pyarrow")
    from contrastkit.modalities.tabular.sources import read_csv_table, read_table

    csv_path = tmp_path / "flows.csv"
    csv_path.write_text("protocol,bytes,flag\ntcp,491,SF\nudp,146,SF\ntcp,0,S0\n")
    frame = pd.read_csv(csv_path, dtype=str)
    frame.to_parquet(tmp_path / "flows.parquet")
    from_csv, from_parquet = read_csv_table(csv_path), read_table(tmp_path / "flows.parquet")
    assert from_csv.keys() == from_parquet.keys()
    for column in from_csv:
        assert list(from_csv[column]) == list(from_parquet[column]), column
