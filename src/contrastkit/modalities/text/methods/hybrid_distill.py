"""Hybrid distillation: a query encoder taught to rank a corpus the way dense + BM25 fusion does.

The user's situation: a general sentence encoder f0 (all-MiniLM-L6-v2) on a domain corpus where
it trails BM25 (SciFact: nDCG@10 64.6 vs 68.6), no queries and no labels. The fusion of the two
(:mod:`contrastkit.modalities.text.hybrid`) beats both (73.1), because they make different mistakes. This
method moves that advantage into the dense model itself, using only the corpus:

- **pseudo-queries** q are the corpus's own sentences (the training data, one per line);
- the **teacher** scores every document d_j of the corpus for q with the hybrid. With
  ``c_j = cos(f0(q), f0(d_j))``, ``b_j = BM25(q, d_j)`` and dense weight w::

      t_j = c_j + (1 - w) / w * (max_k c_k - min_k c_k) * (b_j - min_k b_k) / (max_k b_k - min_k b_k)

  which is the hybrid's fused score ``w * minmax(c) + (1 - w) * minmax(b)`` multiplied by
  ``(max c - min c) / w`` and shifted by a per-query constant: the same ranking, and the same
  softmax, but in the cosine's own units, so at the start the student differs from the teacher
  only by the lexical term (a query whose BM25 scores are all equal, e.g. all 0, gives t = c);
- the **student** scores the same documents with ``s_j = cos(f(q), f0(d_j))``, where f is the
  encoder being trained and the documents keep the frozen base encoder's embeddings;
- the **loss** is the list-wise distillation over the *whole corpus*, temperatures tau_t and tau::

      loss(q) = KL( softmax(t / tau_t) || softmax(s / tau) ) = sum_j p_j (log p_j - log softmax(s / tau)_j)
              + lambda * (1 - cos(f(q), f0(q))) / tau

  where the second term (``anchor_weight`` lambda, 0 by default) keeps each query's embedding near
  the base model's, in the same units as the logits: the lexical pull changes every sentence's
  embedding, and sentence similarity (STS) is where that shows. The first term is the catalogue's
  :func:`contrastkit.objectives.distillation.listwise_distillation` (``listwise_distillation``).

  With ``residual_l2`` mu > 0 (term-residual student) the loss adds ``mu * mean_b ||r(q_b)||^2``
  (:func:`~contrastkit.modalities.text.term_residual.residual_l2`), an L2 pull of each query's residual
  to zero: the residual then moves a text only as far as ranking its corpus repays.

  With ``reference_l2`` nu > 0 (term-residual student) the loss adds ``nu * mean_g ||r(g)||^2`` over a
  batch of B sentences g drawn (uniformly, with replacement) from a **general reference** corpus
  (``reference``, WikiText-2's sentences by default): the residual stays free on the domain's sentences
  and is held near zero on general ones. Since r depends only on a text's tokens (no Transformer pass),
  the term costs one lookup of B token lists. It is a learnt, soft form of ``restrict_tokens``: a row is
  pulled towards zero in proportion to how often its token occurs in general text, and rows that cancel
  each other in general sentences are left alone.

  With ``query_crop`` r > 0 each pseudo-query is first cut to a random contiguous span of its words,
  a share ~ U[r, 1] of them (at least 5 words, or all of a shorter sentence), and the teacher scores
  the cut text: a corpus sentence is longer and more specific than a typical query (a SciFact claim
  is about 12 words), and a span of it looks more like one (Contriever's cropping, on words).

What learns (``student``):

- ``term-residual`` (the default): the Transformer stays frozen and only a lexical term learns, one
  vector per vocabulary token added to the base embedding (:mod:`contrastkit.modalities.text.term_residual`:
  ``f(q) = normalise(f0(q) + sum_{t in q} W[t] / sqrt(n))``). The base embedding of each training
  sentence is computed once and reused every epoch, so an epoch over SciFact's 49,676 sentences
  costs about half a minute once they are embedded; this is the setting that raised SciFact's development
  claims well above the base (docs/benchmarks.md, fourth round);
- ``encoder``: the whole Transformer is fine-tuned (with dropout), as in the third round.

**The trained model is a query tower for one corpus, not a general encoder.** The residual is saved with
a description of its corpus (``TermResidual.corpus``); retrieval applies it on the query side only, and
``evaluate`` on general text says what it costs (:mod:`contrastkit.modalities.text.query_tower`). The run
measures the general guard (:mod:`contrastkit.modalities.text.general_guard`) before and after training by
default (``--general-guard off`` to skip it). To keep general quality (issue 31), the residual can be
restricted, at training (options below) or afterwards (:meth:`TermResidual.restrict`, no retraining):
``residual_scale`` alpha (mixing with the base embedding), ``residual_max_norm`` (a cap on its norm),
``residual_min_tokens`` (a ramp that damps texts of few tokens, e.g. a word alone), ``corpus_gate`` (the
residual only for texts whose base embedding is near the corpus's documents),
``restrict_tokens`` (only tokens over-represented in the corpus's documents against a general reference,
:func:`~contrastkit.modalities.text.term_residual.over_represented_tokens`). Measured in docs/benchmarks.md
(``benchmarks/adaptation_guard.py``): the setting chosen on development data is ``residual_l2`` 0.5 in training,
then the corpus gate at 0.2 and the length ramp at 8 tokens afterwards (:func:`corpus_gate_for`).

Only the query side is trained ("query-side fine-tuning", Lee, Sung, Kang & Chen, "Learning
Dense Representations of Phrases at Scale", ACL 2021, https://arxiv.org/abs/2012.12624, Sec. 4.3):
the document index is never rebuilt, so the corpus is embedded once (and cached) and a step costs
one forward and backward pass over B short sentences (``student=encoder``; the term residual needs
neither once the sentences' base embeddings are cached) plus a (B, N) product; a full-corpus softmax
is what makes the teacher's whole ranking, not a few sampled negatives, the target. The trained
model is a two-tower retriever: embed **queries with the trained encoder and documents with the
base model** (``contrastkit evaluate --model RUN/encoder --document-model RUN/document_encoder``).

Related: GPL (Wang, Thakur, Reimers & Gurevych, NAACL 2022, https://arxiv.org/abs/2112.07577)
distils a cross-encoder into a dense retriever with generated pseudo-queries; SPAR (Chen et al.,
"Salient Phrase Aware Dense Retrieval: Can a Dense Retriever Imitate a Sparse One?", EMNLP 2022
Findings, https://arxiv.org/abs/2110.06918) trains a dense model on BM25's rankings of sentence
pseudo-queries. Here the teacher is the hybrid (which needs nothing but the corpus) and the
student is the query tower. Measured on SciFact in docs/benchmarks.md.

Options (``build(encoder, **options)``):
    corpus: the documents to rank -- a BEIR folder or a JSONL corpus (``.jsonl[.gz]`` with
        ``title`` and ``text``); required.
    dense_weight: w of the teacher's hybrid (0.6, the weight chosen on SciFact's development claims
        for the fusion itself).
    temperature: tau of the student (0.05: the scale 20 all-MiniLM-L6-v2 was trained with).
    teacher_temperature: tau_t (0.05).
    corpus_precision: ``fp32`` or ``bf16``, for embedding the corpus with the base encoder (cached
        per model, precision and corpus, :func:`contrastkit.modalities.text.evaluation.encode_corpus`; use the
        precision you evaluate with, so the cache is shared).
    cache_dir: the corpus-embedding cache (None: ``$CONTRASTKIT_CACHE``; false: no cache).
    anchor_weight: lambda (0).
    query_crop: r, the smallest share of a sentence's words kept as its pseudo-query (0: whole
        sentences).
    student: ``term-residual`` (default) or ``encoder`` (above).
    residual_l2: mu, the L2 pull of the residual to zero (0; term-residual only).
    reference_l2: nu, the L2 pull of the residual to zero on general reference sentences (0;
        term-residual only; the sentences are ``reference``).
    residual_scale: alpha of the trained residual (1; term-residual only; applies in training too).
    residual_max_norm: the cap c on the residual's norm (none; term-residual only).
    residual_min_tokens: m, a text of n < m distinct tokens gets n/m of its residual (0: no ramp;
        term-residual only; :class:`~contrastkit.modalities.text.term_residual.TermResidual`).
    corpus_gate: q, the quantile of :func:`~contrastkit.modalities.text.term_residual.corpus_gate` (0: no
        gate; term-residual only): a text gets the residual in proportion to how close its base embedding is
        to the corpus's centre, from none at the share q of ``reference`` sentences closest to it (a sample
        of 2,000) to all at the share 1 - q of the documents. Applies in training too (the pulls act on the
        ungated residual); on SciFact that keeps 0.3-0.4 less dev gain than gating after training
        (:func:`corpus_gate_for`), for the same guard (docs/benchmarks.md).
    restrict_tokens: the ratio of :func:`~contrastkit.modalities.text.term_residual.over_represented_tokens`
        (0: every token has a row); the target is the corpus's documents, the reference ``reference``.
    reference: general-domain sentences, one per line, for ``restrict_tokens``, ``reference_l2`` and
        ``corpus_gate`` (default: WikiText-2's sentences under the data root,
        ``wikitext2/sentences_valid_test.txt``).
"""

