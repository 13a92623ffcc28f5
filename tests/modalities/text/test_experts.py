"""Domain experts (mnrl-moe): enforced routing, the experts' encoder against plain encoders built by hand,
per-domain batches, the loss against a naive MNRL, and `contrastkit fit --method mnrl-moe`.

- gradients: an example of domain d puts gradient in expert d and the shared weights only, and those
  gradients equal the ones of a plain encoder whose MLPs are expert d's (a second model, built by hand);
- with every expert equal to the shared MLP the experts' encoder is the plain encoder; with distinct
  experts each row equals the plain encoder with its domain's MLP weights loaded by hand;
- DomainBatchSampler: every batch of one domain, no row twice in an epoch, two processes' slices equal
  one process's global batch;
- the method's loss equals -log softmax of cosine / t over the batch computed from a hand-built encoder.
"""

from __future__ import annotations

import copy
import json
from collections import Counter

import pytest
import torch
import torch.nn.functional as F

from contrastkit.core.errors import ConfigError, DataError
from tests.conftest import requires_minilm, requires_transformers

pytestmark = [requires_transformers, requires_minilm]

DOMAINS = ["code", "science", "sts"]
TEXTS = ["sort a list in place", "the protein binds to the receptor in mice", "a man is playing a guitar",
         "return the absolute path of a file name"]
ROW_DOMAINS = [0, 1, 2, 0]


def _encoders(expert_layers=None, perturb=True):
    from contrastkit.modalities.text.encoders import small_random_encoder
    from contrastkit.modalities.text.experts import ExpertTextEncoder, RoutedLinear

    base = small_random_encoder(hidden_size=32, layers=2, heads=2, seed=0).eval()
    experts = ExpertTextEncoder(base, DOMAINS, expert_layers).eval()
    if perturb:  # distinct experts, so that a wrong route shows
        generator = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for module in experts.modules():
                if isinstance(module, RoutedLinear):
                    for expert in module.experts:
                        for p in expert.parameters():
                            p.add_(0.3 * torch.randn(p.shape, generator=generator))
    return base, experts


def _by_hand(base, experts, domain: int):
    """A plain copy of ``base`` with ``domain``'s expert weights loaded into its MLPs, layer by layer."""
    plain = copy.deepcopy(base)
    for plain_layer, expert_layer in zip(plain.transformer.encoder.layer, experts.transformer.encoder.layer):
        for part in ("intermediate", "output"):
            routed = getattr(expert_layer, part).dense
            if hasattr(routed, "experts"):
                getattr(plain_layer, part).dense.load_state_dict(routed.experts[domain].state_dict())
    # the shared weights (attention, embeddings, LayerNorms) are the experts' encoder's own
    shared = {k: v for k, v in experts.transformer.state_dict().items() if ".experts." not in k}
    missing = plain.transformer.load_state_dict(shared, strict=False)
    assert not missing.unexpected_keys
    return plain


def test_equal_experts_give_the_plain_encoder():
    base, experts = _encoders(perturb=False)
    tokens = base.tokenize(TEXTS)
    with torch.no_grad():
        torch.testing.assert_close(experts(tokens, ROW_DOMAINS), base(tokens), atol=1e-5, rtol=0)
        torch.testing.assert_close(experts(tokens), base(tokens), atol=1e-5, rtol=0)  # default domain


@pytest.mark.parametrize("expert_layers", [None, 1])
def test_each_row_goes_through_its_domains_experts(expert_layers):
    from contrastkit.modalities.text.experts import RoutedLinear

    base, experts = _encoders(expert_layers)
    routed = [i for i, layer in enumerate(experts.transformer.encoder.layer)
              if isinstance(layer.intermediate.dense, RoutedLinear)]
    assert routed == ([0, 1] if expert_layers is None else [1])
    tokens = base.tokenize(TEXTS)
    with torch.no_grad():
        mixed = experts(tokens, [DOMAINS[d] for d in ROW_DOMAINS])
        for row, domain in enumerate(ROW_DOMAINS):
            expected = _by_hand(base, experts, domain)(tokens)[row]
            torch.testing.assert_close(mixed[row], expected, atol=1e-5, rtol=0)
            torch.testing.assert_close(experts.domain_encoder(DOMAINS[domain])(tokens)[row], expected,
                                       atol=1e-5, rtol=0)
        assert not torch.allclose(mixed[0], _by_hand(base, experts, 1)(tokens)[0], atol=1e-3)


