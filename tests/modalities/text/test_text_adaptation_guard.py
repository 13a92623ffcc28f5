"""Issue 31: a term residual that keeps general quality, and the guard that measures it.

The residual's restrictions against hand computations (scale 0 is the base model bit for bit, scale
alpha is the linear mix of base and adapted, the cap, the token restriction, the length ramp, the corpus
gate and its quantiles, the L2 pull's closed form),
the domain-token rule against a hand count, the guard's cached embeddings against the encoder's own
forward pass, its task specs against the project's task files, its sets' relevance against the raw
files, the query tower's defaults (documents without the residual; a warning on general text), and the
CLI's summary."""

from __future__ import annotations

import copy
import json
import math
import warnings

import numpy as np
import pytest
import torch

from contrastkit.cli import main as cli_main
from contrastkit.core.errors import ConfigError, DataError
from contrastkit.modalities.text import general_guard
from contrastkit.modalities.text.benchmark_tasks import evaluate_tasks
from contrastkit.modalities.text.encoders import TextEncoder, load_text_encoder, small_random_encoder
from contrastkit.modalities.text.evaluation import encode_texts, evaluate_retrieval, evaluate_text_task
from contrastkit.modalities.text.general_guard import (
    FrozenBaseCache,
    coco_captions_set,
    guard_loss,
    guard_split_for,
    measure_guard,
    task_specs,
    wordnet_definitions_set,
)
from contrastkit.modalities.text.methods import build_text_method
from contrastkit.modalities.text.methods.hybrid_distill import corpus_gate_for
from contrastkit.modalities.text.query_tower import QueryTowerWarning, document_tower, general_use_message
from contrastkit.modalities.text.term_residual import (
    TermResidual,
    corpus_gate,
    over_represented_tokens,
    residual_l2,
)
from tests.conftest import data_path, requires_minilm, requires_transformers
from tests.modalities.text.test_text_evaluation import SENTENCES, tiny_retrieval_set
from tests.modalities.text.test_text_hybrid_distill import small_encoder, write_corpus


def residual_encoder(seed: int = 0):
    encoder = small_random_encoder(hidden_size=32, layers=1, heads=2, max_length=32, seed=0).eval()
    encoder.normalize = True
    encoder.add_term_residual()
    with torch.no_grad():
        encoder.term_residual.weight.copy_(torch.randn(encoder.term_residual.weight.shape,
                                                       generator=torch.Generator().manual_seed(seed)) * 0.1)
    return encoder


def plain(encoder):
    base = small_random_encoder(hidden_size=32, layers=1, heads=2, max_length=32, seed=0).eval()
    base.normalize = encoder.normalize
    return base


def distinct_ordinary(ids, mask, special):
    return sorted({i for i, m in zip(ids, mask, strict=True) if m and i not in special})


def random_residuals(methods, seed):
    """The same random table in each method's residual, the methods in eval mode (no dropout)."""
    for method in methods:
        with torch.no_grad():
            method.encoder.term_residual.weight.copy_(
                torch.randn(method.encoder.term_residual.weight.shape, generator=torch.Generator().manual_seed(seed)))
        method.eval()


def squared_norm(weight, distinct):
    """||r||^2 from the residual's formula: the rows of the distinct tokens summed, over sqrt(their count)."""
    return float((sum(weight[t] for t in distinct) / math.sqrt(len(distinct))).pow(2).sum())


# ----------------------------------------------------------------------------- the restrictions


@requires_transformers
@requires_minilm
def test_scale_zero_is_the_base_model_and_scale_alpha_mixes_base_and_adapted():
    encoder = residual_encoder()
    base = plain(encoder)
    tokens = encoder.tokenize(SENTENCES[:6])
    with torch.no_grad():
        adapted = encoder(tokens)
        f0 = base(tokens)
        encoder.term_residual.restrict(scale=0.0)
        assert torch.equal(encoder(tokens), f0)  # bit for bit
        encoder.term_residual.restrict(scale=0.3)
        mixed = torch.nn.functional.normalize(0.7 * f0 + 0.3 * (f0 + encoder.term_residual.unscaled(
            tokens["input_ids"], tokens["attention_mask"])), dim=1)
        torch.testing.assert_close(encoder(tokens), mixed, atol=1e-6, rtol=1e-6)
        assert not torch.allclose(encoder(tokens), adapted, atol=1e-4)
    with pytest.raises(ConfigError, match="scale"):
        encoder.term_residual.restrict(scale=-1)