from __future__ import annotations

import copy
import os
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from contrastkit.core.errors import ConfigError, DataError
from contrastkit.objectives.base import check_temperature
from contrastkit.objectives.distillation import listwise_distillation
from contrastkit.modalities.text.bm25 import BM25Index
from contrastkit.modalities.text.encoders import TextEncoder
from contrastkit.modalities.text.evaluation import (
    DOCUMENT_SEPARATOR,
    check_precision,
    encode_corpus,
)
from contrastkit.modalities.text.methods import check_options
from contrastkit.modalities.text.query_tower import document_tower
from contrastkit.modalities.text.sources import RetrievalSet, read_corpus
from contrastkit.modalities.text.term_residual import residual_l2

DEFAULTS = {"corpus": None, "dense_weight": 0.6, "temperature": 0.05, "teacher_temperature": 0.05,
            "corpus_precision": "fp32", "cache_dir": None, "anchor_weight": 0.0,
            "query_crop": 0.0, "student": "term-residual", "residual_l2": 0.0, "residual_scale": 1.0,
            "residual_max_norm": None, "residual_min_tokens": 0, "corpus_gate": 0.0, "restrict_tokens": 0.0,
            "reference_l2": 0.0, "reference": None}
# The pulls are checked by HybridDistillation itself, each with its own message; the restrictions here.
RESIDUAL_RESTRICTIONS = ("residual_scale", "residual_max_norm", "residual_min_tokens", "corpus_gate",
                         "restrict_tokens")
