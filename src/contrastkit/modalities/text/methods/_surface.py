"""The surface form of sentences for DebCSE: how alike two sentences look, and edits that change it.

Surface similarity ignores meaning; it measures what a model can pick up without understanding
the sentences (Miao et al., CIKM 2023, call the resulting shortcuts *length bias*). With ``a`` and
``b`` the lower-cased word tokens (``\\w+``) of two sentences::

    length_similarity(a, b) = min(|a|, |b|) / max(|a|, |b|)
    token_overlap(a, b)     = |set(a) & set(b)| / |set(a) | set(b)|          (Jaccard)
    surface_similarity      = (length_similarity + token_overlap) / 2      ("mixed", the default)

all in [0, 1], with 1 for two empty sentences. A sentence and itself score 1.

The edits change a sentence's length, so that positive candidates differ in surface form:
``delete_words`` drops each word with probability ``rate`` (keeping at least one);
``repeat_words`` duplicates 1 .. max(1, round(rate * n)) randomly chosen words in place (ESimCSE's
word repetition, Wu et al., COLING 2022). Randomness comes from torch's global generator, which
the training loop reseeds at every step, so a resumed run draws the same edits.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import torch

from contrastkit.core.errors import ConfigError

SURFACE_MEASURES = ("mixed", "length", "overlap")
_WORD = re.compile(r"\w+")


def words(text: str) -> list[str]:
    """Lower-cased word tokens (runs of letters, digits and underscores)."""
    return _WORD.findall(text.lower())


def length_similarity(a: Sequence[str], b: Sequence[str]) -> float:
    longest = max(len(a), len(b))
    return 1.0 if longest == 0 else min(len(a), len(b)) / longest


def token_overlap(a: Sequence[str], b: Sequence[str]) -> float:
    union = set(a) | set(b)
    return 1.0 if not union else len(set(a) & set(b)) / len(union)


def surface_similarity(first: str, second: str, measure: str = "mixed") -> float:
    """How alike two sentences look, in [0, 1]; see the module docstring."""
    a, b = words(first), words(second)
    if measure == "length":
        return length_similarity(a, b)
    if measure == "overlap":
        return token_overlap(a, b)
    if measure == "mixed":
        return (length_similarity(a, b) + token_overlap(a, b)) / 2
    raise ConfigError(f"Unknown surface similarity '{measure}'. Valid measures: {', '.join(SURFACE_MEASURES)}.")


def surface_similarity_matrix(rows: Sequence[str], columns: Sequence[str], measure: str = "mixed") -> torch.Tensor:
    """(len(rows), len(columns)) float32 matrix of ``surface_similarity(rows[i], columns[j])``."""
    return torch.tensor([[surface_similarity(r, c, measure) for c in columns] for r in rows], dtype=torch.float32)


def delete_words(text: str, rate: float) -> str:
    """Drop each whitespace-separated word with probability ``rate``; at least one word is kept."""
    tokens = text.split()
    if len(tokens) < 2:
        return text
    keep = torch.rand(len(tokens)) >= rate
    if not bool(keep.any()):
        keep[torch.randint(len(tokens), ())] = True
    return " ".join(t for t, k in zip(tokens, keep.tolist(), strict=True) if k)


def repeat_words(text: str, rate: float) -> str:
    """Duplicate 1 .. max(1, round(rate * n)) distinct randomly chosen words in place."""
    tokens = text.split()
    if not tokens:
        return text
    most = max(1, round(rate * len(tokens)))
    count = int(torch.randint(1, most + 1, ()))
    chosen = set(torch.randperm(len(tokens))[:count].tolist())
    edited: list[str] = []
    for position, token in enumerate(tokens):
        edited.append(token)
        if position in chosen:
            edited.append(token)
    return " ".join(edited)
