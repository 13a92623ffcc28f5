"""The general-quality guard: does a text adaptation keep what the base model did well on general text?

Issue 31: ``hybrid-distill``'s term residual lost 0.3 points on STS-B dev -- and 3.8 on another
general similarity set. One set is not enough evidence, so the guard scores the encoder on several
general sets, before and after an adaptation run, and reports the loss (before - after, in points x100)
on each, their mean, and the worst:

============================  ======================  ========================================  =========
set                           dev (for choices)       test (the guard's report)                 score
============================  ======================  ========================================  =========
``stsb``                      sts-dev.csv (1,500)     sts-test.csv (1,379 pairs)                Spearman
``mrpc``                      carved third of train   msr_paraphrase_test.txt (1,725 pairs)     AP
``wordnet-supersenses``       nouns, bucket 0 mod 40  nouns, bucket 1 mod 40 (1,879 definitions) V-measure
``code-docstring``            split ``valid`` (436)   split ``test`` (354 pairs)                MRR@10
``wordnet-definitions``       nouns, bucket 0 mod 40  nouns, bucket 1 mod 40                    MRR@10
``coco-captions``             train2017 (400)         val2017 (395 captions)                    nDCG@10
============================  ======================  ========================================  =========

Protocols (all zero-shot: cosine of the encoder's embeddings, nothing fitted):

- ``stsb``, ``mrpc``, ``wordnet-supersenses``: the task runner's own tasks
  (:mod:`contrastkit.modalities.text.benchmark_tasks`, the specs of ``benchmarks/text_tasks/*.yaml``
  rebuilt here so the guard runs from an installed package; a test checks they equal the files),
  except that the supersense V-measure is the mean of 25 k-means runs (``GUARD_KMEANS_SEEDS``), not the
  task runner's 5: one run's V-measure varies by about 1 point (standard deviation 0.98 on the base's
  dev sample, 1.39 on test), so with 5 runs a loss of 0 reads as more than 1 point about one time in 8,
  and the guard's 1-point bar would decide by chance; with 25 the loss's standard deviation is about 0.3
  (dev) to 0.4 (test).
  MRPC is scored as MTEB scores pair classification: the average precision of the pairs' cosine
  against the paraphrase label -- threshold-free, so nothing is fitted on MRPC's train pairs.
- ``code-docstring``: each function's docstring summary retrieves its code among every function of the
  split (CodeSearchNet's zero-shot protocol, MRR@10), both sides embedded by the encoder.
- ``wordnet-definitions`` (word-level similarity): each noun synset's definition retrieves its words
  among the distinct member lemmas of every synset of the sample (``dog``, ``domestic dog``, ``Canis
  familiaris`` for "a member of the genus Canis ..."); relevant: the synset's own members; MRR@10.
  The sample is the supersense task's (synset id SHA-256 mod 40).
- ``coco-captions``: each caption retrieves the other four captions of its image among all captions
  of the split (itself left out); nDCG@10. General-domain, everyday sentences.

**Test splits are a guard, never a choice.** Settings are chosen on ``split="dev"`` (as
``benchmarks/adaptation_guard.py`` does); the test guard is what a run reports, and nothing reads it to
pick a setting. A set whose data is missing is skipped with the reason.

**A third, unread sample** (``split="check"``): the two WordNet sets have one more disjoint sample of noun
synsets, bucket 2 mod 40 (the other sets have no third split and are skipped). It is kept for re-checking,
once, a claim already read on test -- after test splits have been read more than once, the only unseen data
left for these two sets.

The encoder is used symmetrically (both sides of a pair or a search embedded by it): that is what a user
who embeds general text with the adapted model gets. For an encoder whose Transformer is frozen (the term
residual), :class:`FrozenBaseCache` computes the Transformer's pooled states once per text, so measuring
another residual (or the same one scaled, capped or restricted) costs seconds.
"""

from __future__ import annotations

import hashlib
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from contrastkit.core.errors import ConfigError
from contrastkit.core.paths import data_root
from contrastkit.modalities.text.encoders import TextEncoder
from contrastkit.modalities.text.sources import RetrievalSet, hash_bucket, read_jsonl
from contrastkit.modalities.text.task_files import Carve, DataEntry, TaskSpec