GATE_REFERENCE_SAMPLE = 2000  # general sentences embedded to place the corpus gate's lower threshold
STUDENTS = ("term-residual", "encoder")

MIN_QUERY_WORDS = 5


def crop_words(text: str, min_share: float, generator: torch.Generator | None = None) -> str:
    """A random contiguous span of ``text``'s words: ``max(min(5, n), round(u * n))`` of the n words
    with ``u ~ U[min_share, 1]``, starting at a uniform position (``min_share`` 0: the text as is)."""
    words = text.split()
    if min_share <= 0 or len(words) <= MIN_QUERY_WORDS:
        return text
    draw = torch.rand(2, generator=generator).tolist()
    share = min_share + (1.0 - min_share) * draw[0]
    keep = min(len(words), max(MIN_QUERY_WORDS, round(share * len(words))))
    start = min(int(draw[1] * (len(words) - keep + 1)), len(words) - keep)
    return " ".join(words[start:start + keep])


def hybrid_teacher_logits(dense: Tensor, lexical: Tensor, dense_weight: float) -> Tensor:
    """``t = c + (1 - w) / w * (max c - min c) * minmax(b)`` row by row (module docstring): the
    hybrid's ranking in cosine units. ``dense`` and ``lexical`` are (Q, N); w must be in (0, 1]."""
    if not 0.0 < dense_weight <= 1.0:
        raise ConfigError(f"The teacher's dense weight must be in (0, 1] (w = 0 has no cosine scale), got {dense_weight}.")
    dense_span = dense.amax(dim=1, keepdim=True) - dense.amin(dim=1, keepdim=True)
    low = lexical.amin(dim=1, keepdim=True)
    lexical_span = lexical.amax(dim=1, keepdim=True) - low
    lexical_unit = torch.where(lexical_span > 0, (lexical - low) / lexical_span.clamp_min(1e-30),
                               torch.zeros_like(lexical))
    return dense + (1.0 - dense_weight) / dense_weight * dense_span * lexical_unit


