"""The text modality and its methods, registered without importing them."""

from __future__ import annotations

from contrastkit.core.registry import METHODS
from contrastkit.modalities import Modality, folder_holds, register_modality, suffix_of


def recognises(data: str) -> bool:
    return suffix_of(data) in (".txt", ".txt.gz", ".jsonl", ".jsonl.gz") or folder_holds(data, ("corpus.jsonl",), 1)


register_modality(Modality(
    name="text", summary="sentences (.txt[.gz]), JSONL corpora, BEIR folders; (anchor, positive, negatives) rows", cli="contrastkit.modalities.text.cli",
    recognises=recognises,
    not_applicable={"max-epochs": "a text run is bounded by --max-steps and/or --max-minutes"}))

# Methods that never read a sentence's neighbours; methods whose loss is not one in-batch InfoNCE
# over the embeddings (GradCache needs exactly that).
# Methods whose loss is not one in-batch objective over the encoder's embeddings (Matryoshka nests exactly that);
# methods that read labelled rows, not sentences (the column names are for them).
NO_CONTEXT = "context-window"
NO_GRAD_CACHE = "grad-cache-chunk"
NO_MATRYOSHKA = ("matryoshka-dims", "matryoshka-weights")
NO_COLUMNS = "columns"
for name, module, summary, excluded in (
    ("simcse", "simcse", "SimCSE: dropout noise as the view (Gao et al. 2021)", (NO_CONTEXT, NO_COLUMNS)),
    ("contriever", "contriever", "Contriever: independent crops, MoCo queue (Izacard et al. 2022)", (NO_COLUMNS,)),
    ("ict", "ict", "Inverse Cloze Task: a sentence vs. its context (Lee et al. 2019)", (NO_COLUMNS,)),
    ("debcse", "debcse", "DebCSE: debiased negatives by propensity (Miao et al. 2023)",
     (NO_CONTEXT, NO_GRAD_CACHE, *NO_MATRYOSHKA, NO_COLUMNS)),
    ("whitenedcse", "whitenedcse", "WhitenedCSE: shuffled group whitening (Zhuo et al. 2023)",
     (NO_CONTEXT, NO_GRAD_CACHE, *NO_MATRYOSHKA, NO_COLUMNS)),
    ("ccp", "ccp", "CCP: contrastive context prediction (Wu et al. 2022)", (NO_GRAD_CACHE, *NO_MATRYOSHKA, NO_COLUMNS)),
    ("hybrid-distill", "hybrid_distill", "query-side distillation of a dense + BM25 teacher (ours)",
     (NO_CONTEXT, NO_GRAD_CACHE, *NO_MATRYOSHKA, NO_COLUMNS)),
    ("mnrl", "mnrl", "multiple negatives ranking on (anchor, positive, negatives) rows (Henderson et al. 2017)",
     (NO_CONTEXT,)),
    ("mnrl-moe", "moe", "mnrl through per-domain expert MLPs, routed by each row's domain (Hallee et al. 2024)",
     (NO_CONTEXT, NO_GRAD_CACHE, *NO_MATRYOSHKA)),
    ("dse", "dse", "Distilled Sentence Embedding: pair cosines regress a cross-encoder's scores (Barkan et al. 2020)",
     (NO_CONTEXT, NO_GRAD_CACHE, *NO_MATRYOSHKA)),
    ("bprop", "bprop", "B-PROP: representative words prediction from [CLS] attention, plus MLM (Ma et al. 2021)",
     (NO_CONTEXT, NO_GRAD_CACHE, *NO_MATRYOSHKA, NO_COLUMNS)),
    ("defsent-plus", "defsent_plus", "DefSent+: definitions classified into isotropic entry embeddings (Liu 2024)",
     (NO_CONTEXT, NO_GRAD_CACHE, *NO_MATRYOSHKA)),
    ("rtd-contrastive", "bag_of_tricks", "replaced-token detection, then + sentence contrast (Zhong et al. 2023)",
     (NO_CONTEXT, NO_GRAD_CACHE, *NO_MATRYOSHKA, NO_COLUMNS)),
):
    METHODS.add("text", name, f"contrastkit.modalities.text.methods.{module}:build", summary, excluded)
