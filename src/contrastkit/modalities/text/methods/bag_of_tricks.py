"""Replaced-token detection, then replaced-token detection + sentence contrast: the pretraining recipe of
"Bag of Tricks for Effective Language Model Pretraining and Downstream Adaptation: A Case Study on GLUE"
(Zhong et al., 2023, https://arxiv.org/abs/2302.09268; Vega v1), on ELECTRA's replaced-token detection
(Clark et al., "ELECTRA: Pre-training Text Encoders as Discriminators Rather Than Generators", ICLR 2020,
https://arxiv.org/abs/2003.10555).

Each step, for a batch of sentences ``x``:

1. BERT's corruption (:func:`~contrastkit.modalities.text.masked_lm.mask_tokens`: 15 % of the ordinary
   tokens, 80/10/10 [MASK] / random / kept) gives ``x^masked``;
2. the **generator** -- the first ``generator_layers`` Transformer layers of the encoder, copied, sharing
   its embeddings (ELECTRA ties the generator's and discriminator's embeddings), with a
   :class:`~contrastkit.modalities.text.masked_lm.MaskedLMHead` tied to those embeddings -- predicts the
   masked tokens (``L_MLM``, the catalogue's ``masked_language_modelling``) and one token is sampled
   from its softmax at each masked position (no gradient flows through the sample), giving
   ``x^corrupt``;
3. the **discriminator** -- the encoder being trained, plus ELECTRA's head (dense, GELU, dense to one
   logit) -- says for every token of ``x^corrupt`` whether it was replaced (``L_Disc``, the catalogue's
   ``replaced_token_detection``; a sample equal to the original counts as original);
4. in **phase 2** (from ``phase_one_steps`` optimiser steps on) a sentence-level contrastive term
   joins: the encoder's pooled embedding of ``x^corrupt`` (from the discriminator's pass) and of the
   clean ``x`` (a second pass with its own dropout masks) are a positive pair, the other sentences of
   the batch negatives (the catalogue's ``infonce`` at ``temperature``, gathered across processes)::

    phase 1:  L = L_MLM + lambda L_Disc                          lambda = 50 (ELECTRA)
    phase 2:  L = L_MLM + lambda L_Disc + mu L_contrast          mu = ``contrastive_weight``

Deviations. The report pretrains a 1.3 B-parameter DeBERTa-style model from scratch and does not spell
out its contrastive views; here the encoder starts from a trained sentence encoder (all-MiniLM-L6-v2),
the generator is a 2-layer copy of it rather than a narrower network, and the contrastive pair is
(corrupted, clean) -- SimCSE's in-batch InfoNCE with the replacement corruption plus dropout as the
noise (COCO-LM's sequence contrast pairs a corrupted sequence with another view of its original in the
same way), which costs one extra pass instead of SimCSE's two. The generator, its head and the
discriminator head are auxiliary: only the encoder is saved and evaluated.

Options (``build(encoder, **options)``):
    generator_layers: Transformer layers of the generator (default 2).
    mask_probability: BERT's share of masked tokens (0.15).
    discriminator_weight: ``lambda`` (50).
    phase_one_steps: optimiser steps of phase 1 (None: half the run's planned steps).
    contrastive_weight: ``mu`` (1.0).
    temperature: of the InfoNCE (0.05, SimCSE's).
    objective: the contrastive catalogue objective of view pairs (``infonce``).
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from contrastkit import objectives
from contrastkit.core.errors import ConfigError
from contrastkit.core.seeding import seeded
from contrastkit.modalities.text.encoders import TextEncoder, pool_tokens
from contrastkit.modalities.text.masked_lm import IGNORE_INDEX, MaskedLMHead, mask_tokens
from contrastkit.modalities.text.methods import check_options
from contrastkit.modalities.text.methods._parts import pair_cosines, pair_objective
from contrastkit.nn.distributed import GatheredObjective
from contrastkit.objectives.replaced_token_detection import ELECTRA_DISCRIMINATOR_WEIGHT, electra_loss, replaced_labels

DEFAULTS = {"generator_layers": 2, "mask_probability": 0.15, "discriminator_weight": ELECTRA_DISCRIMINATOR_WEIGHT,
            "phase_one_steps": None, "contrastive_weight": 1.0, "temperature": 0.05, "objective": "infonce"}
MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def truncated_copy(transformer: nn.Module, layers: int) -> nn.Module:
    """A copy of a BERT-like ``transformer`` keeping its first ``layers`` layers and sharing (not
    copying) its embeddings module: ELECTRA's generator, whose embeddings are the discriminator's."""
    blocks = getattr(getattr(transformer, "encoder", None), "layer", None)
    if not hasattr(transformer, "embeddings") or not isinstance(blocks, nn.ModuleList):
        raise ConfigError("rtd-contrastive builds its generator from the encoder's first layers and needs a BERT-like "
                          f"model (embeddings, encoder.layer); got {type(transformer).__name__}.")
    if not 1 <= layers <= len(blocks):
        raise ConfigError(f"rtd-contrastive: generator_layers must be in 1..{len(blocks)} (the encoder's layers), "
                          f"got {layers}.")
    generator = copy.deepcopy(transformer)
    generator.embeddings = transformer.embeddings
    generator.encoder.layer = nn.ModuleList(list(generator.encoder.layer)[:layers])
    generator.config.num_hidden_layers = layers
    if getattr(generator, "pooler", None) is not None:
        generator.pooler = None  # read by no loss
    return generator


class RTDContrastive(nn.Module):
    """ELECTRA's generator and discriminator on the encoder; from ``phase_one_steps`` on, plus in-batch
    contrast of each corrupted sentence with its clean self."""

    name = "rtd-contrastive"
    needs_context = False

    def __init__(self, encoder: TextEncoder, generator_layers: int, mask_probability: float,
                 discriminator_weight: float, phase_one_steps: int | None, contrastive_weight: float,
                 contrastive: nn.Module):
        super().__init__()
        self.encoder = encoder
        transformer = encoder.transformer
        embeddings = transformer.get_input_embeddings()
        hidden = encoder.output_dim
        self.generator = truncated_copy(transformer, generator_layers)
        with seeded(0):  # the new heads start the same in every run and process (a resumed run rebuilds them)
            self.generator_head = MaskedLMHead(hidden, embeddings.num_embeddings, embeddings.weight)
            self.discriminator_head = nn.Sequential(nn.Linear(hidden, hidden), nn.GELU(), nn.Linear(hidden, 1))
        self.mlm = GatheredObjective(objectives.get("masked_language_modelling"))
        self.rtd = GatheredObjective(objectives.get("replaced_token_detection"))
        self.contrastive = contrastive
        self.mask_probability = mask_probability
        self.discriminator_weight = discriminator_weight
        self.phase_one_steps = phase_one_steps
        self.contrastive_weight = contrastive_weight
        self.register_buffer("special_ids", torch.tensor(sorted(set(encoder.tokenizer.all_special_ids))),
                             persistent=False)
        # In the checkpoint, so a resumed run switches phase at the step an uninterrupted one does.
        self.register_buffer("completed_steps", torch.zeros((), dtype=torch.long))
        self.register_buffer("planned_steps", torch.zeros((), dtype=torch.long))

    def in_phase_two(self) -> bool:
        switch = self.phase_one_steps if self.phase_one_steps is not None else int(self.planned_steps) // 2
        planned = self.phase_one_steps is not None or int(self.planned_steps) > 0
        return planned and int(self.completed_steps) >= switch

    def corrupt(self, tokens: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(L_MLM, x^corrupt)``: the generator's loss on BERT-masked tokens and its sampled replacements."""
        input_ids, attention_mask = tokens["input_ids"], tokens["attention_mask"]
        special = torch.isin(input_ids, self.special_ids)
        masked_ids, labels = mask_tokens(input_ids, attention_mask, special, self.encoder.tokenizer.mask_token_id,
                                         self.generator_head.bias.shape[0], self.mask_probability)
        hidden = self.generator(**{**tokens, "input_ids": masked_ids}).last_hidden_state
        is_masked = labels != IGNORE_INDEX
        logits = self.generator_head(hidden[is_masked])  # the vocabulary projection at the masked tokens only
        mlm_loss = self.mlm(logits, targets=labels[is_masked])
        with torch.no_grad():
            sampled = torch.multinomial(torch.softmax(logits.detach().float(), dim=-1), 1).squeeze(-1)
        corrupted = input_ids.clone()
        corrupted[is_masked] = sampled
        return mlm_loss, corrupted

    def training_loss(self, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        device = self.encoder.device
        tokens = {k: v.to(device) for k, v in self.encoder.tokenize(batch["texts"]).items() if k in MODEL_INPUTS}
        mlm_loss, corrupted = self.corrupt(tokens)
        replaced = replaced_labels(corrupted, tokens["input_ids"])
        corrupted_tokens = {**tokens, "input_ids": corrupted}
        hidden = self.encoder.token_states(corrupted_tokens)
        rtd_loss = self.rtd(self.discriminator_head(hidden).squeeze(-1), replaced=replaced,
                            attention_mask=tokens["attention_mask"])
        loss = electra_loss(mlm_loss, rtd_loss, self.discriminator_weight)
        real = tokens["attention_mask"].bool()
        logs = {"mlm": float(mlm_loss.detach()), "rtd": float(rtd_loss.detach()),
                "replaced_share": float(replaced[real].mean()), "phase": 1.0}
        if self.in_phase_two():
            pooled = pool_tokens(hidden, tokens["attention_mask"], self.encoder.pooling)
            z_corrupted = self.encoder.finish(pooled, corrupted_tokens)
            z_clean = self.encoder(tokens)
            contrast = self.contrastive(z_corrupted, z_clean)
            loss = loss + self.contrastive_weight * contrast
            logs.update({"contrastive": float(contrast.detach()), "phase": 2.0, **pair_cosines(z_corrupted, z_clean)})
        return loss, logs

    def after_optimizer_step(self, step: int, total_steps: int) -> None:
        self.completed_steps.fill_(step)
        self.planned_steps.fill_(total_steps)


def _positive(value, option: str, integer: bool = False, upper: float | None = None):
    kind = int if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kind) or value <= 0 or (upper is not None and value >= upper):
        bound = f" and below {upper}" if upper is not None else ""
        raise ConfigError(f"rtd-contrastive: option '{option}' must be a positive {'integer' if integer else 'number'}"
                          f"{bound}, got {value!r}.")
    return value