class HybridDistillation(nn.Module):
    """Query tower ``encoder`` (trained) against the frozen base ``document_encoder``'s corpus."""

    adapts_to_corpus = True  # the text CLI measures the general guard before and after by default

    def __init__(self, encoder: TextEncoder, corpus: RetrievalSet, *, dense_weight: float = 0.6,
                 temperature: float = 0.05, teacher_temperature: float = 0.05,
                 corpus_precision: str = "fp32", cache_dir=None, anchor_weight: float = 0.0,
                 query_crop: float = 0.0, student: str = "term-residual", residual_l2_weight: float = 0.0,
                 corpus_description: dict | None = None, reference_l2_weight: float = 0.0,
                 reference_texts: Sequence[str] | None = None):
        super().__init__()
        check_temperature(temperature)
        check_temperature(teacher_temperature)
        if not 0.0 < dense_weight <= 1.0:
            raise ConfigError(f"Option 'dense_weight' must be in (0, 1], got {dense_weight}: 1 is the cosine alone, "
                              "and dense_weight 0 (BM25 alone) has no cosine scale to distil into.")
        if not anchor_weight >= 0:
            raise ConfigError(f"Option 'anchor_weight' must be >= 0, got {anchor_weight}.")
        if not residual_l2_weight >= 0:
            raise ConfigError(f"Option 'residual_l2' must be >= 0, got {residual_l2_weight}.")
        if residual_l2_weight and student != "term-residual":
            raise ConfigError("Option 'residual_l2' pulls the term residual to zero; it needs student=term-residual.")
        if not reference_l2_weight >= 0:
            raise ConfigError(f"Option 'reference_l2' must be >= 0, got {reference_l2_weight}.")
        if reference_l2_weight and student != "term-residual":
            raise ConfigError("Option 'reference_l2' pulls the term residual to zero on general sentences; it needs "
                              "student=term-residual.")
        if reference_l2_weight and not reference_texts:
            raise DataError("Option 'reference_l2' needs general reference sentences to hold the residual at zero on.")
        if not 0.0 <= query_crop <= 1.0:
            raise ConfigError(f"Option 'query_crop' must be a share of words in [0, 1] (0: no cropping), got {query_crop}.")
        if student not in STUDENTS:
            raise ConfigError(f"Option 'student' must be one of {', '.join(STUDENTS)}, got '{student}'.")
        if student == "encoder" and encoder.term_residual is not None:
            raise ConfigError("Option student=encoder fine-tunes the Transformer, but this encoder carries a trained "
                              "term residual on top of it; start from the plain model, or keep student=term-residual "
                              "to go on training the residual.")
        if len(corpus.doc_ids) < 2:
            raise DataError("Hybrid distillation needs a corpus of at least 2 documents to rank.")
        self.encoder = encoder
        # The base model, frozen: it embeds the documents (once) and the teacher's side of each query.
        self.document_encoder = copy.deepcopy(encoder).requires_grad_(False).eval()
        # Documents (and the teacher's dense half) are the plain base model's, even when training goes on
        # from an encoder that already carries a residual: that residual belongs to the query side.
        self.document_encoder.term_residual = None
        self.student = student
        if student == "term-residual":
            encoder.transformer.requires_grad_(False)
            if encoder.term_residual is None:
                encoder.add_term_residual()
            # What the table is for, saved with it (contrastkit.modalities.text.query_tower).
            encoder.term_residual.corpus = {"role": "query tower", "documents": len(corpus.doc_ids),
                                            **(corpus_description or {})}
        self.residual_l2_weight = residual_l2_weight
        self.reference_l2_weight = reference_l2_weight
        # The reference sentences tokenised once (padded to the longest, at the encoder's length): a step
        # draws B rows of them, and r(g) needs nothing else.
        reference = encoder.tokenize(list(reference_texts)) if reference_l2_weight else None
        self.register_buffer("reference_ids", None if reference is None else reference["input_ids"], persistent=False)
        self.register_buffer("reference_mask", None if reference is None else reference["attention_mask"],
                             persistent=False)
        # The base model's pooled embedding of each whole training sentence, computed once: the
        # teacher's side never changes (and neither does the student's, when the Transformer is frozen).
        self.pooled_cache: dict[tuple[int, str], Tensor] = {}  # keyed by (max_length, text)
        self.dense_weight = dense_weight
        self.temperature = temperature
        self.teacher_temperature = teacher_temperature
        self.anchor_weight = anchor_weight
        self.query_crop = query_crop
        self.corpus_precision = check_precision(corpus_precision)
        documents = encode_corpus(self.document_encoder, corpus, cache_dir, precision=self.corpus_precision)
        self.register_buffer("documents", torch.nn.functional.normalize(torch.from_numpy(documents), dim=1),
                             persistent=False)
        self.bm25 = BM25Index(corpus.documents(DOCUMENT_SEPARATOR))

    def train(self, mode: bool = True) -> HybridDistillation:
        super().train(mode)
        self.document_encoder.eval()  # the teacher never draws dropout
        if self.student == "term-residual":
            self.encoder.transformer.eval()  # frozen: its embeddings are the cached base ones
        return self

    def base_pooled(self, texts: list[str]) -> Tensor:
        """(B, D) the base model's pooled embeddings of the texts (no gradient; whole sentences are
        cached, crops are not)."""
        length = self.encoder.max_length
        keys = [(length, t) for t in texts]
        known = self.pooled_cache
        missing = list(dict.fromkeys(t for t in texts if (length, t) not in known))
        if missing:
            with torch.no_grad():
                pooled = self.document_encoder.pooled(self.document_encoder.tokenize(missing, length))
            fresh = {(length, t): row for t, row in zip(missing, pooled.float(), strict=True)}
            if self.query_crop > 0:  # crops rarely repeat: not worth keeping
                known = {**known, **fresh}
            else:
                self.pooled_cache.update(fresh)
        return torch.stack([known[key] for key in keys]).to(self.documents.device)

    def base_embeddings(self, texts: list[str], pooled: Tensor | None = None) -> Tensor:
        """(B, D) the base model's unit embeddings of the texts (no gradient; ``pooled``: their
        :meth:`base_pooled`, when already computed). The document tower never carries a term
        residual, so its unit embedding is the normalised pooled state."""
        pooled = self.base_pooled(texts) if pooled is None else pooled
        return torch.nn.functional.normalize(pooled.float(), dim=1)

    def teacher_logits(self, texts: list[str], base: Tensor | None = None) -> Tensor:
        """(B, N) hybrid teacher logits ``t`` of the texts over the corpus (``base``: the texts'
        :meth:`base_embeddings`, when already computed)."""
        base = self.base_embeddings(texts) if base is None else base
        dense = base @ self.documents.T
        lexical = torch.from_numpy(self.bm25.scores(texts)).to(dense)
        return hybrid_teacher_logits(dense, lexical, self.dense_weight)

    def training_loss(self, batch: dict) -> tuple[Tensor, dict[str, float]]:
        # Crops draw from torch's generator, which the training loop reseeds every step.
        texts = [crop_words(text, self.query_crop) for text in batch["texts"]]
        tokens = self.encoder.tokenize(texts)
        pooled = self.base_pooled(texts)
        base = self.base_embeddings(texts, pooled)
        teacher = self.teacher_logits(texts, base)
        logs = {}
        if self.student == "term-residual":  # frozen Transformer: its pooled output is the base's
            queries = self.encoder.finish(pooled, tokens)
        else:
            queries = self.encoder(tokens)
        queries = torch.nn.functional.normalize(queries.float(), dim=1)
        student = queries @ self.documents.T
        distillation = listwise_distillation(student, teacher, self.temperature, self.teacher_temperature)
        drift = (1.0 - (queries * base).sum(dim=1)).mean()
        loss = distillation + self.anchor_weight * drift / self.temperature if self.anchor_weight else distillation
        if self.residual_l2_weight:
            residual = self.encoder.term_residual(tokens["input_ids"], tokens["attention_mask"], gated=False)
            pull = residual_l2(residual)
            loss = loss + self.residual_l2_weight * pull
            logs["residual_l2"] = float(pull.detach())
        if self.reference_l2_weight:
            # Torch's generator draws the sentences; the training loop reseeds it every step.
            rows = torch.randint(self.reference_ids.shape[0], (len(texts),))
            general = residual_l2(self.encoder.term_residual(self.reference_ids[rows], self.reference_mask[rows],
                                                             gated=False))
            loss = loss + self.reference_l2_weight * general
            logs["reference_l2"] = float(general.detach())
        with torch.no_grad():
            agree = (student.argmax(dim=1) == teacher.argmax(dim=1)).float().mean()
        return loss, {"distillation": float(distillation.detach()), "drift_from_base": float(drift.detach()),
                      "top1_agreement": float(agree), **logs}