def test_cap_shrinks_only_long_residuals_and_keeps_their_direction():
    residual = TermResidual(10, 4, special_ids=[0])
    with torch.no_grad():
        residual.weight[3] = torch.tensor([3.0, 0.0, 0.0, 4.0])  # norm 5
        residual.weight[4] = torch.tensor([0.0, 0.1, 0.0, 0.0])  # norm 0.1
    ids, mask = torch.tensor([[0, 3], [0, 4]]), torch.ones(2, 2, dtype=torch.long)
    residual.restrict(max_norm=1.0)
    got = residual(ids, mask)
    torch.testing.assert_close(got[0], torch.tensor([0.6, 0.0, 0.0, 0.8]))  # (3, 0, 0, 4) / 5 * 1
    torch.testing.assert_close(got[1], torch.tensor([0.0, 0.1, 0.0, 0.0]))  # under the cap: unchanged
    residual.restrict(max_norm=None)
    torch.testing.assert_close(residual(ids, mask)[0], torch.tensor([3.0, 0.0, 0.0, 4.0]))


def test_restricted_tokens_have_no_row_but_still_count():
    torch.manual_seed(0)
    residual = TermResidual(30, 5, special_ids=[0, 1])
    with torch.no_grad():
        residual.weight.normal_()
    allowed = {4, 7, 9}
    residual.restrict(allowed=allowed)
    ids = torch.tensor([[0, 4, 5, 7, 5, 1], [0, 5, 6, 8, 1, 1], [0, 9, 9, 12, 13, 1]])
    mask = torch.ones_like(ids)
    got = residual(ids, mask)
    weight = residual.weight.detach()
    for row in range(ids.shape[0]):
        distinct = distinct_ordinary(ids[row].tolist(), mask[row].tolist(), {0, 1})
        kept = [weight[t] for t in distinct if t in allowed]
        expected = sum(kept) / math.sqrt(len(distinct)) if kept else torch.zeros(5)
        torch.testing.assert_close(got[row], expected)
    assert torch.equal(got[1], torch.zeros(5))  # only non-selected tokens: no residual at all
    # and no gradient reaches a non-selected row
    residual(ids, mask).sum().backward()
    grad_rows = set(torch.nonzero(residual.weight.grad.abs().sum(1)).flatten().tolist())
    assert grad_rows == {4, 7, 9}


def test_min_tokens_ramps_short_texts_before_scale_and_cap():
    torch.manual_seed(1)
    residual = TermResidual(30, 5, special_ids=[0, 1])
    with torch.no_grad():
        residual.weight.normal_()
    # 1, 2, 3 (a repeat counts once), 4 and 5 distinct ordinary tokens; padding (mask 0) counts for none.
    ids = torch.tensor([[0, 4, 1, 1, 1, 1, 1], [0, 4, 9, 1, 1, 1, 1], [0, 4, 9, 9, 12, 1, 1],
                        [0, 4, 9, 12, 13, 1, 1], [0, 4, 9, 12, 13, 20, 1]])
    mask = torch.tensor([[1, 1, 1, 0, 0, 0, 0], [1, 1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 1, 0],
                         [1, 1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 1, 1]])
    weight = residual.weight.detach()
    residual.restrict(min_tokens=4, scale=0.5, max_norm=0.8)
    got = residual(ids, mask)
    for row in range(ids.shape[0]):
        distinct = distinct_ordinary(ids[row].tolist(), mask[row].tolist(), {0, 1})
        n = len(distinct)
        expected = 0.5 * min(1.0, n / 4) * sum(weight[t] for t in distinct) / math.sqrt(n)
        expected = expected * min(1.0, 0.8 / float(expected.norm()))  # the cap comes last
        torch.testing.assert_close(got[row], expected)
    residual.restrict(min_tokens=None, scale=1.0, max_norm=None)
    torch.testing.assert_close(residual(ids, mask)[0], weight[4])  # no ramp: a word alone gets its whole row
    assert residual.restrict(min_tokens=1).min_tokens is None  # 1 ramps nothing
    for bad in (0, 2.5, -3, True):
        with pytest.raises(ConfigError, match="min_tokens"):
            residual.restrict(min_tokens=bad)


