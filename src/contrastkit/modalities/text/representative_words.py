"""Representative words of a document, sampled as B-PROP builds its ROP task.

B-PROP (Ma, Guo, Zhang, Fan, Ji & Cheng, "B-PROP: Bootstrapped Pre-training with Representative Words
Prediction for Ad-hoc Retrieval", SIGIR 2021, https://arxiv.org/abs/2104.09791) replaces PROP's unigram
document language model by one read from BERT itself, and contrasts it with a random process in the
spirit of divergence from randomness (DFR). For a document d with words w (a word is the token-id
sequence of one pre-tokenised word; special tokens are not words):

1. **[CLS] attention.** ``a_t``: the attention of the [CLS] token to position t in the last layer,
   averaged over the heads (:func:`cls_attention`).
2. **Document term distribution.** Each occurrence of w contributes the attention of its first
   sub-word; the occurrences are summed and saturated (B-PROP's ``k`` saturation, k = 0.01), then
   normalised over the document's words::

       A_w = sum_{occurrences of w} a_first(w),   S_w = A_w / (A_w + k),   P(w|d) = S_w / sum_v S_v

3. **Corpus language model** (:class:`CorpusLanguageModel`): ``P(w|C) = tf(w, C) / sum_v tf(v, C)``,
   term frequencies over the training corpus, a word never seen counted once.
4. **Contrast (DFR).** The informative content of w, ``-log2 P(w|C)``, weighted by its probability in
   the document, capped at 100 as B-PROP does; the representative distribution is a softmax of it over
   the document's alphabetic words (temperature T = 1, B-PROP's ``entropy`` method)::

       r_w = min( P(w|d) * (-log2 P(w|C)), 100 ),      P_rep(w|d) = exp(r_w / T) / sum_v exp(r_v / T)

5. **Word sets.** A length n ~ Poisson(lambda = 3), drawn again until n > 0 (PROP), then two sets of
   n words drawn from P_rep (without replacement when the document has more than n candidate words)
   (:func:`sample_word_sets`).
6. **Likelihood of a set** (query likelihood): ``log P(s|d) = sum_{w in s} log P_rep(w|d)``
   (:func:`set_log_likelihood`); of the two sets, the more likely one is the positive. B-PROP ranks
   the two sets by ``sum r_w``; with two sets of the same length the order is the same, since
   ``log P_rep(w|d) = r_w / T - log Z``.

Deviations from the paper, on purpose: B-PROP's random distribution is the expectation of the
documents' attention distributions over the collection; here it is the corpus term frequency (the
classic DFR random model, and free to compute); the attention is that of the encoder being trained,
read at every step, not of the initial BERT read once; words are the tokenizer's pre-tokenised words,
not whitespace-separated ones. Every draw takes a ``torch.Generator`` (None: torch's global one, which
the engine reseeds at every step).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from contrastkit.core.errors import ConfigError

Word = tuple[int, ...]  # the token ids of one pre-tokenised word

SATURATION = 0.01  # B-PROP's "k" saturation: S = A / (A + k)
SCORE_CAP = 100.0  # B-PROP caps the contrast score
MEAN_SET_LENGTH = 3.0  # PROP's Poisson rate


def tokenize_with_words(tokenizer, texts: Sequence[str], max_length: int,
                        pair_with: Sequence[str] | None = None) -> tuple[dict[str, Tensor], list[list[int | None]]]:
    """The padded, truncated tokens of ``texts`` and, per row, the word index of every position
    (None for special tokens and padding). A fast tokenizer is needed (it knows the words)."""
    if not getattr(tokenizer, "is_fast", False):
        raise ConfigError("Representative words need a fast (Rust) tokenizer, which knows which tokens make a word; "
                          f"{type(tokenizer).__name__} is not one.")
    encoding = tokenizer(list(texts), padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    return dict(encoding), [encoding.word_ids(row) for row in range(len(texts))]


def words_of(input_ids: Sequence[int], word_ids: Sequence[int | None]) -> tuple[list[Word], list[int]]:
    """``(words, first positions)``: the words of one tokenised row in order of appearance (with
    repeats) and the position of each one's first sub-word."""
    words: list[Word] = []
    firsts: list[int] = []
    current: int | None = None
    for position, (token, word) in enumerate(zip(input_ids, word_ids)):
        if word is None:
            current = None
            continue
        if word != current:
            words.append((int(token),))
            firsts.append(position)
            current = word
        else:
            words[-1] = words[-1] + (int(token),)
    return words, firsts


@torch.no_grad()
def cls_attention(transformer: nn.Module, tokens: dict[str, Tensor]) -> Tensor:
    """(B, L): the [CLS] token's attention to every position in the last layer, averaged over heads.

    Computed from the last layer's input and its query and key projections (a BERT-family layer,
    ``encoder.layer[-1].attention.self``), so that it does not depend on the attention
    implementation the model runs (SDPA returns no weights). Padding gets 0."""
    layer = transformer.encoder.layer[-1].attention.self
    inputs = {k: v.to(next(transformer.parameters()).device) for k, v in tokens.items()
              if k in ("input_ids", "attention_mask", "token_type_ids")}
    hidden = transformer(**inputs, output_hidden_states=True).hidden_states[-2]
    batch, length, _ = hidden.shape
    heads, size = layer.num_attention_heads, layer.attention_head_size
    query = layer.query(hidden[:, :1]).view(batch, 1, heads, size).transpose(1, 2)  # (B, H, 1, d)
    key = layer.key(hidden).view(batch, length, heads, size).transpose(1, 2)  # (B, H, L, d)
    scores = (query @ key.transpose(-1, -2)).squeeze(2) / math.sqrt(size)  # (B, H, L)
    padding = inputs["attention_mask"][:, None, :] == 0
    scores = scores.float().masked_fill(padding, float("-inf"))
    return scores.softmax(-1).mean(1)