def build(encoder: TextEncoder, **options) -> HybridDistillation:
    settings = check_options("hybrid-distill", options, DEFAULTS)
    if not settings["corpus"]:
        raise ConfigError("The method 'hybrid-distill' needs the corpus to rank: --option corpus=PATH (a BEIR "
                          "folder or a .jsonl[.gz] corpus with title and text fields).")
    student = str(settings["student"])
    restricting = [name for name in RESIDUAL_RESTRICTIONS if settings[name] != DEFAULTS[name]]
    if student != "term-residual" and restricting:
        raise ConfigError(f"Option '{restricting[0]}' restricts the term residual; it needs student=term-residual.")
    uses_reference = (float(settings["restrict_tokens"]) or float(settings["reference_l2"])
                      or float(settings["corpus_gate"]))
    if settings["reference"] is not None and not uses_reference:
        raise ConfigError("Option 'reference' is the general corpus of restrict_tokens, reference_l2 and "
                          "corpus_gate; set one of them too.")
    corpus = read_corpus(settings["corpus"])
    # Read once for every option that needs general sentences (the pull, the token restriction, the gate).
    reference = reference_sentences(settings["reference"]) if uses_reference else None
    method = HybridDistillation(
        encoder, corpus, dense_weight=float(settings["dense_weight"]),
        temperature=float(settings["temperature"]), teacher_temperature=float(settings["teacher_temperature"]),
        corpus_precision=settings["corpus_precision"], cache_dir=settings["cache_dir"],
        anchor_weight=float(settings["anchor_weight"]), query_crop=float(settings["query_crop"]),
        student=student, residual_l2_weight=float(settings["residual_l2"]),
        corpus_description={"path": str(settings["corpus"])},
        reference_l2_weight=float(settings["reference_l2"]),
        reference_texts=reference if float(settings["reference_l2"]) else None,
    )
    if student == "term-residual":
        cap, ramp = settings["residual_max_norm"], float(settings["residual_min_tokens"])
        if ramp != int(ramp) or ramp < 0:
            raise ConfigError(f"Option 'residual_min_tokens' must be a whole number of tokens >= 0 (0: no ramp), "
                              f"got {settings['residual_min_tokens']}.")
        method.encoder.term_residual.restrict(scale=float(settings["residual_scale"]),
                                              max_norm=None if cap in (None, "none") else float(cap),
                                              min_tokens=int(ramp) or None)
        if float(settings["restrict_tokens"]):
            domain_tokens(method.encoder, corpus.documents(DOCUMENT_SEPARATOR), float(settings["restrict_tokens"]),
                          reference, apply=True)
        if float(settings["corpus_gate"]):
            method.encoder.term_residual.restrict(gate=fit_corpus_gate(
                method.document_encoder, method.documents, float(settings["corpus_gate"]), reference))
    return method


