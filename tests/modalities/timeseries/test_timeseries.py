"""Time series: .ts/array/aeon sources, TS2Vec views, dilated-conv encoder, hierarchical loss,
the TS2Vec fit/encode object and the UCR SVM protocol.

Every check compares against a second derivation: aeon's own reader, the published UCR
counts and 1-NN floor, naive loops written here, binomial quantiles, or scikit-learn.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats

from contrastkit.modalities.timeseries.encoders import DilatedConvEncoder
from contrastkit.core.errors import ConfigError, DataError
from contrastkit.evaluation.ucr import (
    SVM_C_GRID,
    one_nn_euclidean,
    select_svm,
    svm_protocol,
    svm_protocol_result,
)
from contrastkit.objectives.hierarchical import (
    hierarchical_contrastive_loss,
    instance_contrastive_loss,
    temporal_contrastive_loss,
    temporal_pyramid,
)
from contrastkit.modalities.timeseries.sources import (
    aeon_data_dir,
    load_bundled,
    open_timeseries_source,
    read_array_file,
    read_ts_file,
    standardize_with_train_statistics,
)
from contrastkit.modalities.timeseries.ts2vec import (
    TS2Vec,
    centre_observed_span,
    default_n_iters,
    prepare_training_series,
)
from contrastkit.modalities.timeseries.views import (
    binomial_timestamp_mask,
    clip_distance_probabilities,
    jitter,
    permute_segments,
    sample_clip_pair,
    sample_overlapping_crops,
    scale,
    take_crops,
    take_windows,
)

# Small encoder sizes keep the CPU tests to seconds.
TINY = dict(output_dims=16, hidden_dims=8, depth=3)


def bundled_file(name: str, split: str):
    """A UCR/UEA file shipped inside aeon's wheel; skips the test when aeon is absent."""
    pytest.importorskip("aeon")
    path = aeon_data_dir() / name / f"{name}_{split.upper()}.ts"
    if not path.is_file():
        pytest.skip(f"{path} is not bundled with this aeon version")
    return path


# --------------------------------------------------------------------------- sources


@pytest.mark.parametrize("name", ["GunPoint", "JapaneseVowels"])
@pytest.mark.parametrize("split", ["train", "test"])
def test_own_ts_parser_agrees_with_aeon_reader(name, split):
    path = bundled_file(name, split)
    from aeon.datasets import load_from_ts_file

    ours = read_ts_file(path)
    x_aeon, y_aeon = load_from_ts_file(str(path))
    if isinstance(x_aeon, list):  # unequal lengths: pad aeon's list the obvious way
        t_max = max(a.shape[1] for a in x_aeon)
        padded = np.full((len(x_aeon), x_aeon[0].shape[0], t_max), np.nan)
        for i, a in enumerate(x_aeon):
            padded[i, :, : a.shape[1]] = a
        x_aeon = padded
    np.testing.assert_array_equal(ours.x, x_aeon.astype(np.float32))
    # aeon lower-cases labels; ours keeps the header's spelling and maps to indices
    assert [ours.class_names[k].lower() for k in ours.y] == [str(v) for v in y_aeon]


def test_bundled_loader_gives_the_same_arrays_as_own_parser():
    for split in ("train", "test"):
        by_aeon = load_bundled("GunPoint", split)
        by_us = read_ts_file(bundled_file("GunPoint", split))
        np.testing.assert_array_equal(by_aeon.x, by_us.x)
        np.testing.assert_array_equal(by_aeon.y, by_us.y)
        assert by_aeon.class_names == by_us.class_names == ["1", "2"]


@pytest.mark.parametrize(
    "name, n_train, n_test, length",
    [("GunPoint", 50, 150, 150), ("ItalyPowerDemand", 67, 1029, 24)],  # UCR archive counts
)
def test_known_counts_of_ucr_sets(name, n_train, n_test, length):
    bundled_file(name, "train")
    train = open_timeseries_source(name, "train")
    test = open_timeseries_source(f"aeon:{name}", "test")
    assert train.x.shape == (n_train, 1, length) and test.x.shape == (n_test, 1, length)
    assert train.x.dtype == np.float32 and train.y.dtype == np.int64
    assert set(np.unique(train.y)) == {0, 1} and set(np.unique(test.y)) == {0, 1}
    assert not np.isnan(train.x).any()
    from_folder = open_timeseries_source(aeon_data_dir() / name, "test")
    np.testing.assert_array_equal(from_folder.x, test.x)


def test_unknown_bundled_name_fails_before_aeon_could_download(monkeypatch):
    datasets = pytest.importorskip("aeon.datasets")

    def must_not_run(*args, **kwargs):
        raise AssertionError("aeon's loader was called for an unbundled name (it would download)")

    monkeypatch.setattr(datasets, "load_classification", must_not_run)
    with pytest.raises(DataError, match="GunPoint"):
        open_timeseries_source("GunPont")