def test_corpus_gate_lets_through_its_share_of_the_residual():
    torch.manual_seed(2)
    residual = TermResidual(30, 4, special_ids=[0, 1])
    with torch.no_grad():
        residual.weight.normal_()
    ids = torch.tensor([[0, 4, 9, 1]] * 4)
    mask = torch.ones_like(ids)
    low, high = 0.2, 0.6
    center = torch.tensor([2.0, 0.0, 0.0, 0.0])  # normalised by the gate: the first axis
    # Base embeddings (not of unit length: the gate takes their cosine) at cosines 0.1, 0.3, 0.5 and 0.9.
    base = torch.stack([3.0 * torch.tensor([c, math.sqrt(1 - c * c), 0.0, 0.0]) for c in (0.1, 0.3, 0.5, 0.9)])
    full = residual(ids, mask)
    residual.restrict(gate=(center, low, high), scale=0.5)
    got = residual(ids, mask, base=base)
    for row, closeness in enumerate((0.1, 0.3, 0.5, 0.9)):
        share = min(1.0, max(0.0, (closeness - low) / (high - low)))  # 0, 0.25, 0.75, 1
        torch.testing.assert_close(got[row], 0.5 * share * full[row])
    torch.testing.assert_close(residual(ids, mask, gated=False), 0.5 * full)  # what the pulls act on
    with pytest.raises(ConfigError, match="base embeddings"):
        residual(ids, mask)
    with pytest.raises(ConfigError, match="lo < hi"):
        residual.restrict(gate=(center, 0.5, 0.5))
    residual.restrict(gate=None, scale=1.0)
    torch.testing.assert_close(residual(ids, mask), full)


def test_corpus_gate_thresholds_are_the_quantiles_of_both_sides():
    generator = torch.Generator().manual_seed(3)
    axis = torch.zeros(8)
    axis[0] = 1.0
    documents = torch.randn(200, 8, generator=generator) + 3.0 * axis  # the corpus: along the first axis
    reference = torch.randn(300, 8, generator=generator)  # general text: anywhere
    center, low, high = corpus_gate(documents, reference, quantile=0.1)

    def units(x):
        return x.numpy() / np.linalg.norm(x.numpy(), axis=1, keepdims=True)

    mean = units(documents).mean(axis=0)
    np.testing.assert_allclose(center.numpy(), mean / np.linalg.norm(mean), atol=1e-6)

    def cosines(x):
        return units(x) @ (mean / np.linalg.norm(mean))

    assert high == pytest.approx(float(np.quantile(cosines(documents), 0.1)), abs=1e-5)
    assert low == pytest.approx(float(np.quantile(cosines(reference), 0.9)), abs=1e-5)
    with pytest.raises(DataError, match="overlap"):
        corpus_gate(reference[:150], reference[150:], quantile=0.1)  # both general: no gate can tell them apart
    with pytest.raises(ConfigError, match="quantile"):
        corpus_gate(documents, reference, quantile=0.5)


@requires_transformers
@requires_minilm
def test_an_encoder_with_a_closed_gate_is_the_base_model():
    encoder = residual_encoder()
    tokens = encoder.tokenize(SENTENCES[:6])
    with torch.no_grad():
        f0 = plain(encoder)(tokens)
        closeness = torch.nn.functional.normalize(f0, dim=1) @ torch.nn.functional.normalize(f0[1], dim=0)
        farthest = int(closeness.argmin())
        # Centred on text 1 (cosine 1: above hi, the whole residual); the farthest text sits at lo (none).
        encoder.term_residual.restrict(gate=(f0[1], float(closeness.min()), float(closeness.max())))
        gated = encoder(tokens)
        shares = ((closeness - closeness.min()) / (closeness.max() - closeness.min())).unsqueeze(1)
        expected = torch.nn.functional.normalize(f0 + shares * encoder.term_residual(
            tokens["input_ids"], tokens["attention_mask"], gated=False), dim=1)
    torch.testing.assert_close(gated[farthest], f0[farthest])  # a closed gate: the base model
    torch.testing.assert_close(gated, expected)
    assert not torch.allclose(gated[1], f0[1], atol=1e-3)  # an open one: the adapted model


def test_residual_l2_closed_form():
    residual = TermResidual(10, 3)
    u, v = torch.tensor([1.0, 2.0, 0.0]), torch.tensor([0.5, -1.0, 2.0])
    with torch.no_grad():
        residual.weight[2], residual.weight[5] = u, v
    r = residual(torch.tensor([[2, 5, 5], [2, 2, 2]]), torch.ones(2, 3, dtype=torch.long))
    # ||(u + v) / sqrt 2||^2 = (|u|^2 + |v|^2 + 2 u.v) / 2, and ||u||^2
    expected = ((u @ u + v @ v + 2 * u @ v) / 2 + u @ u) / 2
    assert float(residual_l2(r.detach())) == pytest.approx(float(expected))