def corpus_gate_for(encoder: TextEncoder, corpus, quantile: float, reference: str | None = None,
                    precision: str = "fp32", cache_dir=None) -> tuple[Tensor, float, float]:
    """The corpus gate of a trained query tower, to apply after training (``encoder.term_residual.restrict(
    gate=...)``): ``corpus`` (a BEIR folder or JSONL corpus, or a :class:`RetrievalSet`) embedded by the base
    model -- ``encoder`` without its residual, through the evaluation's corpus cache -- against WikiText-2's
    (or ``reference``'s) sentences. Reads nothing but the corpus and the reference."""
    documents = read_corpus(corpus) if not isinstance(corpus, RetrievalSet) else corpus
    embedded = encode_corpus(document_tower(encoder), documents, cache_dir, precision=check_precision(precision))
    return fit_corpus_gate(encoder, torch.from_numpy(embedded), quantile, reference)


def fit_corpus_gate(base: TextEncoder, documents: Tensor, quantile: float,
                    reference: str | Sequence[str] | None = None,
                    sample: int = GATE_REFERENCE_SAMPLE, seed: int = 0) -> tuple[Tensor, float, float]:
    """:func:`~contrastkit.modalities.text.term_residual.corpus_gate` of the corpus's base embeddings
    ``documents`` (N, D) against ``sample`` general ``reference`` sentences (a file or the sentences;
    default: WikiText-2's) drawn with ``seed`` and embedded by the base model ``base`` (without a term
    residual)."""
    import random

    from contrastkit.modalities.text.term_residual import corpus_gate

    sentences = reference_sentences(reference)
    if len(sentences) > sample:
        sentences = random.Random(seed).sample(sentences, sample)
    general = document_tower(base).encode(sentences)  # the base model's own embeddings
    return corpus_gate(documents.float().cpu(), general, quantile)


