"""B-PROP: bootstrapped pre-training with representative words prediction (Ma, Guo, Zhang, Fan, Ji &
Cheng, "B-PROP: Bootstrapped Pre-training with Representative Words Prediction for Ad-hoc Retrieval",
SIGIR 2021, https://arxiv.org/abs/2104.09791), after PROP (WSDM 2021, https://arxiv.org/abs/2010.10137).

Each step, for every document d of the batch:

1. the encoder's own [CLS] attention (last layer, averaged over heads, no dropout, no gradient) gives
   a document term distribution, contrasted with the corpus language model by divergence from
   randomness into a representative distribution ``P_rep(w|d)``
   (:mod:`contrastkit.modalities.text.representative_words`);
2. two word sets of one length n ~ Poisson(3) are drawn from it; the set with the higher likelihood
   ``sum_{w in s} log P_rep(w|d)`` is the positive ``s+``, the other ``s-`` (a tie, the same words,
   is no example and is left out);
3. the encoder reads each pair as a cross-encoder, ``[CLS] s [SEP] d [SEP]``, with 15 % of the
   document's tokens masked (BERT's 80/10/10), and a linear layer on the [CLS] state scores the pair::

       loss = ROP + mlm_weight * MLM
       ROP  = 1/N sum_i max(0, 1 - score(s+_i, d_i) + score(s-_i, d_i))     (objectives/representative_words.py)
       MLM  = mean cross-entropy of the masked document tokens of both pairs  (objectives/masked_tokens.py)

MiniLM has no MLM head: :class:`~contrastkit.modalities.text.masked_lm.MaskedLMHead` starts untrained,
its decoder tied to the input embeddings, and trains with the method. The relevance layer and the MLM
head are the method's, not the encoder's: what is saved and evaluated is the Transformer with its own
pooling, to be fine-tuned for retrieval afterwards (the paper fine-tunes a BERT cross-encoder; the
benchmark here fine-tunes a bi-encoder, ``benchmarks/text_bprop.py``).

Data: ``--data`` is a corpus. Before training the method reads all of it
(:meth:`BPROP.use_training_data`, which ``contrastkit fit`` calls): the corpus language model counts the
words of every sentence, and the document of a batch row is its sentence with the sentences that follow
it in its document (a BEIR folder or JSONL corpus; a lines file: the line alone), truncated at
``--max-length`` tokens, so the passages cover whole documents at a short length.

Deviations from the paper: the term distribution is read from the encoder as it trains (B-PROP reads it
once from the initial BERT); the random model is the corpus term frequency (B-PROP: the mean attention
distribution of the collection); the word sets are drawn at every step, not pre-generated; MLM is on the
documents of the ROP pairs.

Options (``build(encoder, **options)``):
    mean_set_length: the Poisson rate of a set's length (3, PROP's).
    temperature: of the softmax over the contrast scores (1, B-PROP's).
    saturation: k of the saturation ``A / (A + k)`` of the summed attention (0.01; null: none).
    form: ``hinge`` (PROP's) or ``softmax`` pairwise loss; margin: the hinge's (1.0).
    mlm_probability: share of document tokens masked (0.15); mlm_weight: of the MLM term (1.0; 0: ROP alone).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from contrastkit import objectives
from contrastkit.core.errors import ConfigError, DataError
from contrastkit.core.seeding import seeded
from contrastkit.modalities.text.encoders import TextEncoder
from contrastkit.modalities.text.masked_lm import IGNORE_INDEX, MaskedLMHead, mask_tokens
from contrastkit.modalities.text.methods import check_options
from contrastkit.modalities.text.representative_words import (
    CorpusLanguageModel,
    WordSpelling,
    cls_attention,
    representative_words,
    sample_word_sets,
    set_log_likelihood,
    tokenize_with_words,
)
from contrastkit.nn.distributed import GatheredObjective

DEFAULTS = {"mean_set_length": 3.0, "temperature": 1.0, "saturation": 0.01, "form": "hinge", "margin": 1.0,
            "mlm_probability": 0.15, "mlm_weight": 1.0}


class BPROP(nn.Module):
    """Representative words prediction (a pairwise ranking of two sampled word sets) plus MLM."""

    name = "bprop"
    needs_context = False

    def __init__(self, encoder: TextEncoder, ranking: nn.Module, masked_lm: nn.Module, mean_set_length: float = 3.0,
                 temperature: float = 1.0, saturation: float | None = 0.01, mlm_probability: float = 0.15,
                 mlm_weight: float = 1.0):
        super().__init__()
        self.encoder = encoder
        width, tokenizer = encoder.output_dim, encoder.tokenizer
        embeddings = encoder.transformer.get_input_embeddings().weight
        self.vocab_size = int(embeddings.shape[0])
        with seeded(0):  # the new layers start the same in every run and process
            self.relevance = nn.Linear(width, 1)
            self.mlm_head = MaskedLMHead(width, self.vocab_size, embedding_weight=embeddings)
        self.ranking, self.masked_lm = ranking, masked_lm
        self.mean_set_length, self.temperature, self.saturation = mean_set_length, temperature, saturation
        self.mlm_probability, self.mlm_weight = mlm_probability, mlm_weight
        self.spelling = WordSpelling(tokenizer)
        self.corpus: CorpusLanguageModel | None = None
        self.sentences: list[str] = []
        self.document_end: list[int] = []  # row -> one past the last row of its document

    def use_training_data(self, data) -> None:
        """Count the corpus's words and note where each row's document ends."""
        if not hasattr(data, "document_ids"):
            raise DataError("bprop trains on a corpus (a BEIR folder, a JSONL corpus or a lines file), not on "
                            "labelled rows.")
        self.sentences = list(data.texts)
        ids = data.document_ids if data.document_ids is not None else list(range(len(self.sentences)))
        self.document_end = [0] * len(ids)
        end = len(ids)
        for row in range(len(ids) - 1, -1, -1):
            if row + 1 < len(ids) and ids[row + 1] != ids[row]:
                end = row + 1
            self.document_end[row] = end
        self.corpus = CorpusLanguageModel.from_texts(self.encoder.tokenizer, self.sentences)

    def passage(self, row: int) -> str:
        """Sentence ``row`` and the rest of its document."""
        return " ".join(self.sentences[row:self.document_end[row]])

    def word_set_pairs(self, documents: list[str]) -> tuple[list[str], list[str], list[int], dict[str, float]]:
        """``(positive sets, negative sets, rows)``: the two sampled word sets of each document (as text),
        the more likely first, for the rows that have a preference; and diagnostics."""
        transformer = self.encoder.transformer
        tokens, word_ids = tokenize_with_words(self.encoder.tokenizer, documents, self.length())
        was_training = transformer.training
        transformer.eval()  # the term distribution is read without dropout
        try:
            attention = cls_attention(transformer, tokens)
        finally:
            transformer.train(was_training)
        positives, negatives, rows, gaps, candidates = [], [], [], [], []
        for row in range(len(documents)):
            found = representative_words(attention[row], tokens["input_ids"][row].tolist(), word_ids[row],
                                         self.corpus, self.spelling.is_alphabetic, self.temperature, self.saturation)
            if found is None:
                continue
            first, second = sample_word_sets(found.log_probabilities, self.mean_set_length)
            first_likelihood = set_log_likelihood(found.log_probabilities, first)
            second_likelihood = set_log_likelihood(found.log_probabilities, second)
            if first_likelihood == second_likelihood:  # no preference between the two sets
                continue
            better, worse = (first, second) if first_likelihood > second_likelihood else (second, first)
            positives.append(self.spelling.text(found.words[i] for i in better.tolist()))
            negatives.append(self.spelling.text(found.words[i] for i in worse.tolist()))
            rows.append(row)
            gaps.append(abs(first_likelihood - second_likelihood))
            candidates.append(len(found.words))
        logs = {"rop_pairs": float(len(rows)),
                "likelihood_gap": sum(gaps) / max(1, len(gaps)),
                "candidate_words": sum(candidates) / max(1, len(candidates))}
        return positives, negatives, rows, logs

    def length(self) -> int:
        positions = getattr(self.encoder.transformer.config, "max_position_embeddings", None)
        return min(self.encoder.max_length, int(positions)) if positions else self.encoder.max_length

    def score_masked_pairs(self, word_sets: list[str], documents: list[str]) -> tuple[Tensor, Tensor, Tensor]:
        """``(scores (N,), masked-token logits (M, V), their targets (M,))`` of (set, document) pairs
        read as ``[CLS] set [SEP] document [SEP]`` with the document's tokens masked."""
        tokenizer = self.encoder.tokenizer
        tokens = dict(tokenizer(word_sets, documents, padding=True, truncation="only_second",
                                max_length=self.length(), return_tensors="pt", return_special_tokens_mask=True))
        special = tokens.pop("special_tokens_mask")
        in_document = tokens["token_type_ids"] == 1 if "token_type_ids" in tokens else torch.ones_like(special)
        not_maskable = special.bool() | ~in_document.bool()  # only the document's own tokens are masked
        masked_ids, targets = mask_tokens(tokens["input_ids"], tokens["attention_mask"], not_maskable.long(),
                                          tokenizer.mask_token_id, self.vocab_size, self.mlm_probability)
        device = self.encoder.device
        inputs = {**{k: v.to(device) for k, v in tokens.items()}, "input_ids": masked_ids.to(device)}
        hidden = self.encoder.transformer(**inputs).last_hidden_state
        scores = self.relevance(hidden[:, 0]).squeeze(-1)
        chosen = targets.to(device) != IGNORE_INDEX
        return scores, self.mlm_head(hidden[chosen]), targets.to(device)[chosen]

    def training_loss(self, batch: dict) -> tuple[Tensor, dict[str, float]]:
        if self.corpus is None:
            raise ConfigError("bprop needs the corpus language model first: call method.use_training_data(data) "
                              "with the training data (contrastkit fit does).")
        documents = [self.passage(int(i)) for i in batch["indices"]] if self.sentences else list(batch["texts"])
        positives, negatives, rows, logs = self.word_set_pairs(documents)
        if not rows:
            raise DataError("bprop found no document with two distinct word sets in this batch: the documents "
                            "need alphabetic words.")
        kept = [documents[i] for i in rows]
        positive_scores, positive_logits, positive_targets = self.score_masked_pairs(positives, kept)
        negative_scores, negative_logits, negative_targets = self.score_masked_pairs(negatives, kept)
        rop = self.ranking(positive_scores, negative_scores)
        mlm = self.masked_lm(torch.cat([positive_logits, negative_logits]), None,
                             targets=torch.cat([positive_targets, negative_targets]))
        with torch.no_grad():
            accuracy = (positive_scores > negative_scores).float().mean()
        logs.update({"rop_loss": float(rop.detach()), "mlm_loss": float(mlm.detach()),
                     "rop_accuracy": float(accuracy)})
        return rop + self.mlm_weight * mlm, logs