GUARD_SPLITS = ("dev", "test", "check")
WORDNET_SAMPLE_MODULUS = 40
# Remainders: the supersense task's dev and test samples, and the unread re-check sample (module docstring).
WORDNET_SAMPLE = {"dev": 0, "test": 1, "check": 2}
CHECK_SETS = ("wordnet-supersenses", "wordnet-definitions")  # the sets with a "check" sample
CODE_SPLITS = {"dev": "valid", "test": "test"}
CAPTION_SPLITS = {"dev": "train2017", "test": "val2017"}
MRPC_HEADER = ("label", "id1", "id2", "sentence1", "sentence2")
GUARD_KMEANS_SEEDS = tuple(range(25))  # the supersense clustering's k-means runs (module docstring)


def task_specs() -> dict[str, TaskSpec]:
    """The guard's sets that the task runner scores, as in ``benchmarks/text_tasks/{stsb,mrpc,
    wordnet-supersenses}.yaml`` (paths under the data root)."""
    root = data_root()
    synsets = root / "wordnet" / "synsets.tsv.gz"
    mrpc = root / "mrpc"
    return {
        "stsb": TaskSpec(name="stsb", type="sts", file=root / "stsb", shared=False, metric="spearman",
                         data={"dev": DataEntry(root / "stsb" / "sts-dev.csv"),
                               "test": DataEntry(root / "stsb" / "sts-test.csv")}),
        "mrpc": TaskSpec(name="mrpc", type="pair-classification", file=mrpc, shared=False, metric="ap",
                         data={"dev": DataEntry(mrpc / "msr_paraphrase_train.txt", "tsv", MRPC_HEADER,
                                                carve=Carve(("id1", "id2"), 3, 0)),
                               "test": DataEntry(mrpc / "msr_paraphrase_test.txt", "tsv", MRPC_HEADER)}),
        "wordnet-supersenses": TaskSpec(
            name="wordnet-supersenses", type="clustering", file=synsets, shared=False, metric="v_measure",
            columns={"text": "definition", "label": "lexfile"}, kmeans_seeds=GUARD_KMEANS_SEEDS,
            data={split: DataEntry(synsets, where={"pos": ("n",)},
                                   carve=Carve(("synset_id",), WORDNET_SAMPLE_MODULUS, remainder))
                  for split, remainder in WORDNET_SAMPLE.items()}),
    }


# ------------------------------------------------------------------------- retrieval-type sets


def code_docstring_set(split: str) -> RetrievalSet:
    """Docstring summary -> function code over every function of the split (``valid`` for dev)."""
    records = [r for r in read_jsonl(data_root() / "code-docstring" / "pairs.jsonl.gz")
               if r.get("split") == CODE_SPLITS[split]]
    ids = [f"f{i}" for i in range(len(records))]
    return RetrievalSet(doc_ids=ids, titles=[""] * len(ids), texts=[r["code"] for r in records],
                        query_ids=[f"q{i}" for i in range(len(records))],
                        queries=[r["docstring_summary"] for r in records],
                        qrels={f"q{i}": {doc: 1} for i, doc in enumerate(ids)})


def wordnet_definitions_set(split: str) -> RetrievalSet:
    """Noun definition -> its member lemmas, among the lemmas of every synset of the sample."""
    from contrastkit.modalities.text.sources import open_text_file

    remainder = WORDNET_SAMPLE[split]
    definitions: list[tuple[str, str, list[str]]] = []
    with open_text_file(data_root() / "wordnet" / "synsets.tsv.gz") as handle:
        header = handle.readline().rstrip("\n").split("\t")
        column = {name: i for i, name in enumerate(header)}
        for line in handle:
            row = line.rstrip("\n").split("\t")
            if row[column["pos"]] != "n" or hash_bucket(row[column["synset_id"]], WORDNET_SAMPLE_MODULUS) != remainder:
                continue
            definitions.append((row[column["synset_id"]], row[column["definition"]], row[column["members"]].split("|")))
    lemmas = list(dict.fromkeys(lemma for _, _, members in definitions for lemma in members))
    lemma_id = {lemma: f"w{i}" for i, lemma in enumerate(lemmas)}
    return RetrievalSet(doc_ids=list(lemma_id.values()), titles=[""] * len(lemmas), texts=lemmas,
                        query_ids=[synset for synset, _, _ in definitions],
                        queries=[definition for _, definition, _ in definitions],
                        qrels={synset: {lemma_id[m]: 1 for m in members} for synset, _, members in definitions})


