"""Token views: each property checked row by row in plain Python against the input batch."""

from __future__ import annotations

import pytest
import torch

from contrastkit.core.errors import ConfigError
from contrastkit.modalities.text import views
from contrastkit.modalities.text.views import TokenVocabulary
from tests.conftest import requires_minilm, requires_transformers

pytestmark = [requires_transformers, requires_minilm]  # every test reads all-MiniLM-L6-v2's tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    from contrastkit.modalities.text.encoders import minilm_folder

    return AutoTokenizer.from_pretrained(str(minilm_folder()), local_files_only=True)


@pytest.fixture(scope="module")
def vocabulary(tokenizer):
    return TokenVocabulary.from_tokenizer(tokenizer)


def synthetic_batch(vocabulary: TokenVocabulary, lengths: list[int], seed: int = 0) -> dict[str, torch.Tensor]:
    """[CLS] c_1 .. c_n [SEP] [PAD]... rows with random ordinary content ids, like a BERT tokenizer's."""
    generator = torch.Generator().manual_seed(seed)
    width = max(lengths) + 2
    ids = torch.full((len(lengths), width), vocabulary.pad_id)
    mask = torch.zeros_like(ids)
    for row, n in enumerate(lengths):
        picks = torch.randint(0, vocabulary.ordinary_ids.numel(), (n,), generator=generator)
        ids[row, 0] = 101
        ids[row, 1:n + 1] = vocabulary.ordinary_ids[picks]
        ids[row, n + 1] = 102
        mask[row, : n + 2] = 1
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)}


def rows(tokens) -> list[list[int]]:
    """The real tokens of each row (attention mask 1), checking they come before any padding."""
    result = []
    for ids, mask in zip(tokens["input_ids"].tolist(), tokens["attention_mask"].tolist(), strict=True):
        n = sum(mask)
        assert mask == [1] * n + [0] * (len(mask) - n), "real tokens must come first, then padding"
        assert all(i == 0 for i in ids[n:]), "padding positions hold [PAD]"
        result.append(ids[:n])
    return result


def content(row: list[int], vocabulary: TokenVocabulary) -> list[int]:
    special = set(vocabulary.special_ids.tolist())
    return [i for i in row if i not in special]


def is_contiguous_sub_span(span: list[int], whole: list[int]) -> bool:
    return any(whole[s:s + len(span)] == span for s in range(len(whole) - len(span) + 1))


def is_subsequence(part: list[int], whole: list[int]) -> bool:
    iterator = iter(whole)
    return all(token in iterator for token in part)


def test_crop_is_a_contiguous_sub_span_of_the_right_length(vocabulary):
    batch = synthetic_batch(vocabulary, [40, 7, 1, 100, 23, 60])
    originals = rows(batch)
    for seed in range(5):
        cropped = views.random_crop(batch, vocabulary, 0.1, 0.5, generator=torch.Generator().manual_seed(seed))
        for before, after in zip(originals, rows(cropped), strict=True):
            assert after[0] == 101 and after[-1] == 102  # [CLS] ... [SEP] kept around the span
            whole, span = content(before, vocabulary), content(after, vocabulary)
            assert is_contiguous_sub_span(span, whole)
            n = len(whole)
            assert max(1, round(0.1 * n) - 1) <= len(span) <= max(1, round(0.5 * n) + 1)
        assert cropped["token_type_ids"].eq(0).all()


def test_crop_respects_max_length_and_spreads_its_start(vocabulary):
    batch = synthetic_batch(vocabulary, [200] * 64)
    cropped = views.random_crop(batch, vocabulary, 0.4, 0.5, generator=torch.Generator().manual_seed(0),
                                max_length=32)
    assert cropped["attention_mask"].sum(1).max() <= 32
    # Starts are uniform over the admissible positions: different rows start in different places.
    starts = {content(rows(batch)[i], vocabulary).index(content(r, vocabulary)[0]) for i, r in enumerate(rows(cropped))}
    assert len(starts) > 20


def test_deletion_rate_and_order(vocabulary):
    batch = synthetic_batch(vocabulary, [2000, 1500])
    deleted = views.delete_tokens(batch, vocabulary, 0.2, generator=torch.Generator().manual_seed(1))
    for before, after in zip(rows(batch), rows(deleted), strict=True):
        assert after[0] == 101 and after[-1] == 102
        whole, kept = content(before, vocabulary), content(after, vocabulary)
        assert is_subsequence(kept, whole)
        assert abs(1 - len(kept) / len(whole) - 0.2) < 0.03