def build(encoder: TextEncoder, **options) -> BPROP:
    settings = check_options("bprop", options, DEFAULTS)
    for name in ("mean_set_length", "temperature"):
        if not (isinstance(settings[name], (int, float)) and settings[name] > 0):
            raise ConfigError(f"bprop option '{name}' must be a positive number, got {settings[name]!r}.")
    if settings["saturation"] is not None and not settings["saturation"] > 0:
        raise ConfigError(f"bprop option 'saturation' must be positive or null, got {settings['saturation']!r}.")
    if not 0 < settings["mlm_probability"] < 1:
        raise ConfigError(f"bprop option 'mlm_probability' must be in (0, 1), got {settings['mlm_probability']!r}.")
    if not settings["mlm_weight"] >= 0:
        raise ConfigError(f"bprop option 'mlm_weight' must be 0 or more, got {settings['mlm_weight']!r}.")
    if getattr(encoder.tokenizer, "mask_token_id", None) is None:
        raise ConfigError("bprop's MLM term needs a tokenizer with a [MASK] token.")
    ranking = objectives.get("representative_words", form=settings["form"], margin=settings["margin"])
    return BPROP(encoder, GatheredObjective(ranking), GatheredObjective(objectives.get("masked_language_modelling")),
                 mean_set_length=float(settings["mean_set_length"]), temperature=float(settings["temperature"]),
                 saturation=settings["saturation"], mlm_probability=float(settings["mlm_probability"]),
                 mlm_weight=float(settings["mlm_weight"]))
