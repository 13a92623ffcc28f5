"""The persistent search index (contrastkit.evaluation.search_index) and the run encoders that fill
it (contrastkit.evaluation.run_encoders): results against numpy's exact ranking, an indexed sample
found first when it is the query, and an update that embeds only the new samples (counted at the
encoder) and then equals an index built from scratch."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from contrastkit.core.errors import ConfigError, DataError
from contrastkit.evaluation.run_encoders import run_encoder
from contrastkit.evaluation.search_index import SearchIndex, index_collection, run_reference
from tests.conftest import requires_minilm


def exported_image_run(folder, image_size: int = 8, channels: int = 3):
    """A tiny untrained small-cnn written as 'contrastkit export' writes one (no training needed)."""
    from contrastkit.modalities.image.encoders import build_encoder
    from contrastkit.modalities.image.export import FORMAT

    torch.manual_seed(0)
    backbone = build_encoder("small-cnn", in_channels=channels, image_size=image_size, width=0.25)
    folder.mkdir(parents=True)
    save_file({k: v.contiguous().clone() for k, v in backbone.state_dict().items()}, folder / "model.safetensors")
    (folder / "config.json").write_text(json.dumps({
        "format": FORMAT, "format_version": 1, "architecture": "small-cnn", "in_channels": channels,
        "image_size": image_size, "width": 0.25, "mean": [0.5] * channels, "std": [0.25] * channels,
        "output_dim": backbone.output_dim}))
    return folder


def write_images(folder, names, size: int = 8, seed: int = 0):
    rng = np.random.default_rng(seed)
    for name in names:
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8)).save(path)


def unit(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_search_equals_numpys_exact_cosine_ranking(tmp_path):
    rng = np.random.default_rng(0)
    corpus, queries = rng.normal(size=(40, 6)), rng.normal(size=(5, 6))
    expected = np.argsort(-(unit(queries) @ unit(corpus).T), axis=1, kind="stable")[:, :4]
    for kind in ("flat", "hnsw"):  # HNSW is exact on 40 rows with efSearch 128
        index = SearchIndex(6, kind)
        index.add(corpus, [f"doc{i}" for i in range(40)])
        index.save(tmp_path / kind)
        scores, ids = SearchIndex.load(tmp_path / kind).search(queries, k=4)
        assert ids == [[f"doc{i}" for i in row] for row in expected]
        np.testing.assert_allclose(scores, np.take_along_axis(unit(queries) @ unit(corpus).T, expected, 1), atol=1e-5)


def test_ids_must_be_unique_and_dimensions_agree():
    index = SearchIndex(3)
    index.add(np.eye(3), ["a", "b", "c"])
    with pytest.raises(DataError, match="unique"):
        index.add(np.ones((1, 3)), ["b"])
    with pytest.raises(DataError, match="unique"):
        index.add(np.ones((2, 3)), ["d", "d"])
    with pytest.raises(DataError, match="dimension"):
        index.add(np.ones((1, 4)), ["e"])
    with pytest.raises(ConfigError, match="kind"):
        SearchIndex(3, "ivf")


def test_an_indexed_image_is_its_own_nearest_sample(tmp_path):
    run = exported_image_run(tmp_path / "export")
    write_images(tmp_path / "images", [f"{c}/{i}.png" for c in ("cat", "dog") for i in range(4)])
    encoder = run_encoder(run)
    index, embedded = index_collection(encoder, str(tmp_path / "images"), tmp_path / "index",
                                       run=run_reference(run))
    assert embedded == 8 and index.metadata["modality"] == "image"
    for sample_id in index.ids:
        query = encoder.read_query(str(tmp_path / "images" / sample_id))
        scores, ids = SearchIndex.load(tmp_path / "index").search(encoder.embed(query, [0]), k=3)
        assert ids[0][0] == sample_id and scores[0][0] == pytest.approx(1.0, abs=1e-5)


def test_an_update_embeds_only_the_new_samples_and_equals_a_fresh_index(tmp_path):
    run = exported_image_run(tmp_path / "export")
    images = tmp_path / "images"
    write_images(images, ["b/1.png", "b/3.png", "d/1.png"], seed=1)
    encoder = run_encoder(run)
    embedded_rows = []
    encode = encoder.encode
    encoder.encode = lambda batch: (embedded_rows.append(len(batch)), encode(batch))[1]
    index_collection(encoder, str(images), tmp_path / "grown", run=run_reference(run))
    assert sum(embedded_rows) == 3
    write_images(images, ["a/1.png", "b/2.png", "d/2.png"], seed=2)  # new files sort between the old ones
    embedded_rows.clear()
    grown, embedded = index_collection(encoder, str(images), tmp_path / "grown", run=run_reference(run), update=True)
    assert embedded == 3 and sum(embedded_rows) == 3  # the encoder saw only the three new images
    fresh, _ = index_collection(run_encoder(run), str(images), tmp_path / "fresh", run=run_reference(run))
    grown = SearchIndex.load(tmp_path / "grown")
    assert sorted(grown.ids) == sorted(fresh.ids) and len(grown) == 6
    by_id = dict(zip(grown.ids, grown.embeddings()))
    np.testing.assert_allclose(np.stack([by_id[i] for i in fresh.ids]), fresh.embeddings(), atol=1e-6)
    queries = fresh.embeddings()
    assert grown.search(queries, k=6)[1] == fresh.search(queries, k=6)[1]
    assert grown.metadata["data"] == [str(images)] * 2


def test_an_update_needs_the_same_run_and_a_new_index_never_overwrites(tmp_path):
    run = exported_image_run(tmp_path / "export")
    write_images(tmp_path / "images", ["a.png", "b.png"])
    encoder = run_encoder(run)
    index_collection(encoder, str(tmp_path / "images"), tmp_path / "index", run=run_reference(run))
    with pytest.raises(ConfigError, match="already holds"):
        index_collection(encoder, str(tmp_path / "images"), tmp_path / "index", run=run_reference(run))
    with pytest.raises(ConfigError, match="same encoder"):
        index_collection(encoder, str(tmp_path / "images"), tmp_path / "index", run="another-run", update=True)


@requires_minilm
def test_a_text_collection_is_searched_by_a_sentence(tmp_path):
    from contrastkit.modalities.text.encoders import small_random_encoder

    small_random_encoder(hidden_size=32, layers=1, heads=2).save(tmp_path / "model")
    sentences = ["the cat sat on the mat", "stock markets fell sharply", "a recipe for lentil soup",
                 "proteins fold into shapes", "the striker scored twice"]
    (tmp_path / "texts.txt").write_text("\n".join(sentences) + "\n")
    encoder = run_encoder(tmp_path / "model")
    assert encoder.modality == "text"
    index, _ = index_collection(encoder, str(tmp_path / "texts.txt"), tmp_path / "index",
                                run=run_reference(tmp_path / "model"))
    for row, sentence in enumerate(sentences):
        _, ids = index.search(encoder.embed(encoder.read_query(sentence), [0]), k=2)
        assert ids[0][0] == str(row)


def test_runs_of_other_modalities_point_to_their_embeddings(tmp_path):
    (tmp_path / "tabular").mkdir()
    (tmp_path / "tabular" / "command.yaml").write_text("method: scarf\n")
    with pytest.raises(ConfigError, match="--embeddings"):
        run_encoder(tmp_path / "tabular")