def document_term_distribution(attention: Tensor, word_index: Tensor, num_words: int,
                               saturation: float | None = SATURATION) -> Tensor:
    """``P(w|d)`` (num_words,): the attention of each word's first sub-words (``attention`` (P,) at
    those positions, ``word_index`` (P,) the distinct word each belongs to) summed per word,
    saturated ``A / (A + k)`` (None: not saturated), normalised."""
    summed = torch.zeros(num_words, dtype=torch.float64).index_add_(0, word_index, attention.double())
    if saturation is not None:
        summed = summed / (summed + saturation)
    return summed / summed.sum().clamp_min(1e-300)


@dataclass
class CorpusLanguageModel:
    """``P(w|C)``: term frequencies over a corpus (words as token-id tuples); a word never seen
    counts once, so its informative content is the largest, and finite."""

    counts: Counter
    total: int

    @classmethod
    def from_texts(cls, tokenizer, texts: Iterable[str], batch_size: int = 1024) -> CorpusLanguageModel:
        """Count the words of ``texts``, whole (no truncation)."""
        texts = list(texts)
        counts: Counter = Counter()
        for start in range(0, len(texts), batch_size):
            encoding = tokenizer(texts[start:start + batch_size], add_special_tokens=False, truncation=False)
            for row, ids in enumerate(encoding["input_ids"]):
                counts.update(words_of(ids, encoding.word_ids(row))[0])
        return cls(counts, sum(counts.values()))

    def probabilities(self, words: Sequence[Word]) -> Tensor:
        if self.total == 0:
            raise ConfigError("The corpus language model counted no words: train on text with words in it.")
        return torch.tensor([max(self.counts.get(w, 0), 1) / self.total for w in words], dtype=torch.float64)


def representative_distribution(document_probabilities: Tensor, corpus_probabilities: Tensor,
                                temperature: float = 1.0, cap: float = SCORE_CAP) -> Tensor:
    """``log P_rep(w|d)`` over the given words: ``log softmax( min(P(w|d) * -log2 P(w|C), cap) / T )``
    (the module docstring, step 4)."""
    contrast = (document_probabilities * -torch.log2(corpus_probabilities)).clamp_max(cap)
    return torch.log_softmax(contrast / temperature, dim=0)


def set_log_likelihood(log_probabilities: Tensor, word_set: Tensor) -> float:
    """``sum_{w in s} log P_rep(w|d)`` for the word positions ``word_set`` (a word drawn twice counts twice)."""
    return float(log_probabilities[word_set].sum())


def sample_set_length(mean_length: float = MEAN_SET_LENGTH, generator: torch.Generator | None = None) -> int:
    """n ~ Poisson(mean_length), drawn again until n > 0."""
    rate = torch.tensor([float(mean_length)], dtype=torch.float64)
    while True:
        n = int(torch.poisson(rate, generator=generator).item())
        if n > 0:
            return n


def sample_word_sets(log_probabilities: Tensor, mean_length: float = MEAN_SET_LENGTH,
                     generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """Two sets of the same sampled length n, each n word positions drawn from ``exp(log_probabilities)``
    (without replacement when there are more than n words)."""
    n = sample_set_length(mean_length, generator)
    probabilities = log_probabilities.exp()
    replacement = n >= probabilities.numel()
    first = torch.multinomial(probabilities, n, replacement=replacement, generator=generator)
    second = torch.multinomial(probabilities, n, replacement=replacement, generator=generator)
    return first, second


@dataclass
class DocumentWords:
    """One document's candidate words (alphabetic, distinct) and their ``log P_rep(w|d)``."""

    words: list[Word]
    log_probabilities: Tensor


def representative_words(attention: Tensor, input_ids: Sequence[int], word_ids: Sequence[int | None],
                         corpus: CorpusLanguageModel, is_candidate, temperature: float = 1.0,
                         saturation: float | None = SATURATION) -> DocumentWords | None:
    """The representative distribution of one tokenised document (``attention`` (L,) its [CLS]
    attention row); ``is_candidate(word)`` says which words may be sampled (B-PROP: alphabetic
    ones). None when the document has no candidate word."""
    words, firsts = words_of(input_ids, word_ids)
    distinct = list(dict.fromkeys(words))
    index = {w: i for i, w in enumerate(distinct)}
    word_index = torch.tensor([index[w] for w in words], dtype=torch.long)
    in_document = document_term_distribution(attention[torch.tensor(firsts, dtype=torch.long)].cpu(), word_index,
                                              len(distinct), saturation)
    keep = [i for i, w in enumerate(distinct) if is_candidate(w)]
    if not keep:
        return None
    candidates = [distinct[i] for i in keep]
    log_probabilities = representative_distribution(in_document[keep], corpus.probabilities(candidates), temperature)
    return DocumentWords(candidates, log_probabilities)


class WordSpelling:
    """The text of a word (token-id tuple), decoded once and kept; ``is_alphabetic`` is B-PROP's filter."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self._spelling: dict[Word, str] = {}

    def __call__(self, word: Word) -> str:
        if word not in self._spelling:
            self._spelling[word] = self.tokenizer.decode(list(word)).strip()
        return self._spelling[word]

    def is_alphabetic(self, word: Word) -> bool:
        return self(word).isalpha()

    def text(self, words: Iterable[Word]) -> str:
        return " ".join(self(w) for w in words)