@requires_transformers
@requires_minilm
def test_hybrid_distill_loss_adds_the_l2_pull(tmp_path):
    corpus = write_corpus(tmp_path / "corpus.jsonl", SENTENCES)
    texts = SENTENCES[:5]
    plain_method = build_text_method("hybrid-distill", small_encoder(), corpus=str(corpus), cache_dir=False)
    pulled = build_text_method("hybrid-distill", small_encoder(), corpus=str(corpus), cache_dir=False,
                               residual_l2=0.7)
    random_residuals((plain_method, pulled), seed=1)
    loss, logs = plain_method.training_loss({"texts": texts})
    pulled_loss, pulled_logs = pulled.training_loss({"texts": texts})
    tokens = pulled.encoder.tokenize(texts)
    special = set(pulled.encoder.tokenizer.all_special_ids)
    weight = pulled.encoder.term_residual.weight.detach()
    norms = []
    for row in range(len(texts)):  # the residual's squared norm, from its formula, text by text
        distinct = distinct_ordinary(tokens["input_ids"][row].tolist(), tokens["attention_mask"][row].tolist(), special)
        norms.append(squared_norm(weight, distinct))
    assert pulled_logs["residual_l2"] == pytest.approx(np.mean(norms), rel=1e-5)
    assert float(pulled_loss) - float(loss) == pytest.approx(0.7 * np.mean(norms), rel=1e-4)
    with pytest.raises(ConfigError, match="student=term-residual"):
        build_text_method("hybrid-distill", small_encoder(), corpus=str(corpus), cache_dir=False,
                          residual_l2=0.1, student="encoder")


@requires_transformers
@requires_minilm
def test_hybrid_distill_loss_adds_the_reference_pull(tmp_path):
    """``reference_l2`` nu adds nu * mean ||r(g)||^2 over B reference sentences drawn by torch's generator:
    recomputed from the residual's formula, sentence by sentence, for the same draw."""
    corpus = write_corpus(tmp_path / "corpus.jsonl", SENTENCES)
    general = ["the cat sat on the mat", "it was a sunny day", "we went to the shop", "a man plays a guitar"]
    reference = tmp_path / "general.txt"
    reference.write_text("\n".join(general) + "\n")
    texts = SENTENCES[:5]
    plain_method = build_text_method("hybrid-distill", small_encoder(), corpus=str(corpus), cache_dir=False)
    pulled = build_text_method("hybrid-distill", small_encoder(), corpus=str(corpus), cache_dir=False,
                               reference_l2=0.3, reference=str(reference))
    random_residuals((plain_method, pulled), seed=2)
    loss, _ = plain_method.training_loss({"texts": texts})
    torch.manual_seed(11)
    pulled_loss, logs = pulled.training_loss({"texts": texts})
    torch.manual_seed(11)
    drawn = torch.randint(len(general), (len(texts),)).tolist()  # the same draw as the loss's
    special = set(pulled.encoder.tokenizer.all_special_ids)
    weight = pulled.encoder.term_residual.weight.detach()
    norms = []
    for index in drawn:
        ids = pulled.encoder.tokenizer(general[index])["input_ids"]
        distinct = sorted(set(ids) - special)
        norms.append(squared_norm(weight, distinct))
    assert len(set(drawn)) > 1
    assert logs["reference_l2"] == pytest.approx(np.mean(norms), rel=1e-5)
    assert float(pulled_loss) - float(loss) == pytest.approx(0.3 * np.mean(norms), rel=1e-4)
    with pytest.raises(ConfigError, match="term-residual"):
        build_text_method("hybrid-distill", small_encoder(), corpus=str(corpus), cache_dir=False,
                          reference_l2=0.1, reference=str(reference), student="encoder")
    with pytest.raises(ConfigError, match="reference_l2"):
        build_text_method("hybrid-distill", small_encoder(), corpus=str(corpus), cache_dir=False,
                          reference=str(reference))


def test_over_represented_tokens_by_hand():
    target = [[1, 2, 3], [1, 3], [1, 3, 4], [3]]  # df: 1 -> 3, 2 -> 1, 3 -> 4, 4 -> 1 of 4 texts
    reference = [[1, 5], [1], [5], [2, 5]]        # df: 1 -> 2, 2 -> 1, 5 -> 3 of 4 texts
    # ratio = (df_T / 4) / ((df_R + 1) / 5): 1 -> 0.75 / 0.6 = 1.25; 3 -> 1 / 0.2 = 5; 2 and 4: df_T < 2
    assert over_represented_tokens(target, reference, min_ratio=2.0, min_count=2) == [3]
    assert over_represented_tokens(target, reference, min_ratio=1.2, min_count=2) == [1, 3]
    assert over_represented_tokens(target, reference, min_ratio=1.2, min_count=1) == [1, 3, 4]  # 4: 0.25/0.2
    assert over_represented_tokens(target, reference, min_ratio=1.2, min_count=2, ignored=[3]) == [1]


