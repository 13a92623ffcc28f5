"""Two towers over two modalities' self-supervised methods (issue 24's spoken digit <-> image retrieval):
clips collate as the audio sources batch them, a method embeds inside a tower as it embeds alone,
every encoder weight trains and nothing else of the method does, and retrieval by label equals a
ranking written out by hand."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from contrastkit.core.errors import ConfigError, DataError
from contrastkit.modalities.audio.cli import DEFAULTS
from contrastkit.modalities.audio.methods import simclr as audio_simclr
from contrastkit.modalities.audio.sources import AudioClips
from contrastkit.modalities.audio.tower import ClipInput
from contrastkit.modalities.image.config import FitConfig
from contrastkit.modalities.image.methods import build_method
from contrastkit.modalities.image.methods.parts import DataInfo
from contrastkit.modalities.pairs.method import TwoTowerMethod
from contrastkit.modalities.pairs.pairs import Pairs
from contrastkit.modalities.pairs.retrieval import label_retrieval
from contrastkit.modalities.pairs.towers import EmbeddingTower, TensorInput
from contrastkit.modalities.pairs.two_tower import TwoTowerOptions, build_two_tower

RATE = 8000
DIGITS = DataInfo(channels=1, image_size=8, mean=(0.5,), std=(0.25,), num_samples=100)


def clips_of(lengths: list[int], seed: int = 0) -> AudioClips:
    rng = np.random.default_rng(seed)
    samples = (0.1 * rng.standard_normal(sum(lengths))).astype(np.float32)
    return AudioClips(samples, np.concatenate([[0], np.cumsum(lengths)]), RATE, [f"{i}.wav" for i in range(len(lengths))])


def audio_method() -> torch.nn.Module:
    torch.manual_seed(0)
    return audio_simclr.build({**DEFAULTS, "width": 16, "depth": 2, "projection_dim": 8, "crop_seconds": 0.2}, RATE)


def image_method() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_method("simclr", FitConfig(method="simclr", backbone="small-cnn", width=0.25), DIGITS)


def test_clip_input_collates_as_the_audio_sources_batch_clips():
    clips = clips_of([3000, 1200, 2500])
    batch = ClipInput().collate([clips.clip(i) for i in range(3)])
    waves, lengths = clips.batch([0, 1, 2])
    assert torch.equal(batch["wave"], torch.from_numpy(waves))
    assert torch.equal(batch["length"], torch.from_numpy(lengths))
    # and as written out: each clip, then zeros to the longest (3000 samples)
    assert batch["length"].tolist() == [3000, 1200, 2500] and batch["wave"].shape == (3, 3000)
    for row in range(3):
        clip = torch.from_numpy(clips.clip(row))
        assert torch.equal(batch["wave"][row, :len(clip)], clip) and not batch["wave"][row, len(clip):].any()
    with pytest.raises(DataError, match="mono"):
        ClipInput().collate([np.zeros((2, 100), dtype=np.float32)])


def test_a_method_embeds_in_its_tower_as_it_embeds_the_same_batch_and_only_its_encoder_learns():
    method = audio_method().eval()
    clips = clips_of([3000, 1200, 2500])
    waves, lengths = clips.batch([0, 1, 2])
    direct = method.embed({"wave": torch.from_numpy(waves), "length": torch.from_numpy(lengths)})
    tower = EmbeddingTower(method)
    assert tower.output_dim == 16
    assert torch.equal(tower(ClipInput().collate([clips.clip(i) for i in range(3)])), direct)
    tower(ClipInput().collate([clips.clip(i) for i in range(3)])).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in method.encoder.parameters())
    assert all(p.grad is None for p in method.projection.parameters())
    with pytest.raises(ConfigError, match="output_dim"):
        EmbeddingTower(torch.nn.Linear(2, 2))


def test_uint8_images_stay_uint8_and_embed_as_their_unit_floats():
    method = image_method().eval()
    images = [torch.randint(0, 256, (1, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(i))
              for i in range(4)]
    kept = TensorInput(dtype=None).collate(images)
    assert kept.dtype == torch.uint8
    tower = EmbeddingTower(method)
    scaled = TensorInput().collate([image.float() / 255 for image in images])
    torch.testing.assert_close(tower(kept), method.embed(scaled), rtol=1e-5, atol=1e-6)


def test_one_two_tower_step_moves_both_encoders_and_heads_but_not_the_projections():
    audio, image = audio_method(), image_method()
    model = build_two_tower(EmbeddingTower(audio), EmbeddingTower(image), TwoTowerOptions(embedding_dim=8))
    method = TwoTowerMethod(model, ClipInput(), TensorInput(dtype=None), head_lr_scale=1.0)
    clips = clips_of([2000, 1500, 1800, 2400], seed=1)
    images = [torch.randint(0, 256, (1, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(i))
              for i in range(4)]
    pairs = Pairs([clips.clip(i) for i in range(4)], images, [str(i) for i in range(4)])
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    loss, _ = method.training_loss(list(zip(pairs.first, pairs.second, strict=True)))
    loss.backward()
    optimizer.step()
    moved = {name for name, p in model.named_parameters() if not torch.equal(p, before[name])}
    assert any(name.startswith("encoder_a.method.encoder.") for name in moved)
    assert any(name.startswith("encoder_b.method.backbone.") for name in moved)
    assert {"head_a.weight", "head_b.weight"} <= moved
    assert not any(".projection." in name for name in moved)


def naive_label_retrieval(queries, query_labels, corpus, corpus_labels):
    queries = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    corpus = corpus / np.linalg.norm(corpus, axis=1, keepdims=True)
    hits, reciprocal = [], []
    for q in range(len(queries)):
        order = sorted(range(len(corpus)), key=lambda c: -float(queries[q] @ corpus[c]))
        rank = next(r for r, c in enumerate(order, start=1) if corpus_labels[c] == query_labels[q])
        hits.append(rank == 1)
        reciprocal.append(1.0 / rank)
    return float(np.mean(hits)), float(np.mean(reciprocal))


def test_label_retrieval_equals_a_ranking_written_out_by_hand():
    rng = np.random.default_rng(3)
    first, second = rng.standard_normal((30, 6)), rng.standard_normal((45, 6))
    first_labels, second_labels = rng.integers(0, 4, 30).tolist(), (list(range(4)) * 12)[:45]
    result = label_retrieval(first, second, first_labels, second_labels)
    for direction, (q, ql, c, cl) in {"first_to_second": (first, first_labels, second, second_labels),
                                       "second_to_first": (second, second_labels, first, first_labels)}.items():
        r1, mrr = naive_label_retrieval(q, ql, c, cl)
        assert result[direction]["r@1"] == pytest.approx(r1)
        assert result[direction]["mrr"] == pytest.approx(mrr)
        assert (result[direction]["queries"], result[direction]["corpus"]) == (len(q), len(c))
    with pytest.raises(DataError, match="never occur"):
        label_retrieval(first, second[:2], first_labels, [0, 1])
    with pytest.raises(DataError, match="never occur"):  # 1 and "1" are different labels
        label_retrieval(first[:2], second[:2], [0, 1], [0, "1"])
