"""wav2vec 2.0-style masked contrastive learning on the raw waveform (Baevski, Zhou, Mohamed & Auli,
"wav2vec 2.0: A Framework for Self-Supervised Learning of Speech Representations", NeurIPS 2020).

A crop of each clip goes through the strided-convolution feature encoder to latents ``z_t`` (one
per 10 ms; :class:`~contrastkit.modalities.audio.encoders.FrameTransformer`). Spans of latent
frames are masked (replaced by a learned embedding) and a Transformer over all frames gives
``c_t``; the targets are the Gumbel-softmax product quantisations ``q_t`` of the unmasked ``z_t``
(:class:`~contrastkit.modalities.audio.quantizer.GumbelProductQuantizer`, G codebooks of V
entries). The catalogue's ``wav2vec_contrastive`` scores each masked ``c_t`` (projected) against
``q_t`` and K distractors from other masked steps of the same utterance (cosine / 0.1), and
``codebook_diversity`` (weight ``alpha = diversity_weight``, the paper's 0.1) keeps the codewords
in use: ``loss = L_m + alpha L_d`` (objectives/wav2vec.py). ``L_d`` averages the codebook softmax
over the masked frames of the batch, whose latents are the targets (the paper's code quantises
only those).

Scaled to FSDD (0.4 s crops at 8 kHz, 10 ms frames: 38 latent frames per crop; the paper: 15.6 s
utterances on average at 20 ms frames): spans of ``M = 5`` frames (50 ms, about one phone; the
paper's 10 frames are 200 ms, half a clip here) starting at ``s = round(p T)`` frames drawn without
replacement with ``p = 0.13``, so that a 38-frame crop has 5 spans and 52 % of its frames masked
on average (:func:`~contrastkit.modalities.audio.masking.expected_masked_fraction`; the paper's
p = 0.065, M = 10 masks about 49 %); ``K = 10`` distractors (the paper's 100 exceed the ~20 masked
frames of a crop); G = 2 codebooks of V = 64 entries (the paper: 2 x 320 for 960 h of speech;
FSDD has about 80 000 training frames). The embedding is the mean of the Transformer's outputs
over the whole clip's frames, without masking.
"""

from __future__ import annotations

from torch import Tensor, nn

from contrastkit import objectives
from contrastkit.modalities.audio.encoders import FrameTransformer, frame_mask, masked_mean
from contrastkit.modalities.audio.masking import sample_distractors, span_mask
from contrastkit.modalities.audio.methods.parts import StepDraws
from contrastkit.modalities.audio.quantizer import GumbelProductQuantizer
from contrastkit.modalities.audio.views import crop_at, crop_starts
from contrastkit.nn.distributed import GatheredObjective

CONTRAST_TEMPERATURE = 0.1  # the paper's kappa


class Wav2vec2(StepDraws, nn.Module):
    def __init__(self, backbone: FrameTransformer, quantizer: GumbelProductQuantizer, final_dim: int, crop: int,
                 mask_prob: float, mask_length: int, num_distractors: int, diversity_weight: float):
        super().__init__()
        self.backbone = backbone
        self.quantizer = quantizer
        self.final_projection = nn.Linear(backbone.output_dim, final_dim)
        self.sample_rate = backbone.sample_rate
        self.crop, self.mask_prob, self.mask_length = crop, mask_prob, mask_length
        self.num_distractors, self.diversity_weight = num_distractors, diversity_weight
        self.contrastive = GatheredObjective(objectives.get("wav2vec_contrastive", temperature=CONTRAST_TEMPERATURE))
        self.diversity = GatheredObjective(objectives.get("codebook_diversity"))

    def training_loss(self, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, float]]:
        draws = self.draws(len(batch["wave"]), batch["wave"].device)
        waves, lengths = crop_at(batch["wave"], batch["length"], self.crop,
                                 crop_starts(batch["length"], self.crop, draws))
        latents, valid = self.backbone.latents(waves, lengths)
        frames = latents.shape[1]
        masked = span_mask(valid, frames, self.mask_prob, self.mask_length, draws)
        distractors = sample_distractors(masked, self.num_distractors, draws)
        gumbel = draws.uniform(frames, self.quantizer.groups, self.quantizer.entries)
        quantized, code_logits = self.quantizer(latents, gumbel)
        contexts = self.final_projection(self.backbone(latents, valid, masked))
        contrastive = self.contrastive(contexts, quantized, masked=masked, distractors=distractors)
        diversity = self.diversity(code_logits, None, frames=masked & frame_mask(valid, frames))
        return contrastive + self.diversity_weight * diversity, {
            "contrastive": float(contrastive.detach()), "diversity": float(diversity.detach()),
            "gumbel_temperature": float(self.quantizer.temperature)}

    def after_optimizer_step(self, step: int, total_steps: int) -> None:
        self.quantizer.anneal(step, total_steps)

    def frame_features(self, waves: Tensor, lengths: Tensor, layer: int | None = None) -> tuple[Tensor, Tensor]:
        """The Transformer's frames (block ``layer``, or the output) of whole clips, and their valid counts."""
        latents, valid = self.backbone.latents(waves, lengths)
        return self.backbone(latents, valid, layer=layer), valid

    def embed(self, batch: dict[str, Tensor]) -> Tensor:
        return masked_mean(*self.frame_features(batch["wave"], batch["length"]))


def build(options: dict, sample_rate: int) -> Wav2vec2:
    backbone = FrameTransformer(sample_rate, options["width"], options["depth"])
    quantizer = GumbelProductQuantizer(options["width"], options["projection_dim"], options["codebook_groups"],
                                       options["codebook_entries"])
    return Wav2vec2(backbone, quantizer, options["projection_dim"], round(options["crop_seconds"] * sample_rate),
                    options["mask_prob"], options["mask_length"], options["num_distractors"],
                    options["diversity_weight"])