def reference_sentences(reference: str | Sequence[str] | None = None) -> list[str]:
    """The general reference sentences of ``restrict_tokens``, ``reference_l2`` and ``corpus_gate``: the file
    ``reference`` (one per line), by default WikiText-2's sentences under the data root; sentences already
    read (a list) are returned as they are."""
    from contrastkit.core.paths import data_root
    from contrastkit.modalities.text.data import SentenceData

    if reference is not None and not isinstance(reference, (str, os.PathLike)):
        return list(reference)

    path = reference or str(data_root() / "wikitext2" / "sentences_valid_test.txt")
    return list(SentenceData.from_file(path).texts)


def domain_tokens(encoder: TextEncoder, target_texts, min_ratio: float, reference: str | Sequence[str] | None = None,
                  apply: bool = False) -> list[int]:
    """:func:`~contrastkit.modalities.text.term_residual.over_represented_tokens` of ``target_texts``
    against the ``reference`` sentences (default: WikiText-2's, under the data root), in the encoder's
    tokenizer; ``apply``: restrict the encoder's term residual to them. Returns the kept ids."""
    from contrastkit.modalities.text.term_residual import over_represented_tokens

    tokenizer = encoder.tokenizer
    ids = over_represented_tokens(
        tokenizer(list(target_texts), add_special_tokens=False)["input_ids"],
        tokenizer(reference_sentences(reference), add_special_tokens=False)["input_ids"],
        min_ratio=min_ratio, ignored=tokenizer.all_special_ids)
    if apply:
        encoder.term_residual.restrict(allowed=ids)
    return ids


__all__ = ["HybridDistillation", "build", "crop_words", "hybrid_teacher_logits", "listwise_distillation",
           "corpus_gate_for", "domain_tokens", "fit_corpus_gate", "reference_sentences"]