def test_an_example_trains_only_its_expert_and_the_shared_weights():
    from contrastkit.modalities.text.experts import RoutedLinear

    base, experts = _encoders()
    tokens = base.tokenize(TEXTS)
    target = torch.randn(experts.output_dim, generator=torch.Generator().manual_seed(2))
    row = 1  # domain 1 ("science") in a batch of all three domains
    (experts(tokens, ROW_DOMAINS)[row] @ target).backward()
    plain = _by_hand(base, experts, ROW_DOMAINS[row])
    (plain(base.tokenize(TEXTS[row:row + 1]))[0] @ target).backward()  # the example alone, a plain model

    plain_parameters = dict(plain.transformer.named_parameters())
    for name, module in experts.transformer.named_modules():
        if isinstance(module, RoutedLinear):
            for index, expert in enumerate(module.experts):
                for key, p in expert.named_parameters():
                    if index == ROW_DOMAINS[row]:
                        torch.testing.assert_close(p.grad, plain_parameters[f"{name}.{key}"].grad, atol=1e-5,
                                                   rtol=1e-4)
                    else:
                        assert p.grad is None or not p.grad.any(), f"{name}.experts.{index}.{key} got gradient"
    shared = [(n, p) for n, p in experts.transformer.named_parameters() if ".experts." not in n]
    assert any(p.grad is not None and p.grad.any() for _, p in shared)
    for n, p in shared:
        reference = plain_parameters[n].grad
        if reference is not None and p.grad is not None:
            torch.testing.assert_close(p.grad, reference, atol=1e-5, rtol=1e-4)


def test_saved_experts_reload_whole_and_per_domain(tmp_path):
    from contrastkit.modalities.text.encoders import TextEncoder
    from contrastkit.modalities.text.experts import load_expert_encoder

    base, experts = _encoders()
    with experts.routed_to("sts"):
        experts.save(tmp_path / "encoder")
    tokens = base.tokenize(TEXTS)
    reloaded = load_expert_encoder(tmp_path / "encoder").eval()
    plain = TextEncoder.from_folder(tmp_path / "encoder").eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(tokens, ROW_DOMAINS), experts(tokens, ROW_DOMAINS), atol=1e-6, rtol=0)
        torch.testing.assert_close(plain(tokens), _by_hand(base, experts, 2)(tokens), atol=1e-5, rtol=0)
    with pytest.raises(DataError, match="Unknown domain"):
        experts(tokens, ["code", "law", "sts", "code"])


def test_domain_batches_hold_one_domain_and_split_over_processes():
    from contrastkit.modalities.text.pair_data import DomainBatchSampler

    domains = ["a"] * 13 + ["b"] * 7 + ["c"] * 20
    domains = [domains[i] for i in torch.randperm(len(domains), generator=torch.Generator().manual_seed(0))]
    one = DomainBatchSampler(domains, 4, seed=3)
    for epoch in (0, 1):
        one.set_epoch(epoch)
        batches = list(one)
        assert len(batches) == len(one) == 13 // 4 + 7 // 4 + 20 // 4
        assert all(len({domains[i] for i in batch}) == 1 and len(batch) == 4 for batch in batches)
        rows = [i for batch in batches for i in batch]
        assert len(rows) == len(set(rows))
        assert Counter(domains[batch[0]] for batch in batches) == {"a": 3, "b": 1, "c": 5}
    # two processes of 2 rows: their slices of each global batch are the one process's batch of 4
    halves = [DomainBatchSampler(domains, 2, seed=3, rank=r, num_replicas=2) for r in (0, 1)]
    for sampler in (one, *halves):
        sampler.set_epoch(1)
    assert [a + b for a, b in zip(*halves)] == list(one)
    with pytest.raises(DataError, match="fewer rows than one global batch"):
        DomainBatchSampler(domains, 8, seed=0)