@requires_transformers
@requires_minilm
def test_restrictions_and_corpus_survive_save_and_load(tmp_path):
    encoder = residual_encoder()
    encoder.term_residual.restrict(scale=0.4, max_norm=0.25, allowed=[5, 1000, 2023], min_tokens=6,
                                   gate=(torch.arange(32, dtype=torch.float32), 0.1, 0.3))
    encoder.term_residual.corpus = {"role": "query tower", "path": "scifact", "documents": 5183}
    encoder.save(tmp_path / "model")
    loaded = load_text_encoder(tmp_path / "model")
    assert loaded.term_residual.settings() == encoder.term_residual.settings()
    torch.testing.assert_close(loaded.term_residual.gate_center, encoder.term_residual.gate_center)
    np.testing.assert_allclose(encode_texts(loaded, SENTENCES), encode_texts(encoder, SENTENCES), atol=1e-6)


@requires_transformers
@requires_minilm
def test_options_restrict_the_residual_of_the_method(tmp_path):
    corpus = write_corpus(tmp_path / "corpus.jsonl", SENTENCES)
    reference = tmp_path / "general.txt"
    reference.write_text("the cat sat on the mat\nit was a sunny day\nwe went to the shop\n")
    method = build_text_method("hybrid-distill", small_encoder(), corpus=str(corpus), cache_dir=False,
                               residual_scale=0.5, residual_max_norm=0.2, restrict_tokens=1.5,
                               residual_min_tokens=4, reference=str(reference))
    residual = method.encoder.term_residual
    assert residual.scale == 0.5 and residual.max_norm == 0.2 and residual.min_tokens == 4
    the = method.encoder.tokenizer.convert_tokens_to_ids("the")
    assert residual.allowed is not None and not residual.allowed[the]  # general in the reference: no row
    assert residual.corpus["path"] == str(corpus) and residual.corpus["documents"] == len(SENTENCES)
    with pytest.raises(ConfigError, match="restrict_tokens"):
        build_text_method("hybrid-distill", small_encoder(), corpus=str(corpus), cache_dir=False,
                          reference=str(reference))
    with pytest.raises(ConfigError, match="residual_min_tokens"):
        build_text_method("hybrid-distill", small_encoder(), corpus=str(corpus), cache_dir=False,
                          residual_min_tokens=2.5)
    with pytest.raises(ConfigError, match="residual_min_tokens.*student=term-residual"):
        build_text_method("hybrid-distill", small_encoder(), corpus=str(corpus), cache_dir=False,
                          student="encoder", residual_min_tokens=4)


@requires_transformers
@requires_minilm
def test_corpus_gate_option_places_the_gate_from_the_corpus_and_the_reference(tmp_path):
    # A medical corpus against everyday sentences: all-MiniLM-L6-v2 tells them apart (a random encoder
    # would not, and the gate would refuse).
    medical = ["protein folding determines enzyme function", "the vaccine reduced infection rates",
               "mutations in the BRCA1 gene raise the risk of breast cancer", "insulin regulates blood glucose",
               "antibodies bind viral antigens", "the drug lowered blood pressure in a randomised trial"]
    corpus = write_corpus(tmp_path / "corpus.jsonl", medical)
    reference = tmp_path / "general.txt"
    general = ["the cat sat on the mat", "it was a sunny day", "we went to the shop", "he sings well",
               "the train was late again", "my sister likes tea"]
    reference.write_text("\n".join(general) + "\n")
    minilm = TextEncoder.from_folder("minilm", max_length=32).eval()
    method = build_text_method("hybrid-distill", copy.deepcopy(minilm), corpus=str(corpus), cache_dir=False,
                               corpus_gate=0.1, reference=str(reference))
    residual = method.encoder.term_residual
    # Recomputed with the base model's own encode, not the method's document matrix.
    documents = torch.nn.functional.normalize(minilm.encode(medical), dim=1)
    center = torch.nn.functional.normalize(documents.mean(dim=0), dim=0)
    torch.testing.assert_close(residual.gate_center, center, atol=1e-5, rtol=1e-5)
    closeness = torch.nn.functional.normalize(minilm.encode(general), dim=1) @ center
    assert residual.gate_low == pytest.approx(float(np.quantile(closeness.numpy(), 0.9)), abs=1e-5)
    assert residual.gate_high == pytest.approx(float(np.quantile((documents @ center).numpy(), 0.1)), abs=1e-5)
    # In training the student's queries go through the gate (a general sentence's residual gets no gradient).
    with torch.no_grad():
        residual.weight.normal_()
    method.train()
    loss, _ = method.training_loss({"texts": [general[0], medical[0]]})
    loss.backward()
    shares = residual.gate_share(minilm.encode([general[0], medical[0]]))
    assert float(shares[0]) == 0.0 and float(shares[1]) == 1.0  # the reference's and the corpus's own texts
    rows = residual.weight.grad.abs().sum(dim=1)
    cat, protein = (minilm.tokenizer.convert_tokens_to_ids(w) for w in ("cat", "protein"))
    assert float(rows[cat]) == 0.0 and float(rows[protein]) > 0.0
    # After training: the same gate from a query tower (its residual left out) and the corpus's path.
    tower = copy.deepcopy(minilm)
    tower.add_term_residual()
    with torch.no_grad():
        tower.term_residual.weight.normal_()
    center, low, high = corpus_gate_for(tower, corpus, 0.1, str(reference), cache_dir=False)
    torch.testing.assert_close(center, residual.gate_center, atol=1e-5, rtol=1e-5)
    assert (low, high) == pytest.approx((residual.gate_low, residual.gate_high), abs=1e-5)
    assert tower.term_residual is not None  # given back
    with pytest.raises(ConfigError, match="corpus_gate.*student=term-residual"):
        build_text_method("hybrid-distill", small_encoder(), corpus=str(corpus), cache_dir=False,
                          student="encoder", corpus_gate=0.1)