def write(tmp_path, text, name="toy.ts"):
    path = tmp_path / name
    path.write_text(text)
    return path


HEADER = "# a comment\n@problemName toy\n@univariate {uni}\n@equalLength {eq}\n@classLabel true a b\n@data\n"


def test_missing_values_and_variable_lengths_become_nan(tmp_path):
    path = write(
        tmp_path,
        HEADER.format(uni="false", eq="false")
        + "1,2,3:4,5,6:a\n"
        + "7,?,9,10:11,12,13,14:b\n"
        + "15:16:a\n",
    )
    source = read_ts_file(path)
    nan = np.nan
    expected = np.array(
        [
            [[1, 2, 3, nan], [4, 5, 6, nan]],
            [[7, nan, 9, 10], [11, 12, 13, 14]],
            [[15, nan, nan, nan], [16, nan, nan, nan]],
        ],
        dtype=np.float32,
    )
    np.testing.assert_array_equal(source.x, expected)
    np.testing.assert_array_equal(source.y, [0, 1, 0])
    assert source.class_names == ["a", "b"]


@pytest.mark.parametrize(
    "body, line, message",
    [
        ("1,2,3:4,5,6:a\n1,2,3:b\n", 8, "dimension"),  # ragged number of dimensions
        ("1,2,3:4,5,6:a\n1,x,3:4,5,6:b\n", 8, "not a number"),
    ],
)
def test_malformed_lines_name_their_line_number(tmp_path, body, line, message):
    path = write(tmp_path, HEADER.format(uni="false", eq="true") + body)
    with pytest.raises(DataError, match=rf"toy.ts:{line}:.*{message}"):
        read_ts_file(path)


def test_unequal_lengths_under_equal_length_header_and_undeclared_labels_fail(tmp_path):
    ragged = write(tmp_path, HEADER.format(uni="true", eq="true") + "1,2,3:a\n1,2:b\n")
    with pytest.raises(DataError, match="equalLength"):
        read_ts_file(ragged)
    bad_label = write(tmp_path, HEADER.format(uni="true", eq="true") + "1,2:a\n1,2:zz\n", "b.ts")
    with pytest.raises(DataError, match="'zz'"):
        read_ts_file(bad_label)
    with pytest.raises(DataError, match="does not exist"):
        read_ts_file(tmp_path / "absent.ts")


def test_array_files(tmp_path):
    x = np.random.default_rng(0).normal(size=(5, 12))
    np.save(tmp_path / "u.npy", x)
    univariate = read_array_file(tmp_path / "u.npy")
    assert univariate.x.shape == (5, 1, 12) and univariate.y is None
    np.testing.assert_allclose(univariate.x[:, 0], x.astype(np.float32))
    np.savez(tmp_path / "m.npz", x=np.zeros((4, 3, 7)), y=np.array([0, 1, 1, 2]))
    multi = open_timeseries_source(tmp_path / "m.npz")
    assert multi.x.shape == (4, 3, 7) and multi.y.tolist() == [0, 1, 1, 2]
    np.savez(tmp_path / "bad.npz", series=np.zeros((4, 7)))
    with pytest.raises(DataError, match="no 'x'"):
        read_array_file(tmp_path / "bad.npz")
    np.save(tmp_path / "rank4.npy", np.zeros((2, 2, 2, 2)))
    with pytest.raises(DataError, match=r"\(N, T\) or \(N, C, T\)"):
        read_array_file(tmp_path / "rank4.npy")


def test_standardisation_uses_train_statistics_only():
    train = np.array([[[0.0, 2.0, np.nan]]], dtype=np.float32)
    test = np.array([[[100.0, 1.0, 3.0]]], dtype=np.float32)
    scaled_train, scaled_test = standardize_with_train_statistics(train, test)
    np.testing.assert_allclose(scaled_train[0, 0, :2], [-1.0, 1.0])  # mean 1, std 1
    np.testing.assert_allclose(scaled_test[0, 0], [99.0, 0.0, 2.0])


# --------------------------------------------------------------------------- views