def build(encoder: TextEncoder, **options) -> RTDContrastive:
    settings = check_options("rtd-contrastive", options, DEFAULTS)
    if encoder.tokenizer.mask_token_id is None:
        raise ConfigError("rtd-contrastive masks tokens, but the encoder's tokenizer has no mask token; use a "
                          "BERT-like backbone (minilm, random-small).")
    phase_one_steps = settings["phase_one_steps"]
    if phase_one_steps is not None and (isinstance(phase_one_steps, bool) or not isinstance(phase_one_steps, int)
                                        or phase_one_steps < 0):
        raise ConfigError(f"rtd-contrastive: option 'phase_one_steps' must be a non-negative integer or null (half "
                          f"the run), got {phase_one_steps!r}.")
    return RTDContrastive(
        encoder,
        generator_layers=_positive(settings["generator_layers"], "generator_layers", integer=True),
        mask_probability=float(_positive(settings["mask_probability"], "mask_probability", upper=1.0)),
        discriminator_weight=float(_positive(settings["discriminator_weight"], "discriminator_weight")),
        phase_one_steps=phase_one_steps,
        contrastive_weight=float(_positive(settings["contrastive_weight"], "contrastive_weight")),
        contrastive=pair_objective(settings["objective"], float(settings["temperature"]), "rtd-contrastive"),
    )