@requires_transformers
@requires_minilm
def test_build_reads_the_reference_once_for_every_option_that_needs_it(tmp_path, monkeypatch):
    from contrastkit.modalities.text.data import SentenceData

    corpus = write_corpus(tmp_path / "corpus.jsonl", ["protein folding determines enzyme function",
                                                      "the vaccine reduced infection rates",
                                                      "insulin regulates blood glucose"])
    reference = tmp_path / "general.txt"
    reference.write_text("the cat sat on the mat\nit was a sunny day\nwe went to the shop\nhe sings well\n")
    reads = []
    from_file = SentenceData.from_file.__func__

    def counted(cls, path, *args, **kwargs):
        reads.append(str(path))
        return from_file(cls, path, *args, **kwargs)

    monkeypatch.setattr(SentenceData, "from_file", classmethod(counted))
    method = build_text_method("hybrid-distill", TextEncoder.from_folder("minilm", max_length=32), corpus=str(corpus),
                               cache_dir=False, restrict_tokens=1.5, reference_l2=1.0, corpus_gate=0.2,
                               reference=str(reference))
    assert reads == [str(reference)]
    assert method.reference_ids.shape[0] == 4 and method.encoder.term_residual.gate_center is not None


# ------------------------------------------------------------------------------------ the guard


@requires_transformers
@requires_minilm
def test_frozen_base_cache_equals_the_encoders_forward_pass():
    encoder = residual_encoder()
    cache = FrozenBaseCache()
    np.testing.assert_allclose(cache.wrap(encoder).encode(SENTENCES).numpy(), encode_texts(encoder, SENTENCES),
                               atol=1e-5)
    encoder.term_residual.restrict(scale=0.5, allowed=list(range(2000, 5000)))  # same cache, other residual
    np.testing.assert_allclose(cache.wrap(encoder).encode(SENTENCES[::-1]).numpy(),
                               encode_texts(encoder, SENTENCES[::-1]), atol=1e-5)
    other = small_random_encoder(hidden_size=32, layers=1, heads=2, max_length=32, seed=1).eval()
    assert FrozenBaseCache.fingerprint(other) != FrozenBaseCache.fingerprint(encoder)


def test_guard_loss_by_hand():
    before = {"split": "dev", "sets": {"a": {"score": 80.0}, "b": {"score": 50.0}, "c": {"score": 10.0}}}
    after = {"split": "dev", "sets": {"a": {"score": 78.5}, "b": {"score": 50.5}}}
    loss = guard_loss(before, after)
    assert loss == {"a": 1.5, "b": -0.5, "mean": 0.5, "max": 1.5, "worst": "a"}
    with pytest.raises(ConfigError, match="different splits"):
        guard_loss(before, {**after, "split": "test"})


def test_guard_task_specs_are_the_project_task_files():
    from pathlib import Path

    from contrastkit.modalities.text.task_files import read_task_file

    folder = Path(__file__).parents[3] / "benchmarks" / "text_tasks"
    if not folder.is_dir():
        pytest.skip("benchmarks/text_tasks is not beside the tests")
    for name, spec in task_specs().items():
        declared = read_task_file(folder / f"{name}.yaml")
        assert (spec.type, spec.metric, spec.columns) == (declared.type, declared.metric, declared.columns)
        for split in ("dev", "test"):
            assert spec.entry(split) == declared.entry(split), (name, split)