def test_deletion_never_empties_a_row(vocabulary):
    batch = synthetic_batch(vocabulary, [3, 1, 5])
    deleted = views.delete_tokens(batch, vocabulary, 1.0, generator=torch.Generator().manual_seed(0))
    for before, after in zip(rows(batch), rows(deleted), strict=True):
        assert len(content(after, vocabulary)) == 1
        assert content(after, vocabulary)[0] in content(before, vocabulary)


@pytest.mark.parametrize("view", ["mask", "replace"])
def test_masking_and_replacement_rates_leave_specials_and_padding(vocabulary, view):
    batch = synthetic_batch(vocabulary, [3000, 2500, 10])
    augmented = views.augment(batch, vocabulary, view, 0.15, generator=torch.Generator().manual_seed(2))
    assert torch.equal(augmented["attention_mask"], batch["attention_mask"])
    special = set(vocabulary.special_ids.tolist())
    changed, total = 0, 0
    for row, (before, after) in enumerate(zip(batch["input_ids"].tolist(), augmented["input_ids"].tolist(), strict=True)):
        for position, (b, a) in enumerate(zip(before, after, strict=True)):
            if b in special or batch["attention_mask"][row, position] == 0:
                assert a == b  # [CLS], [SEP], [PAD] untouched
                continue
            total += 1
            if a != b:
                changed += 1
                assert a == vocabulary.mask_id if view == "mask" else a not in special
    assert abs(changed / total - 0.15) < 0.02


def test_shuffle_permutes_content_only(vocabulary):
    batch = synthetic_batch(vocabulary, [50, 30, 12])
    shuffled = views.shuffle_tokens(batch, vocabulary, 1.0, generator=torch.Generator().manual_seed(3))
    for before, after in zip(rows(batch), rows(shuffled), strict=True):
        assert after[0] == 101 and after[-1] == 102 and len(after) == len(before)
        assert sorted(after) == sorted(before)
        assert after != before
    partly = views.shuffle_tokens(batch, vocabulary, 0.2, generator=torch.Generator().manual_seed(3))
    moved = (partly["input_ids"] != batch["input_ids"]).float().sum() / batch["attention_mask"].sum()
    assert 0 < moved <= 0.3
    for before, after in zip(rows(batch), rows(partly), strict=True):
        assert sorted(after) == sorted(before)


def test_soft_augmentation_changes_exactly_its_share(vocabulary):
    batch = synthetic_batch(vocabulary, [100, 40])
    augmented = views.augment(batch, vocabulary, "soft", 0.2, generator=torch.Generator().manual_seed(4))
    changed = (augmented["input_ids"] != batch["input_ids"]).sum(1).tolist()
    assert changed == [20, 8]
    assert torch.equal(augmented["input_ids"][:, 0], batch["input_ids"][:, 0])


@pytest.mark.parametrize("name", ["crop", "delete", "replace", "mask", "shuffle", "soft"])
def test_same_seed_same_view_and_input_untouched(vocabulary, name):
    batch = synthetic_batch(vocabulary, [30, 12, 50])
    copy = {k: v.clone() for k, v in batch.items()}

    def view(seed: int):
        generator = torch.Generator().manual_seed(seed)
        if name == "crop":
            return views.random_crop(batch, vocabulary, generator=generator)
        return views.augment(batch, vocabulary, name, 0.3, generator=generator)

    first, again, other = view(7), view(7), view(8)
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert any(first[k].shape != other[k].shape or not torch.equal(first[k], other[k]) for k in first)
    assert all(torch.equal(batch[k], copy[k]) for k in batch)


def test_real_tokenizer_output_and_identity(tokenizer, vocabulary):
    texts = ["A man is playing a guitar on the stage tonight.", "Dropout is the only noise."]
    tokens = dict(tokenizer(texts, padding=True, return_tensors="pt"))
    same = views.identity(tokens)
    assert all(torch.equal(same[k], tokens[k]) and same[k] is not tokens[k] for k in tokens)
    cropped = views.random_crop(tokens, vocabulary, generator=torch.Generator().manual_seed(0))
    for before, after in zip(rows(tokens), rows(cropped), strict=True):
        assert is_contiguous_sub_span(content(after, vocabulary), content(before, vocabulary))


def test_bad_names_and_rates(vocabulary):
    batch = synthetic_batch(vocabulary, [5])
    with pytest.raises(ConfigError, match="Did you mean: delete"):
        views.augment(batch, vocabulary, "delet", 0.1)
    with pytest.raises(ConfigError, match=r"\[0, 1\]"):
        views.delete_tokens(batch, vocabulary, 1.5)
    with pytest.raises(ConfigError, match="min_ratio"):
        views.random_crop(batch, vocabulary, 0.6, 0.5)