def test_overlapping_crops_shapes_and_overlap_exactly_as_specified():
    generator = torch.Generator().manual_seed(0)
    batch, channels, length = 6, 2, 40
    # x[i, c, t] encodes (i, c, t) so that any misplaced value is detected
    x = (torch.arange(batch)[:, None, None] * 10_000 + torch.arange(channels)[None, :, None] * 1_000
         + torch.arange(length)[None, None, :]).float()
    for _ in range(300):
        crops = sample_overlapping_crops(batch, length, min_overlap=4, generator=generator)
        a1, a2, b1, b2 = crops.left_start, crops.overlap_start, crops.overlap_end, crops.right_end
        assert 0 <= a1 <= a2 < b1 <= b2 <= length and b1 - a2 >= 4
        first, second = take_crops(x, crops)
        assert first.shape == (batch, channels, b1 - a1) and second.shape == (batch, channels, b2 - a2)
        for i in range(batch):  # naive slicing, series by series
            shift = int(crops.offsets[i])
            assert 0 <= shift + a1 and shift + b2 <= length
            assert torch.equal(first[i], x[i, :, shift + a1 : shift + b1])
            assert torch.equal(second[i], x[i, :, shift + a2 : shift + b2])
        overlap_1 = crops.overlap_of_first(first.transpose(1, 2))
        overlap_2 = crops.overlap_of_second(second.transpose(1, 2))
        assert overlap_1.shape[1] == crops.overlap_length
        assert torch.equal(overlap_1, overlap_2)  # the same time steps, seen in two contexts


def test_crops_reject_overlap_longer_than_series():
    with pytest.raises(ConfigError, match="min_overlap"):
        sample_overlapping_crops(2, 3, min_overlap=4)


@pytest.mark.parametrize("p", [0.5, 0.2])
def test_binomial_mask_rate_within_binomial_bounds(p):
    generator = torch.Generator().manual_seed(1)
    keep = binomial_timestamp_mask(200, 500, p=p, generator=generator)
    n = keep.numel()
    masked = int((~keep).sum())
    low, high = stats.binom.ppf([1e-6, 1 - 1e-6], n, p)  # fails by chance once in 500,000 runs
    assert low <= masked <= high
    # masks are independent across series: per-row rates spread like Binomial(500, p) / 500
    per_row = (~keep).float().mean(dim=1)
    assert abs(float(per_row.std()) - math.sqrt(p * (1 - p) / 500)) < 0.01


def test_encoder_masking_acts_on_latents_like_a_missing_step():
    torch.manual_seed(0)
    encoder = DilatedConvEncoder(2, **TINY).eval()
    x = torch.randn(3, 2, 20)
    keep = torch.ones(3, 20, dtype=torch.bool)
    keep[0, 5] = keep[2, 0] = False
    with_nan = x.clone()
    with_nan[0, :, 5] = float("nan")
    with_nan[2, 1, 0] = float("nan")  # one missing channel makes the whole step missing
    torch.testing.assert_close(encoder(x, mask=keep), encoder(with_nan, mask="none"))
    # and masking changes the output (the projection's bias would otherwise reach the convs)
    assert not torch.allclose(encoder(x, mask=keep), encoder(x, mask="none"))


def test_jitter_and_scale_statistics():
    generator = torch.Generator().manual_seed(2)
    x = torch.randn(64, 3, 200, generator=generator)
    noise = jitter(x, sigma=0.8, generator=generator) - x
    assert abs(float(noise.std()) - 0.8) < 0.02 and abs(float(noise.mean())) < 0.02
    scaled = scale(x, sigma=1.1, generator=generator)
    ratio = scaled / x
    # one factor per series and channel, shared by all time steps
    torch.testing.assert_close(ratio, ratio[:, :, :1].expand_as(ratio), rtol=1e-4, atol=1e-4)
    factors = ratio[:, :, 0].flatten()
    assert abs(float(factors.mean()) - 1.0) < 0.3 and abs(float(factors.std()) - 1.1) < 0.2


def test_permuted_segments_are_a_permutation_of_time_shared_by_channels():
    generator = torch.Generator().manual_seed(3)
    x = torch.stack([torch.arange(30.0), 100 + torch.arange(30.0)])[None].repeat(8, 1, 1)
    permuted = permute_segments(x, max_segments=5, generator=generator)
    for i in range(8):
        order = permuted[i, 0].long()
        assert sorted(order.tolist()) == list(range(30))
        assert torch.equal(permuted[i, 1], 100 + permuted[i, 0])
        # at most 5 contiguous runs
        breaks = int((order[1:] != order[:-1] + 1).sum())
        assert breaks <= 4
    assert any(not torch.equal(permuted[i], x[i]) for i in range(8))