@requires_transformers
@requires_minilm
def test_guard_supersenses_average_25_kmeans_runs():
    """The guard's supersense score: the mean V-measure of k-means runs with seeds 0..24, recomputed with
    scikit-learn from the raw synsets file's dev sample (the task runner's own task averages 5)."""
    from sklearn.cluster import MiniBatchKMeans
    from sklearn.metrics import v_measure_score

    from contrastkit.modalities.text.general_guard import GUARD_KMEANS_SEEDS, WORDNET_SAMPLE_MODULUS
    from contrastkit.modalities.text.sources import hash_bucket, open_text_file
    from contrastkit.modalities.text.task_metrics import KMEANS_BATCH_SIZE

    synsets = data_path("wordnet/synsets.tsv.gz")
    texts, labels = [], []
    with open_text_file(synsets) as handle:
        column = {name: i for i, name in enumerate(handle.readline().rstrip("\n").split("\t"))}
        for line in handle:
            row = line.rstrip("\n").split("\t")
            if row[column["pos"]] == "n" and hash_bucket(row[column["synset_id"]], WORDNET_SAMPLE_MODULUS) == 0:
                texts.append(row[column["definition"]])
                labels.append(row[column["lexfile"]])
    encoder = plain(residual_encoder())
    embeddings = encode_texts(encoder, texts)
    runs = [v_measure_score(labels, MiniBatchKMeans(n_clusters=len(set(labels)), batch_size=KMEANS_BATCH_SIZE,
                                                    n_init=1, random_state=seed).fit_predict(embeddings))
            for seed in range(25)]
    assert GUARD_KMEANS_SEEDS == tuple(range(25))
    score = measure_guard(encoder, "dev", sets=["wordnet-supersenses"])["sets"]["wordnet-supersenses"]["score"]
    assert score == pytest.approx(100 * np.mean(runs), abs=1e-3)
    assert abs(score - 100 * np.mean(runs[:5])) > 1e-3  # not the task runner's five


def test_check_split_has_only_the_wordnet_sets():
    result = measure_guard(None, "check", sets=["stsb", "mrpc", "code-docstring", "coco-captions"])
    assert result["sets"] == {} and set(result["skipped"]) == {"stsb", "mrpc", "code-docstring", "coco-captions"}
    assert all("no 'check' sample" in why for why in result["skipped"].values())
    spec = task_specs()["wordnet-supersenses"]
    assert spec.entry("check").carve.remainder == 2 and spec.entry("test").carve.remainder == 1


@pytest.mark.parametrize(("split", "bucket"), [("test", 1), ("check", 2)])
def test_wordnet_definitions_relevance_is_the_synsets_members(split, bucket):
    path = data_path("wordnet/synsets.tsv.gz")
    retrieval_set = wordnet_definitions_set(split)
    lemma = dict(zip(retrieval_set.doc_ids, retrieval_set.texts, strict=True))
    members = {}
    import gzip

    with gzip.open(path, "rt", encoding="utf-8") as handle:
        next(handle)
        for line in handle:
            synset, pos, _, _, names, definition, _ = line.rstrip("\n").split("\t")
            members[synset] = (pos, set(names.split("|")), definition)
    import hashlib

    sample = [s for s, (pos, _, _) in members.items()  # the supersense task's sample, by its rule
              if pos == "n" and int.from_bytes(hashlib.sha256(s.encode()).digest(), "big") % 40 == bucket]
    assert sorted(retrieval_set.query_ids) == sorted(sample) and len(sample) > 1000
    for query, text in zip(retrieval_set.query_ids, retrieval_set.queries, strict=True):
        pos, names, definition = members[query]
        assert pos == "n" and text == definition
        assert {lemma[d] for d in retrieval_set.qrels[query]} == names


def test_coco_captions_relevance_is_the_other_captions_of_the_image():
    data_path("image-captions/captions.tsv")
    retrieval_set = coco_captions_set("test")
    assert len(retrieval_set.query_ids) == 395
    for query, relevant in retrieval_set.qrels.items():
        assert len(relevant) == 4 and query not in relevant


def test_guard_default_follows_the_method():
    class Adapting:
        adapts_to_corpus = True

    assert guard_split_for("auto", Adapting()) == "test" and guard_split_for("auto", object()) is None
    assert guard_split_for("dev", object()) == "dev" and guard_split_for("off", Adapting()) is None
    with pytest.raises(ConfigError, match="general-guard"):
        guard_split_for("train", Adapting())


# ------------------------------------------------------------------------------- the query tower


