"""A tabular run reloaded from its folder (contrastkit.load) embeds rows exactly as the estimator that
trained it did: against the embeddings.npy that process wrote, the in-process estimator's encode,
and a feature scaling refitted on the run's training carve (second derivations of the reload)."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from contrastkit.core.errors import ConfigError, DataError
from tests.modalities.tabular.small_tables import SMALL, write_rows


@pytest.fixture(scope="module")
def table_run(tmp_path_factory):
    from contrastkit.cli import main

    folder = tmp_path_factory.mktemp("tabular-reload")
    data = write_rows(folder)
    assert main(["fit", "--method", "scarf", "--data", str(data), "--label-column", "kind", *SMALL,
                 "--out", str(folder / "run")]) == 0
    return folder / "run", data


def test_a_reloaded_run_embeds_the_table_as_the_run_did(table_run, one_torch_thread):
    import contrastkit
    from contrastkit.modalities.tabular.cli import dev_carve
    from contrastkit.modalities.tabular.estimators import SCARF
    from contrastkit.modalities.tabular.sources import TabularEncoder, read_table, table_rows

    run, data = table_run
    model = contrastkit.load(run)
    assert isinstance(model, SCARF) and not model.encoder.training
    table = read_table(data)
    labels = table.pop("kind")
    # embeddings.npy: what the estimator that trained wrote, in its process, of every row
    np.testing.assert_array_equal(model.encode_table(table), np.load(run / "embeddings.npy"))
    # Second derivation of the saved scaling: refitted on the run's training carve, it is the same.
    train_rows, _ = dev_carve(labels)
    refitted = TabularEncoder(categorical=["colour"], numeric=["size", "rate"]).fit(table_rows(table, train_rows))
    np.testing.assert_array_equal(model.feature_encoder.transform(table), refitted.transform(table))
    # ... and a scaling fitted on all rows (what a reload that refitted it naively would do) is not.
    assert not np.array_equal(TabularEncoder(categorical=["colour"], numeric=["size", "rate"]).fit_transform(table),
                              refitted.transform(table))


@pytest.mark.parametrize("name", ["SCARF", "CLAN"])
def test_an_estimator_fitted_from_python_reloads_to_the_same_encoder(name, tmp_path, one_torch_thread):
    import contrastkit
    from contrastkit.modalities.tabular import estimators

    rows = np.random.default_rng(1).normal(size=(40, 5)).astype(np.float32)
    estimator = getattr(estimators, name)(5, hidden_dims=8, depth=2, batch_size=8, seed=3)
    estimator.fit(rows, n_epochs=1, out=tmp_path / "run")
    reloaded = contrastkit.load(tmp_path / "run")
    assert type(reloaded) is type(estimator) and reloaded.feature_encoder is None
    np.testing.assert_array_equal(reloaded.encode(rows), estimator.encode(rows))
    # The run keeps the rows it was fitted on: the reloaded estimator scores new rows without them,
    # as the one that trained does when handed those rows explicitly.
    new_rows = np.random.default_rng(2).normal(size=(6, 5)).astype(np.float32)
    expected = estimator.score(new_rows, k=3, reference=rows)
    np.testing.assert_allclose(reloaded.score(new_rows, k=3), expected, rtol=1e-5, atol=1e-7)  # float32 rounding
    assert not np.allclose(estimator.score(new_rows, k=3, reference=rows[:8]), expected, rtol=1e-3)
    with pytest.raises(ConfigError, match="feature encoder"):
        reloaded.encode_table({"a": np.array(["1"])})


def test_the_feature_encoder_state_round_trips_bit_for_bit():
    from contrastkit.modalities.tabular.sources import TabularEncoder

    rng = np.random.default_rng(2)
    table = {"x": np.array([repr(float(v)) for v in rng.lognormal(size=50) / 3]), "c": rng.choice(["a", "bb", "c"], 50)}
    fitted = TabularEncoder(categorical=["c"], numeric=["x"], clip=5.0).fit(table)
    again = TabularEncoder.from_state(fitted.state())
    other = {"x": np.array(["0.1", "7e9"]), "c": np.array(["bb", "unseen"])}
    for rows in (table, other):
        np.testing.assert_array_equal(again.transform(rows), fitted.transform(rows))
    with pytest.raises(DataError, match="numeric columns"):
        TabularEncoder.from_state({**fitted.state(), "median": [1.0, 2.0]})


def test_a_run_without_its_weights_says_to_resume_it(table_run, tmp_path):
    import contrastkit

    run, _ = table_run
    broken = tmp_path / "broken"
    shutil.copytree(run, broken)
    (broken / "model.safetensors").unlink()
    with pytest.raises(DataError, match="--resume"):
        contrastkit.load(broken)
    (broken / "command.yaml").unlink()  # as a run fitted from Python, which the command line cannot continue
    with pytest.raises(DataError, match=r"fit\(x, out=.*resume=True\)"):
        contrastkit.load(broken)