def coco_captions_set(split: str) -> RetrievalSet:
    """Each caption -> the other captions of its image (the query's own id is left out of its ranking)."""
    from contrastkit.modalities.text.sources import open_text_file

    rows = []
    with open_text_file(data_root() / "image-captions" / "captions.tsv") as handle:
        header = handle.readline().rstrip("\n").split("\t")
        column = {name: i for i, name in enumerate(header)}
        for line in handle:
            row = line.rstrip("\n").split("\t")
            if row[column["split"]] == CAPTION_SPLITS[split]:
                rows.append((f"c{row[column['caption_id']]}", row[column["image_id"]], row[column["caption"]]))
    by_image: dict[str, list[str]] = {}
    for caption, image, _ in rows:
        by_image.setdefault(image, []).append(caption)
    ids = [caption for caption, _, _ in rows]
    texts = [text for _, _, text in rows]
    qrels = {caption: {other: 1 for other in by_image[image] if other != caption} for caption, image, _ in rows}
    return RetrievalSet(doc_ids=ids, titles=[""] * len(ids), texts=texts, query_ids=ids, queries=texts, qrels=qrels)


@dataclass(frozen=True)
class RetrievalGuard:
    """A guard set scored as retrieval: how to build it, where its data is, its metric."""

    build: Callable[[str], RetrievalSet]
    data: str  # under the data root
    metric: str


RETRIEVAL_SETS = {
    "code-docstring": RetrievalGuard(code_docstring_set, "code-docstring/pairs.jsonl.gz", "mrr@10"),
    "wordnet-definitions": RetrievalGuard(wordnet_definitions_set, "wordnet/synsets.tsv.gz", "mrr@10"),
    "coco-captions": RetrievalGuard(coco_captions_set, "image-captions/captions.tsv", "ndcg@10"),
}
GUARD_SETS = ("stsb", "mrpc", "wordnet-supersenses", "code-docstring", "wordnet-definitions", "coco-captions")


# ------------------------------------------------------------------------------ the cached base