def test_cvrl_clip_distances_follow_a_decreasing_distribution():
    length, clip = 60, 10
    generator = torch.Generator().manual_seed(4)
    first, second = sample_clip_pair(20_000, length, clip, generator=generator)
    assert int(first.min()) >= 0 and int(second.min()) >= 0
    assert int(first.max()) <= length - clip and int(second.max()) <= length - clip
    distances = (first - second).abs()
    max_distance = length - clip
    # P(d) ∝ c - d with c = max_distance + 1, written out here
    weights = np.array([max_distance + 1 - d for d in range(max_distance + 1)], dtype=float)
    expected = weights / weights.sum()
    np.testing.assert_allclose(clip_distance_probabilities(max_distance).numpy(), expected)
    observed = np.bincount(distances.numpy(), minlength=max_distance + 1) / distances.numel()
    assert np.abs(observed - expected).max() < 0.006
    assert observed[:10].sum() > observed[-10:].sum() * 5  # near pairs dominate
    clips = take_windows(torch.arange(length).float()[None, None].repeat(3, 1, 1), first[:3], clip)
    assert torch.equal(clips[:, 0, 0], first[:3].float())


# --------------------------------------------------------------------------- encoder


def test_encoder_shapes_dilations_and_receptive_field():
    encoder = DilatedConvEncoder(input_dims=3)  # paper defaults
    assert encoder.output_dim == 320
    assert len(encoder.blocks) == 11  # depth 10 hidden blocks + the output block
    assert [b.conv1.dilation[0] for b in encoder.blocks] == [2**i for i in range(11)]
    assert encoder.blocks[-1].projection is not None and encoder.blocks[0].projection is None
    encoder.eval()
    x = torch.randn(2, 3, 150)
    out = encoder(x)
    assert out.shape == (2, 150, 320)
    changed = x.clone()
    changed[:, :, 0] += 1.0
    # the first step influences the last one: the receptive field spans the series
    assert not torch.allclose(encoder(changed)[:, -1], out[:, -1])


def test_encoder_rejects_time_major_input():
    with pytest.raises(DataError, match=r"\(B, 3, T\)"):
        DilatedConvEncoder(3, **TINY)(torch.randn(2, 50, 3))


# --------------------------------------------------------------------------- losses vs naive loops


def naive_instance_loss(z1, z2):
    b, t = z1.shape[0], z1.shape[1]
    if b == 1:
        return 0.0
    total, count = 0.0, 0
    for step in range(t):
        for i in range(b):
            for anchor, positive_view, own_view in ((z1[i, step], z2, z1), (z2[i, step], z1, z2)):
                positive = math.exp(float(anchor @ positive_view[i, step]))
                denominator = sum(math.exp(float(anchor @ positive_view[j, step])) for j in range(b))
                denominator += sum(math.exp(float(anchor @ own_view[j, step])) for j in range(b) if j != i)
                total += -math.log(positive / denominator)
                count += 1
    return total / count


def naive_temporal_loss(z1, z2):
    b, t = z1.shape[0], z1.shape[1]
    if t == 1:
        return 0.0
    total, count = 0.0, 0
    for i in range(b):
        for step in range(t):
            for anchor, positive_view, own_view in ((z1[i, step], z2, z1), (z2[i, step], z1, z2)):
                positive = math.exp(float(anchor @ positive_view[i, step]))
                denominator = sum(math.exp(float(anchor @ positive_view[i, s])) for s in range(t))
                denominator += sum(math.exp(float(anchor @ own_view[i, s])) for s in range(t) if s != step)
                total += -math.log(positive / denominator)
                count += 1
    return total / count


def naive_max_pool_by_two(z):
    t = z.shape[1] // 2
    return torch.stack([torch.maximum(z[:, 2 * s], z[:, 2 * s + 1]) for s in range(t)], dim=1)


