"""`contrastkit export --format onnx`: the ONNX graph of an image or text encoder, run by
onnxruntime, embeds real samples as the PyTorch encoder does (cosine > 0.9999 per row); the
export folder is also a safetensors + config folder that contrastkit.load reads back (issue 27).

The tests use a few hundred samples for speed; benchmarks/onnx_export.py checks 1,000 per kind.
"""

from __future__ import annotations

import gzip
import itertools

import numpy as np
import pytest
import torch

import contrastkit
from contrastkit.cli import main
from contrastkit.core.errors import ConfigError
from contrastkit.onnx_export import MIN_COSINE, check_agreement, row_cosines
from tests.conftest import data_path, module_available, requires_minilm

pytestmark = pytest.mark.skipif(not module_available("onnxruntime") or not module_available("onnxscript"),
                                reason="needs the export extra (onnx, onnxruntime, onnxscript)")


def scifact_sentences(count: int) -> list[str]:
    with gzip.open(data_path("scifact") / "sentences.txt.gz", "rt") as handle:
        return [line.strip() for line in itertools.islice(handle, count)]


@pytest.fixture(scope="module")
def image_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("onnx") / "run"
    assert main(["fit", "--method", "simclr", "--modality", "image", "--data", "digits", "--limit", "256",
                 "--holdout", "0", "--backbone", "small-cnn", "--max-steps", "2", "--batch-size", "64",
                 "--no-report", "--no-baselines", "--out", str(out)]) == 0
    return out


def test_image_onnx_embeds_real_images_as_pytorch(image_run, tmp_path):
    from contrastkit.modalities.image.onnx import OnnxImageEncoder
    from contrastkit.modalities.image.sources import open_image_source

    folder = tmp_path / "encoder"
    assert main(["export", "--checkpoint", str(image_run / "checkpoints" / "last.ckpt"), "--format", "onnx",
                 "--out", str(folder)]) == 0
    images = open_image_source("digits").images[:300]
    method = contrastkit.load(image_run)  # the trained method: its own embed, not the export
    with torch.inference_mode():
        expected = method.embed(images).numpy()
    onnx = OnnxImageEncoder(folder, threads=1)
    actual = onnx.embed(images.numpy(), batch_size=37)  # uneven batches: the batch axis is dynamic
    assert row_cosines(expected, actual).min() > MIN_COSINE
    # The same folder is a safetensors + config.json export that contrastkit.load reads back.
    reloaded = contrastkit.load(folder)
    with torch.inference_mode():
        assert torch.equal(reloaded(images), torch.from_numpy(expected))


def test_a_plain_export_over_an_onnx_one_drops_the_stale_graph(image_run, tmp_path):
    checkpoint = str(image_run / "checkpoints" / "last.ckpt")
    assert main(["export", "--checkpoint", checkpoint, "--format", "onnx", "--out", str(tmp_path / "e")]) == 0
    assert main(["export", "--checkpoint", checkpoint, "--overwrite", "--out", str(tmp_path / "e")]) == 0
    assert not (tmp_path / "e" / "model.onnx").exists()


@requires_minilm
def test_text_onnx_embeds_real_sentences_as_pytorch(tmp_path):
    from contrastkit.modalities.text.encoders import TextEncoder, small_random_encoder
    from contrastkit.modalities.text.onnx import OnnxTextEncoder, export_text_onnx

    encoder = small_random_encoder(max_length=48).eval()
    encoder.normalize = True
    folder = encoder.save(tmp_path / "model")
    export_text_onnx(encoder, folder)
    sentences = scifact_sentences(300)  # lengths from a few tokens to past max_length (truncated)
    expected = encoder.encode(sentences, batch_size=32).numpy()
    actual = OnnxTextEncoder(folder, threads=1).encode(sentences, batch_size=29)
    assert row_cosines(expected, actual).min() > MIN_COSINE
    reloaded = contrastkit.load(folder)
    assert isinstance(reloaded, TextEncoder)
    assert torch.equal(reloaded.encode(sentences[:20]), encoder.encode(sentences[:20]))


@requires_minilm
@pytest.mark.slow
def test_minilm_exports_through_the_command(tmp_path):
    from contrastkit.modalities.text.encoders import load_text_encoder
    from contrastkit.modalities.text.onnx import OnnxTextEncoder

    folder = tmp_path / "minilm"
    assert main(["export", "--text-model", "minilm", "--format", "onnx", "--out", str(folder)]) == 0
    sentences = scifact_sentences(200)
    expected = load_text_encoder("minilm").encode(sentences).numpy()
    assert row_cosines(expected, OnnxTextEncoder(folder, threads=1).encode(sentences)).min() > MIN_COSINE


@requires_minilm
def test_a_graph_of_another_encoder_fails_the_check(tmp_path):
    from contrastkit.modalities.text.encoders import small_random_encoder
    from contrastkit.modalities.text.onnx import OnnxTextEncoder, export_text_onnx

    first, second = small_random_encoder(seed=0).eval(), small_random_encoder(seed=1).eval()
    folder = first.save(tmp_path / "first")
    export_text_onnx(first, folder)
    sentences = scifact_sentences(10)
    with pytest.raises(ConfigError, match="does not embed as the PyTorch encoder"):
        check_agreement(second.encode(sentences).numpy(), OnnxTextEncoder(folder).encode(sentences), folder)


def test_row_cosines_against_a_loop():
    a, b = np.random.default_rng(0).normal(size=(2, 5, 7))
    expected = [float(a[i] @ b[i] / np.sqrt((a[i] @ a[i]) * (b[i] @ b[i]))) for i in range(5)]
    np.testing.assert_allclose(row_cosines(a, b), expected, rtol=1e-12)