class FrozenBaseCache:
    """Embeddings of an encoder whose Transformer is frozen, from its pooled states computed once per text.

    ``wrap(encoder).encode(texts)`` equals ``encoder.encode(texts)`` (up to float rounding) for any
    term residual, scale, cap or restriction, as long as the Transformer, pooling and ``max_length`` are
    those the cache was filled with: :meth:`wrap` checks a fingerprint of the Transformer's weights.
    """

    def __init__(self) -> None:
        self.pooled: dict[tuple[str, int, str], torch.Tensor] = {}
        self._fingerprints: dict[int, str] = {}

    @staticmethod
    def fingerprint(encoder: TextEncoder) -> str:
        digest = hashlib.sha256(f"{encoder.pooling}|{encoder.max_length}".encode())
        for name, tensor in encoder.transformer.state_dict().items():
            digest.update(name.encode())
            digest.update(tensor.detach().float().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
        return digest.hexdigest()[:20]

    def wrap(self, encoder: TextEncoder) -> _CachedEncoder:
        return _CachedEncoder(self, encoder, self.fingerprint(encoder))


class _CachedEncoder:
    """``encode(texts, batch_size)`` through a :class:`FrozenBaseCache` (what the task runner calls)."""

    def __init__(self, cache: FrozenBaseCache, encoder: TextEncoder, fingerprint: str) -> None:
        self.cache, self.encoder, self.key = cache, encoder, fingerprint
        self.output_dim = encoder.output_dim

    @torch.inference_mode()
    def encode(self, texts: Sequence[str], batch_size: int = 64) -> torch.Tensor:
        texts = list(texts)
        encoder, store = self.encoder, self.cache.pooled
        missing = list(dict.fromkeys(t for t in texts if (self.key, encoder.max_length, t) not in store))
        was_training = encoder.training
        encoder.eval()
        try:
            missing.sort(key=len, reverse=True)  # batches of similar lengths pad little
            for start in range(0, len(missing), batch_size):
                batch = missing[start:start + batch_size]
                pooled = encoder.pooled(encoder.tokenize(batch)).float().cpu()
                store.update({(self.key, encoder.max_length, t): row for t, row in zip(batch, pooled, strict=True)})
            chunks = []
            for start in range(0, len(texts), batch_size):
                batch = texts[start:start + batch_size]
                pooled = torch.stack([store[(self.key, encoder.max_length, t)] for t in batch])
                chunks.append(encoder.finish(pooled, encoder.tokenize(batch)).float().cpu())
        finally:
            encoder.train(was_training)
        return torch.cat(chunks) if chunks else torch.empty(0, self.output_dim)


# --------------------------------------------------------------------------------- the guard


def _missing_data(name: str, split: str) -> str | None:
    if split == "check" and name not in CHECK_SETS:
        return f"no 'check' sample (only {' and '.join(CHECK_SETS)} have one)"
    if name in RETRIEVAL_SETS:
        path = data_root() / RETRIEVAL_SETS[name].data
    else:
        path = task_specs()[name].entry(split).path
    return None if path.exists() else f"{path} not found (set CONTRASTKIT_DATA)"


def _score(encoder, name: str, split: str, batch_size: int) -> tuple[str, float, str]:
    """(metric, score x100, size) of one guard set."""
    if name in RETRIEVAL_SETS:
        from contrastkit.modalities.text.evaluation import evaluate_retrieval

        guard = RETRIEVAL_SETS[name]
        retrieval_set = guard.build(split)
        # Both sides by the encoder under test (a query tower too): what general use of it gives.
        result = evaluate_retrieval(encoder, retrieval_set, k_values=(10,), cache_dir=False, batch_size=batch_size,
                                    document_encoder=encoder)
        size = f"{result['queries']:,} queries, {result['documents']:,} docs"
        return guard.metric, 100.0 * result[guard.metric], size
    from contrastkit.modalities.text.benchmark_tasks import evaluate_task

    row = evaluate_task(encoder, task_specs()[name], split, batch_size=batch_size, cache_dir=False)
    return row.metric, row.score, row.size


def measure_guard(encoder, split: str = "test", sets: Sequence[str] | None = None, batch_size: int = 64,
                  cache: FrozenBaseCache | None = None, verbose: bool = False) -> dict:
    """The guard's scores of ``encoder`` (a TextEncoder, or anything with ``encode(texts, batch_size)``).

    Returns ``{"split", "sets": {name: {"metric", "score", "size"}}, "skipped": {name: why}}`` (scores
    x100). ``split``: ``test`` for the report, ``dev`` for choosing settings, ``check`` for a re-check on
    unread WordNet synsets (module docstring).
    ``cache``: a :class:`FrozenBaseCache` to go through (a TextEncoder whose Transformer stays frozen
    between calls)."""
    if split not in GUARD_SPLITS:
        raise ConfigError(f"The general guard's split must be one of {', '.join(GUARD_SPLITS)}, got '{split}'.")
    names = list(GUARD_SETS if sets is None else sets)
    unknown = [n for n in names if n not in GUARD_SETS]
    if unknown:
        raise ConfigError(f"Unknown guard set '{unknown[0]}'; the sets are {', '.join(GUARD_SETS)}.")
    model = cache.wrap(encoder) if cache is not None and isinstance(encoder, TextEncoder) else encoder
    result: dict = {"split": split, "sets": {}, "skipped": {}}
    for name in names:
        why = _missing_data(name, split)
        if why:
            result["skipped"][name] = why
            continue
        start = time.perf_counter()
        metric, score, size = _score(model, name, split, batch_size)
        result["sets"][name] = {"metric": metric, "score": round(float(score), 4), "size": size}
        if verbose:
            print(f"guard {name} ({split}): {metric} {score:.2f} in {time.perf_counter() - start:.0f} s",
                  file=sys.stderr)
    return result


def guard_loss(before: Mapping, after: Mapping) -> dict[str, float | str]:
    """The loss on each set measured in both (``before - after``, points; positive: worse after), its
    ``mean``, ``max`` and the ``worst`` set's name."""
    names = [n for n in before["sets"] if n in after["sets"]]
    if not names:
        raise ConfigError("The two guard measurements share no set to compare.")
    if before.get("split") != after.get("split"):
        raise ConfigError(f"Guard measurements of different splits ({before.get('split')} vs {after.get('split')}).")
    loss = {n: round(before["sets"][n]["score"] - after["sets"][n]["score"], 4) for n in names}
    worst = max(names, key=lambda n: loss[n])
    return {**loss, "mean": round(float(np.mean(list(loss.values()))), 4), "max": loss[worst], "worst": worst}


def guard_report(before: Mapping, after: Mapping) -> dict:
    """What a run's summary records: ``{"split", "before", "after", "loss"}`` (:func:`guard_loss`)."""
    return {"split": after["split"], "before": dict(before), "after": dict(after), "loss": guard_loss(before, after)}


def guard_eval_fn(split: str, batch_size: int = 64, frozen_transformer: bool = False,
                  sets: Sequence[str] | None = None) -> Callable:
    """``encoder -> {"general_guard": measure_guard(...)}`` for a training run's before/after evaluation;
    with ``frozen_transformer`` both calls share a :class:`FrozenBaseCache` (the second costs seconds)."""
    cache = FrozenBaseCache() if frozen_transformer else None

    def evaluate(encoder, document_encoder=None) -> dict:
        return {"general_guard": measure_guard(encoder, split, sets, batch_size, cache, verbose=True)}

    return evaluate


GUARD_CHOICES = ("auto", "test", "dev", "off")


def guard_split_for(choice: str | None, method) -> str | None:
    """The split ``--general-guard`` measures for ``method`` (None: none). ``auto`` (the default): the
    test splits for a method that adapts a model to one corpus (``method.adapts_to_corpus``, e.g.
    hybrid-distill), none for the others; ``off``: none."""
    choice = choice or "auto"
    if choice not in GUARD_CHOICES:
        raise ConfigError(f"--general-guard takes {', '.join(GUARD_CHOICES)}, got '{choice}'.")
    if choice == "auto":
        return "test" if getattr(method, "adapts_to_corpus", False) else None
    return None if choice == "off" else choice


def with_general_guard(eval_fn: Callable | None, split: str | None, method) -> Callable | None:
    """``eval_fn`` (the run's ``--eval-*`` evaluation, or None) with the guard of ``split`` measured too
    (``evaluation.before/after.general_guard``); the guard shares one :class:`FrozenBaseCache` between
    before and after when the method keeps the Transformer frozen (hybrid-distill's term residual)."""
    if split is None:
        return eval_fn
    frozen = not any(p.requires_grad for p in method.encoder.transformer.parameters())
    guard = guard_eval_fn(split, frozen_transformer=frozen)

    def evaluate(encoder, document_encoder=None) -> dict:
        result = {} if eval_fn is None else (eval_fn(encoder) if document_encoder is None
                                              else eval_fn(encoder, document_encoder=document_encoder))
        return {**result, **guard(encoder)}

    return evaluate


def record_general_guard(summary: dict) -> dict:
    """Move ``evaluation.before/after.general_guard`` of a run's summary to ``general_guard``
    (:func:`guard_report`: both measurements and the loss on each set) and rewrite its summary.json."""
    evaluation = summary.get("evaluation") or {}
    before = (evaluation.get("before") or {}).pop("general_guard", None)
    after = (evaluation.get("after") or {}).pop("general_guard", None)
    if before is None or after is None:
        return summary
    summary["general_guard"] = guard_report(before, after)
    if not any(evaluation.get(k) for k in ("before", "after")):
        summary.pop("evaluation", None)
    if summary.get("out"):
        from pathlib import Path

        from contrastkit.engine.run_folder import write_summary

        write_summary(Path(summary["out"]), summary)
    return summary


__all__ = ["CHECK_SETS", "GUARD_CHOICES", "GUARD_KMEANS_SEEDS", "GUARD_SETS", "GUARD_SPLITS", "FrozenBaseCache",
           "RETRIEVAL_SETS",
           "guard_split_for", "record_general_guard", "with_general_guard",
           "code_docstring_set", "coco_captions_set", "guard_eval_fn", "guard_loss", "guard_report", "measure_guard",
           "task_specs", "wordnet_definitions_set"]