@pytest.mark.parametrize("shape", [(4, 5, 3), (1, 6, 2), (3, 1, 4)])
def test_instance_and_temporal_losses_match_naive_loops(shape):
    generator = torch.Generator().manual_seed(5)
    z1 = torch.randn(*shape, generator=generator, dtype=torch.float64)
    z2 = torch.randn(*shape, generator=generator, dtype=torch.float64)
    assert float(instance_contrastive_loss(z1, z2)) == pytest.approx(naive_instance_loss(z1, z2), rel=1e-9, abs=1e-12)
    assert float(temporal_contrastive_loss(z1, z2)) == pytest.approx(naive_temporal_loss(z1, z2), rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("length", [1, 2, 5, 8, 13, 33])
def test_temporal_pyramid_has_floor_log2_t_plus_one_scales(length):
    z = torch.randn(2, length, 3)
    scales = temporal_pyramid(z)
    assert len(scales) == math.floor(math.log2(length)) + 1
    assert scales[-1].shape[1] == 1
    expected = z
    for level in scales[1:]:
        expected = naive_max_pool_by_two(expected)
        assert torch.equal(level, expected)


@pytest.mark.parametrize("alpha, temporal_unit", [(0.5, 0), (0.3, 1), (1.0, 0)])
def test_hierarchical_loss_is_the_scale_average_of_naive_losses(alpha, temporal_unit):
    generator = torch.Generator().manual_seed(6)
    z1 = torch.randn(3, 11, 2, generator=generator, dtype=torch.float64)
    z2 = torch.randn(3, 11, 2, generator=generator, dtype=torch.float64)
    a, b, terms = z1, z2, []
    while True:  # scales 11, 5, 2, 1
        term = alpha * naive_instance_loss(a, b)
        if len(terms) >= temporal_unit and a.shape[1] > 1:
            term += (1 - alpha) * naive_temporal_loss(a, b)
        terms.append(term)
        if a.shape[1] == 1:
            break
        a, b = naive_max_pool_by_two(a), naive_max_pool_by_two(b)
    assert len(terms) == 4
    loss = hierarchical_contrastive_loss(z1, z2, alpha=alpha, temporal_unit=temporal_unit)
    assert float(loss) == pytest.approx(sum(terms) / len(terms), rel=1e-9)


def test_hierarchical_objective_is_registered_and_differentiable():
    from contrastkit import objectives

    objective = objectives.get("ts2vec_hierarchical", alpha=0.5)
    z1 = torch.randn(4, 16, 8, requires_grad=True)
    loss = objective(z1, torch.randn(4, 16, 8))
    loss.backward()
    assert torch.isfinite(loss) and z1.grad is not None and torch.isfinite(z1.grad).all()
    with pytest.raises(DataError, match=r"\(B, T, D\)"):
        objective(torch.randn(4, 8), torch.randn(4, 8))


# --------------------------------------------------------------------------- SVM protocol


def separable_features(n_train=60, n_test=40, seed=7):
    rng = np.random.default_rng(seed)
    y_train = np.arange(n_train) % 3
    y_test = np.arange(n_test) % 3
    centres = rng.normal(size=(3, 5)) * 1.5
    x_train = centres[y_train] + rng.normal(size=(n_train, 5))
    x_test = centres[y_test] + rng.normal(size=(n_test, 5))
    return x_train, y_train, x_test, y_test


def test_svm_model_selection_never_sees_the_test_set():
    from sklearn.model_selection import StratifiedKFold
    from sklearn.svm import SVC

    x_train, y_train, x_test, y_test = separable_features()
    result = svm_protocol_result(x_train, y_train, x_test, y_test)
    assert result.searched
    # destroy the test set: permuted labels, random features -> the chosen C must not move
    rng = np.random.default_rng(0)
    permuted = svm_protocol_result(x_train, y_train, x_test, rng.permutation(y_test))
    noise = svm_protocol_result(x_train, y_train, rng.normal(size=x_test.shape) * 50, y_test)
    assert result.C == permuted.C == noise.C
    # a second derivation of the choice: 5-fold stratified CV by hand, first best C wins
    folds = list(StratifiedKFold(5).split(x_train, y_train))
    mean_scores = []
    for c in SVM_C_GRID:
        scores = [
            SVC(C=c, gamma="scale").fit(x_train[fit], y_train[fit]).score(x_train[held], y_train[held])
            for fit, held in folds
        ]
        mean_scores.append(np.mean(scores))
    assert result.C == SVM_C_GRID[int(np.argmax(mean_scores))]
    refit = SVC(C=result.C, gamma="scale").fit(x_train, y_train)
    assert result.accuracy == pytest.approx(np.mean(refit.predict(x_test) == y_test))
    assert svm_protocol(x_train, y_train, x_test, y_test) == result.accuracy
    official_grid = [0.0001, 0.001, 0.01, 0.1, 1, 10, 100, 1000, 10000, np.inf]  # tasks/_eval_protocols.py
    assert list(SVM_C_GRID) == official_grid


def test_svm_falls_back_to_hard_margin_without_search_for_small_classes():
    x_train, y_train, x_test, y_test = separable_features(n_train=12)  # 4 per class < 5 folds
    svc, searched = select_svm(x_train, y_train)
    assert not searched and svc.C == np.inf
    with pytest.raises(DataError, match="two classes"):
        select_svm(x_train, np.zeros(12, dtype=int))


def test_one_nn_matches_sklearn_and_the_published_gunpoint_floor():
    from sklearn.neighbors import KNeighborsClassifier

    rng = np.random.default_rng(8)
    x_train, x_test = rng.normal(size=(40, 1, 30)), rng.normal(size=(25, 1, 30))
    y_train, y_test = rng.integers(0, 3, 40), rng.integers(0, 3, 25)
    knn = KNeighborsClassifier(n_neighbors=1).fit(x_train[:, 0], y_train)
    assert one_nn_euclidean(x_train, y_train, x_test, y_test, chunk_size=7) == pytest.approx(
        knn.score(x_test[:, 0], y_test)
    )
    bundled_file("GunPoint", "train")
    train, test = load_bundled("GunPoint", "train"), load_bundled("GunPoint", "test")
    assert one_nn_euclidean(train.x, train.y, test.x, test.y) == pytest.approx(0.913, abs=5e-4)


# --------------------------------------------------------------------------- TS2Vec object


def test_ts2vec_fit_encode_shapes_and_counts():
    x = np.random.default_rng(9).normal(size=(20, 2, 32)).astype(np.float32)
    model = TS2Vec(input_dims=2, batch_size=8, seed=0, **TINY)
    loss_log = model.fit(x, n_iters=5)
    # 20 series, batches of 8, last incomplete batch dropped -> 2 steps per epoch
    assert model.n_iters == 5 and len(loss_log) == 3 and all(np.isfinite(loss_log))
    assert model.encode(x).shape == (20, 16)
    assert model.encode(x, encoding_window=None, batch_size=3).shape == (20, 32, 16)
    assert model.encode(x, encoding_window=4).shape == (20, 32, 16)
    per_step = model.encode(x, encoding_window=None)
    np.testing.assert_allclose(model.encode(x), per_step.max(axis=1), rtol=1e-6)
    assert model.fit(x, n_epochs=2) and model.n_iters == 9  # n_epochs counts this call's epochs
    with pytest.raises(DataError, match="transpose"):
        model.encode(x.transpose(0, 2, 1))


def test_ts2vec_seed_reproducibility_and_save_load(tmp_path):
    x = np.random.default_rng(10).normal(size=(12, 1, 24)).astype(np.float32)
    state_before = torch.random.get_rng_state()
    first = TS2Vec(input_dims=1, batch_size=4, seed=3, **TINY)
    first.fit(x, n_iters=4)
    assert torch.equal(torch.random.get_rng_state(), state_before)  # global state untouched
    second = TS2Vec(input_dims=1, batch_size=4, seed=3, **TINY)
    second.fit(x, n_iters=4)
    np.testing.assert_array_equal(first.encode(x), second.encode(x))
    other_seed = TS2Vec(input_dims=1, batch_size=4, seed=4, **TINY)
    other_seed.fit(x, n_iters=4)
    assert not np.allclose(other_seed.encode(x), first.encode(x))
    first.save(tmp_path / "model.pt")
    loaded = TS2Vec.load(tmp_path / "model.pt")
    np.testing.assert_array_equal(loaded.encode(x[:, 0]), first.encode(x))
    assert loaded.n_iters == 4
    with pytest.raises(DataError, match="does not exist"):
        TS2Vec.load(tmp_path / "nothing.pt")


def test_ts2vec_uses_the_weight_average_for_encoding():
    x = np.random.default_rng(11).normal(size=(8, 1, 16)).astype(np.float32)
    model = TS2Vec(input_dims=1, batch_size=4, seed=1, **TINY)
    model.fit(x, n_iters=3)
    # SWA average after the initial weights and 3 steps: a plain mean of 4 weight sets
    assert int(model.averaged_encoder.n_averaged) == 4
    live = model.encoder.input_projection.weight
    averaged = model.averaged_encoder.module.input_projection.weight
    assert not torch.allclose(live, averaged)


def test_the_training_draws_depend_on_the_seed_not_only_the_initialisation():
    x = np.random.default_rng(10).normal(size=(12, 1, 24)).astype(np.float32)
    first = TS2Vec(input_dims=1, batch_size=4, seed=3, **TINY)
    second = TS2Vec(input_dims=1, batch_size=4, seed=4, **TINY)
    second.encoder.load_state_dict(first.encoder.state_dict())  # the same start, other crops/masks/order
    second.averaged_encoder.load_state_dict(first.averaged_encoder.state_dict())
    np.testing.assert_array_equal(first.encode(x), second.encode(x))
    first.fit(x, n_iters=4)
    second.fit(x, n_iters=4)
    assert not np.allclose(first.encode(x), second.encode(x))


def test_fit_on_the_engine_equals_the_official_training_loop_written_out(tmp_path):
    """The official loop (ts2vec.py: per epoch a shuffle, full batches, crops, masked encoding, the
    hierarchical loss, AdamW at torch's defaults on every parameter, an SWA update after each
    step), with the engine's draws: the epoch's order from a generator seeded by (seed + epoch),
    torch's generator reseeded from (seed, step) before each step."""
    import copy

    import yaml
    from torch.optim.swa_utils import AveragedModel

    from contrastkit.engine import step_seed

    x = np.random.default_rng(14).normal(size=(14, 1, 40)).astype(np.float32)
    model = TS2Vec(input_dims=1, batch_size=4, seed=5, **TINY)
    initial = copy.deepcopy(model.encoder.state_dict())
    epoch_losses = model.fit(x, n_iters=7, out=tmp_path / "run")
    run_seed = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["fit"]["seed"]

    encoder = DilatedConvEncoder(1, **TINY)
    encoder.load_state_dict(initial)
    average = AveragedModel(encoder)
    average.update_parameters(encoder)
    optimizer = torch.optim.AdamW(encoder.parameters(), lr=0.001)  # torch's default weight decay, 0.01
    data = torch.from_numpy(x)
    steps_per_epoch = len(data) // 4  # 3: the incomplete last batch is dropped
    losses: dict[int, list[float]] = {}
    with torch.random.fork_rng():
        for step in range(7):
            epoch, b = divmod(step, steps_per_epoch)
            order = torch.randperm(len(data), generator=torch.Generator().manual_seed(run_seed + epoch))
            batch = data[order[4 * b : 4 * b + 4]]
            torch.manual_seed(step_seed(run_seed, step, 0))
            crops = sample_overlapping_crops(4, batch.shape[2], min_overlap=2)
            first, second = take_crops(batch, crops)
            loss = hierarchical_contrastive_loss(crops.overlap_of_first(encoder(first)),
                                                 crops.overlap_of_second(encoder(second)))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            average.update_parameters(encoder)
            losses.setdefault(epoch, []).append(float(loss.detach()))
    np.testing.assert_allclose(epoch_losses, [np.mean(v) for v in losses.values()], rtol=1e-5)
    for trained, expected in ((model.encoder, encoder), (model.averaged_encoder, average)):
        for (name, value), reference in zip(trained.state_dict().items(), expected.state_dict().values(), strict=True):
            torch.testing.assert_close(value, reference, rtol=1e-4, atol=1e-6, msg=name)
    assert int(model.averaged_encoder.n_averaged) == 8


@pytest.mark.parametrize("crash_after, checkpointed", [(9, 8), (7, 6)])
def test_a_fit_that_crashed_resumes_to_the_uninterrupted_run(tmp_path, monkeypatch, crash_after, checkpointed):
    """24 series in batches of 8 (3 steps an epoch), a checkpoint every 4 steps and at every epoch's
    end. A crash in step 9 leaves the checkpoint of step 8 (epoch 2, one batch done), one in step 7
    the end-of-epoch checkpoint of step 6; the resumed fit must continue from there and end with
    the weights, weight average, optimiser state and epoch losses of a whole fit."""
    from contrastkit.modalities.timeseries.method import TS2VecMethod
    from tests.resume_harness import assert_same_training_state, load_checkpoint

    x = np.random.default_rng(15).normal(size=(24, 1, 20)).astype(np.float32)
    options = dict(n_iters=14, checkpoint_every_steps=4)
    whole = TS2Vec(input_dims=1, batch_size=8, seed=6, **TINY).fit(x, out=tmp_path / "whole", **options)

    update_average, steps_done = TS2VecMethod.after_optimizer_step, []

    def crash(method, step, total_steps):
        update_average(method, step, total_steps)
        steps_done.append(step)
        if len(steps_done) == crash_after:  # this step's update is done, its checkpoint is not written
            raise RuntimeError("simulated crash")

    monkeypatch.setattr(TS2VecMethod, "after_optimizer_step", crash)
    with pytest.raises(RuntimeError, match="simulated crash"):
        TS2Vec(input_dims=1, batch_size=8, seed=6, **TINY).fit(x, out=tmp_path / "crashed", **options)
    monkeypatch.undo()
    assert load_checkpoint(tmp_path / "crashed")["global_step"] == checkpointed
    with pytest.raises(ConfigError, match="already holds a run"):
        TS2Vec(input_dims=1, batch_size=8, seed=6, **TINY).fit(x, out=tmp_path / "crashed", **options)
    with pytest.raises(ConfigError, match=r"batch_size=8 \(now 4\)"):
        TS2Vec(input_dims=1, batch_size=4, seed=6, **TINY).fit(x, out=tmp_path / "crashed", resume=True, **options)
    resumed_model = TS2Vec(input_dims=1, batch_size=8, seed=6, **TINY)
    resumed = resumed_model.fit(x, out=tmp_path / "crashed", resume=True, **options)
    reference = load_checkpoint(tmp_path / "whole")
    assert_same_training_state(reference, load_checkpoint(tmp_path / "crashed"))
    assert int(reference["state_dict"]["method.averaged_encoder.n_averaged"]) == 15
    assert resumed == whole and len(whole) == 5  # epochs of 3, 3, 3, 3 and 2 steps
    assert resumed_model.n_iters == 14
    np.testing.assert_array_equal(TS2Vec.load(tmp_path / "crashed" / "model.pt").encode(x), resumed_model.encode(x))


def test_variable_length_series_train_and_encode_to_finite_vectors():
    rng = np.random.default_rng(12)
    x = rng.normal(size=(10, 1, 30)).astype(np.float32)
    for i in range(10):
        x[i, :, 15 + i :] = np.nan  # padded tails of different lengths
    x[3, :, 2] = np.nan  # and a missing value inside
    model = TS2Vec(input_dims=1, batch_size=4, seed=2, **TINY)
    assert all(np.isfinite(model.fit(x, n_iters=4)))
    assert np.isfinite(model.encode(x)).all()


def test_training_preprocessing_follows_the_official_rules():
    x = np.arange(2 * 1 * 10, dtype=np.float32).reshape(2, 1, 10)
    x[0, :, 7:] = np.nan  # lead 0, trail 3 -> roll right by 1
    x[1, :, :4] = np.nan  # lead 4, trail 0 -> roll right by -2
    centred = centre_observed_span(x)
    np.testing.assert_array_equal(centred[0, 0], np.roll(x[0, 0], 1))
    np.testing.assert_array_equal(centred[1, 0], np.roll(x[1, 0], -2))
    long = np.random.default_rng(13).normal(size=(3, 2, 7001)).astype(np.float32)
    sections = prepare_training_series(long, max_train_length=3000)  # 7001 // 3000 = 2 sections
    assert sections.shape == (6, 2, 3501)
    np.testing.assert_array_equal(sections[:3], long[:, :, :3501])
    assert np.isnan(sections[3:, :, -1]).all()
    assert default_n_iters(50 * 150) == 200 and default_n_iters(100_001) == 600


def ucr_split(name):
    bundled_file(name, "train")
    train, test = load_bundled(name, "train"), load_bundled(name, "test")
    x_train, x_test = standardize_with_train_statistics(train.x, test.x)
    return x_train, train.y, x_test, test.y


def svm_accuracy(model, x_train, y_train, x_test, y_test):
    return svm_protocol(model.encode(x_train), y_train, model.encode(x_test), y_test)


@torch.no_grad()
def held_out_hierarchical_loss(model, x, draws=5):
    """The training loss on unseen series, with fixed crops and no masking (eval mode)."""
    generator = torch.Generator().manual_seed(0)
    network = model.averaged_encoder.module.eval()
    series = torch.from_numpy(x)
    losses = []
    for _ in range(draws):
        crops = sample_overlapping_crops(len(series), series.shape[2], generator=generator)
        first, second = take_crops(series, crops)
        z1 = crops.overlap_of_first(network(first, mask="none"))
        z2 = crops.overlap_of_second(network(second, mask="none"))
        losses.append(float(hierarchical_contrastive_loss(z1, z2)))
    return float(np.mean(losses))


@pytest.mark.slow
def test_short_fit_on_gunpoint_generalises_to_test_series():
    # On GunPoint the random-init encoder already reaches 0.99-1.00 with the SVM protocol
    # (random dilated convolutions + max-pooling are a ROCKET-like feature map), so accuracy
    # cannot show learning there; the contrastive loss on the unseen test series can.
    x_train, y_train, x_test, y_test = ucr_split("GunPoint")
    model = TS2Vec(input_dims=1, batch_size=8, seed=0)
    random_loss = held_out_hierarchical_loss(model, x_test)
    model.fit(x_train, n_iters=40)
    trained_loss = held_out_hierarchical_loss(model, x_test)
    assert trained_loss < random_loss / 2, (trained_loss, random_loss)
    accuracy = svm_accuracy(model, x_train, y_train, x_test, y_test)
    assert accuracy > 0.913, accuracy  # the 1-NN Euclidean floor of the UCR archive


@pytest.mark.slow
def test_short_fit_on_italy_power_demand_beats_a_random_encoder():
    x_train, y_train, x_test, y_test = ucr_split("ItalyPowerDemand")
    random_accuracy = svm_accuracy(TS2Vec(input_dims=1, batch_size=8, seed=0), x_train, y_train, x_test, y_test)
    trained = TS2Vec(input_dims=1, batch_size=8, seed=0)
    trained.fit(x_train, n_iters=40)
    trained_accuracy = svm_accuracy(trained, x_train, y_train, x_test, y_test)
    print(f"ItalyPowerDemand SVM accuracy: random encoder {random_accuracy:.3f}, 40 steps {trained_accuracy:.3f}")
    assert trained_accuracy > random_accuracy, (trained_accuracy, random_accuracy)