@requires_transformers
@requires_minilm
def test_retrieval_embeds_documents_without_the_residual():
    encoder = residual_encoder()
    retrieval_set = tiny_retrieval_set()
    default = evaluate_retrieval(encoder, retrieval_set, cache_dir=False)
    two_towers = evaluate_retrieval(encoder, retrieval_set, cache_dir=False, document_encoder=plain(encoder))
    symmetric = evaluate_retrieval(encoder, retrieval_set, cache_dir=False, document_encoder=encoder)
    assert default == two_towers
    assert document_tower(encoder).term_residual is None and document_tower(plain(encoder)) is not None
    np.testing.assert_allclose(encode_texts(document_tower(encoder), SENTENCES),
                               encode_texts(plain(encoder), SENTENCES), atol=1e-6)
    assert symmetric["queries"] == default["queries"]


@requires_transformers
@requires_minilm
def test_sts_with_a_query_tower_warns_with_its_recorded_cost(tmp_path):
    sts = tmp_path / "sts.csv"
    sts.write_text("sentence1,sentence2,score\n" + "".join(
        f"{a},{b},{i % 5}\n" for i, (a, b) in enumerate(zip(SENTENCES[:8], SENTENCES[1:9]))))
    encoder = residual_encoder()
    encoder.term_residual.corpus = {"role": "query tower", "path": "my-corpus"}
    encoder.save(tmp_path / "run" / "encoder")
    with pytest.warns(QueryTowerWarning, match="my-corpus.*not recorded"):
        evaluate_text_task("sts", str(tmp_path / "run" / "encoder"), sts)
    (tmp_path / "run" / "summary.json").write_text(json.dumps({"general_guard": {
        "split": "test", "loss": {"stsb": 3.76, "mrpc": 0.5, "mean": 2.13, "max": 3.76, "worst": "stsb"}}}))
    message = general_use_message(load_text_encoder(tmp_path / "run" / "encoder"), tmp_path / "run" / "encoder", "STS")
    assert "2.13 points on average" in message and "stsb +3.76" in message and "corpus gate" not in message
    gated = load_text_encoder(tmp_path / "run" / "encoder")
    gated.term_residual.restrict(gate=(torch.ones(32), 0.1, 0.3))
    assert "its corpus gate gives a text the residual" in general_use_message(gated, "a gated tower", "STS")
    task = tmp_path / "tasks" / "my-sts.yaml"
    task.parent.mkdir()
    task.write_text(f"name: my-sts\ntype: sts\ndata:\n  dev: {sts}\n")
    with pytest.warns(QueryTowerWarning, match="my-corpus.*the tasks of my-sts.*2.13 points"):
        evaluate_tasks(str(tmp_path / "run" / "encoder"), task.parent, verbose=False)
    plain(encoder).save(tmp_path / "base")
    with warnings.catch_warnings():
        warnings.simplefilter("error", QueryTowerWarning)
        evaluate_text_task("sts", str(tmp_path / "base"), sts)  # no residual: no warning
        evaluate_tasks(str(tmp_path / "base"), task.parent, verbose=False)


@requires_transformers
@requires_minilm
def test_cli_records_the_guard_before_and_after(tmp_path, capsys, monkeypatch):
    data_path("image-captions/captions.tsv")
    monkeypatch.setattr(general_guard, "GUARD_SETS", ("coco-captions",))  # the smallest set: a quick run
    corpus = write_corpus(tmp_path / "corpus.jsonl", SENTENCES)
    sentences = tmp_path / "sentences.txt"
    sentences.write_text("\n".join(SENTENCES) + "\n")
    code = cli_main(["text", "--method", "hybrid-distill", "--backbone", "random-small", "--data", str(sentences),
                     "--option", f"corpus={corpus}", "--option", "cache_dir=false", "--max-steps", "2",
                     "--batch-size", "4", "--lr", "0.5", "--general-guard", "dev", "--out", str(tmp_path / "run")])
    out = capsys.readouterr().out
    assert code == 0 and "general guard (dev splits)" in out
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    guard = summary["general_guard"]
    assert "evaluation" not in summary  # only the guard was asked for; it lives under general_guard
    direct = {name: measure_guard(load_text_encoder(tmp_path / "run" / folder), "dev")["sets"]["coco-captions"]["score"]
              for name, folder in (("before", "document_encoder"), ("after", "encoder"))}
    assert guard["before"]["sets"]["coco-captions"]["score"] == pytest.approx(direct["before"], abs=1e-3)
    assert guard["after"]["sets"]["coco-captions"]["score"] == pytest.approx(direct["after"], abs=1e-3)
    assert guard["loss"]["coco-captions"] == pytest.approx(direct["before"] - direct["after"], abs=2e-3)
    encoder = load_text_encoder(tmp_path / "run" / "encoder")
    assert encoder.term_residual.corpus["path"] == str(corpus)
    # the run's own record is what the warning quotes
    message = general_use_message(encoder, tmp_path / "run" / "encoder", "STS")
    assert f"{guard['loss']['mean']:.2f} points on average on the general guard (dev splits" in message
