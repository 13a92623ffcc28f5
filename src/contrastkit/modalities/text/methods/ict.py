"""ICT: the Inverse Cloze Task -- a sentence is a pseudo-query for the text around it.

Lee, Chang & Toutanova, "Latent Retrieval for Weakly Supervised Open Domain Question Answering",
ACL 2019 (https://arxiv.org/abs/1906.00300), Sec. 4: a sentence ``q_i`` drawn from a passage is the
query and the passage with that sentence removed, ``c_i``, is its positive; the other passages of
the batch are the negatives. Removing the sentence forces the model to match *meaning* (what the
rest of the text is about), not words; the paper keeps the sentence in its context 10 % of the time
so that word overlap is not unlearned altogether.

With ``u_i = normalize(f(q_i))``, ``v_i = normalize(f(c_i))`` (one shared encoder, no heads, so
the embedding trained is exactly the one retrieved with) and temperature ``t``::

    loss_i = -log exp(u_i . v_i / t) / sum_{j=1..B} exp(u_i . v_j / t)        (query -> context)

and, with ``symmetric``, the mean with the context -> query direction (sentence-transformers'
MultipleNegativesSymmetricRankingLoss). The shape of the task is that of retrieval in the target
domain (a one-sentence claim against an abstract), which is why it is a natural unsupervised
domain-adaptation objective for a pretrained bi-encoder: the batch's contexts come from
:class:`~contrastkit.modalities.text.data.SentenceData` (the lines around a sentence, itself excluded). Under
several processes the contexts of every process are negatives (gathered with gradient).

Options (``build(encoder, **options)``):
    temperature: ``t`` (0.05: the scale 20 all-MiniLM-L6-v2 was trained with).
    keep_sentence: probability of leaving the sentence inside its context (0.1, the paper's).
    context_length: tokens kept of each context (128); queries use the encoder's max_length.
    symmetric: also the context -> query direction (False).
    grad_cache_chunk: rows per forward pass with GradCache (None).
"""

from __future__ import annotations

import torch
from torch import nn

from contrastkit.core.errors import ConfigError, DataError
from contrastkit.objectives.base import check_temperature
from contrastkit.modalities.text.encoders import TextEncoder
from contrastkit.nn.gradcache import embed_tokens
from contrastkit.modalities.text.methods import check_options
from contrastkit.modalities.text.methods._losses import gathered_query_key_infonce
from contrastkit.modalities.text.methods._parts import pair_cosines, positive_int_or_none

DEFAULTS = {"temperature": 0.05, "keep_sentence": 0.1, "context_length": 128, "symmetric": False,
            "grad_cache_chunk": None}


class InverseClozeTask(nn.Module):
    """Sentence -> its surrounding text, in-batch negatives, one shared encoder."""

    needs_context = True
    supports_matryoshka = True  # its objective reads the encoder's embeddings (modalities/text/matryoshka.py)

    def __init__(self, encoder: TextEncoder, *, temperature: float = 0.05, keep_sentence: float = 0.1,
                 context_length: int = 128, symmetric: bool = False, grad_cache_chunk: int | None = None):
        super().__init__()
        check_temperature(temperature)
        if not 0.0 <= keep_sentence <= 1.0:
            raise ConfigError(f"Option 'keep_sentence' must be a probability in [0, 1], got {keep_sentence}.")
        if isinstance(context_length, bool) or not isinstance(context_length, int) or context_length < 2:
            raise ConfigError(f"Option 'context_length' must be an integer of at least 2 tokens, got {context_length!r}.")
        self.encoder = encoder
        self.temperature = temperature
        self.objective = gathered_query_key_infonce(temperature)  # the keys of every process are negatives
        self.keep_sentence = keep_sentence
        self.context_length = context_length
        self.symmetric = symmetric
        self.grad_cache_chunk = grad_cache_chunk

    def contexts_with_kept_sentences(self, texts: list[str], contexts: list[str]) -> list[str]:
        """Each context, with its sentence put back in front with probability ``keep_sentence``
        (draws from torch's generator, which the training loop reseeds every step)."""
        keep = torch.rand(len(texts)) < self.keep_sentence
        return [f"{t} {c}" if k else c for t, c, k in zip(texts, contexts, keep.tolist())]

    def training_loss(self, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        texts, contexts = batch["texts"], batch.get("contexts")
        if contexts is None or len(contexts) != len(texts):
            raise DataError("The ICT method needs each sentence's neighbouring text ('contexts' in the batch); "
                            "train it from a lines file with a context window of at least 1 line.")
        # A sentence alone on its line range (first/last of the corpus) has an empty context: use itself.
        contexts = [c if c.strip() else t for t, c in zip(texts, contexts)]
        contexts = self.contexts_with_kept_sentences(texts, contexts)
        device = next(self.encoder.parameters()).device
        queries = embed_tokens(self.encoder, self.encoder.tokenize(texts), self.grad_cache_chunk, device)
        keys = embed_tokens(self.encoder, self.encoder.tokenize(contexts, self.context_length),
                            self.grad_cache_chunk, device)
        loss = self.objective(queries, keys)
        if self.symmetric:
            loss = 0.5 * (loss + self.objective(keys, queries))
        return loss, pair_cosines(queries, keys)


def build(encoder: TextEncoder, **options) -> InverseClozeTask:
    settings = check_options("ict", options, DEFAULTS)
    return InverseClozeTask(
        encoder, temperature=settings["temperature"], keep_sentence=float(settings["keep_sentence"]),
        context_length=settings["context_length"], symmetric=bool(settings["symmetric"]),
        grad_cache_chunk=positive_int_or_none(settings["grad_cache_chunk"], "grad_cache_chunk"),
    )