def test_loss_is_mnrl_over_the_domains_experts_and_refuses_rows_without_domains():
    from contrastkit.modalities.text.methods import build_text_method
    from contrastkit.modalities.text.pair_data import PairData
    from contrastkit.modalities.text.tables import TrainingPairs

    base, _ = _encoders(perturb=False)
    method = build_text_method("mnrl-moe", base, domains="code,science,sts", temperature=0.1).eval()
    with torch.no_grad():  # distinct experts
        for p in method.encoder.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    anchors, positives = TEXTS[:3], ["a", "protein receptor", "guitar player"]
    batch = {"texts": anchors, "positives": positives, "negatives": [()] * 3, "domains": ["science"] * 3,
             "indices": torch.arange(3)}
    loss, logs = method.training_loss(batch)
    plain = _by_hand(base, method.encoder, 1)
    u = F.normalize(plain(plain.tokenize(anchors)), dim=1)
    v = F.normalize(plain(plain.tokenize(positives)), dim=1)
    naive = sum(-(u[i] @ v[i]) / 0.1 + torch.log(sum(torch.exp(u[i] @ v[j] / 0.1) for j in range(3)))
                for i in range(3)) / 3
    torch.testing.assert_close(loss, naive, atol=1e-5, rtol=1e-5)
    assert -1 <= logs["positive_cosine"] <= 1
    with pytest.raises(DataError, match="'domain' column"):
        method.training_loss({k: v for k, v in batch.items() if k != "domains"})
    data = PairData(TrainingPairs(anchors, positives, [()] * 3, name="rows"))
    with pytest.raises(DataError, match="no 'domain' column"):
        method.use_training_data(data)
    with pytest.raises(ConfigError, match="distinct domain names"):
        build_text_method("mnrl-moe", base, domains=["a", "a"])


def test_fit_mnrl_moe_trains_per_domain_batches_through_the_command(tmp_path):
    import contrastkit
    from contrastkit.modalities.text.encoders import small_random_encoder
    from contrastkit.modalities.text.experts import RoutedLinear, load_expert_encoder
    from contrastkit.modalities.text.pair_data import DomainBatchSampler

    rows = [{"anchor": f"{word} question {i}", "positive": f"{word} answer number {i}", "domain": domain}
            for i in range(8) for domain, word in (("stsb", "cat"), ("code", "def"), ("scifact", "cell"))]
    (tmp_path / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    run = contrastkit.fit(method="mnrl-moe", data=str(tmp_path / "rows.jsonl"), modality="text",
                          backbone="random-small", batch_size=4, max_steps=2, max_length=16, device="cpu",
                          out=str(tmp_path / "run"), lr=1e-3, seed=0)
    assert run["summary"]["steps"] == 2
    encoder = load_expert_encoder(tmp_path / "run" / "encoder")
    assert encoder.domains == ["code", "scifact", "stsb"]  # sorted names from the rows
    # Each step trains one domain's batch: the experts of the domains of the sampler's first two batches
    # moved away from the MLP they were copied from, the others did not (a mixed batch would move all).
    sampler = DomainBatchSampler([r["domain"] for r in rows], 4, seed=0)
    trained = {rows[batch[0]]["domain"] for batch in list(sampler)[:2]}
    start = small_random_encoder(max_length=64, seed=0).transformer.encoder.layer[0].intermediate.dense.weight
    module = encoder.transformer.encoder.layer[0].intermediate.dense
    assert isinstance(module, RoutedLinear)
    moved = {name for name, expert in zip(encoder.domains, module.experts) if not torch.equal(expert.weight, start)}
    assert moved == trained and len(trained) < 3
