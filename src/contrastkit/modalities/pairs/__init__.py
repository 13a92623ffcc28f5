"""Two modalities at once: CLIP-style two-tower training for any pair of encoders.

- :mod:`~contrastkit.modalities.pairs.pairs`: paired sources (two fields of a JSONL/CSV file, two files
  aligned by id, the code-docstring pairs with their split);
- :mod:`~contrastkit.modalities.pairs.towers`: tower inputs (collate + augmentation), projection heads, and
  any modality's method as a tower encoder (``EmbeddingTower``; audio clips collate with
  :class:`~contrastkit.modalities.audio.tower.ClipInput`);
- :mod:`~contrastkit.modalities.pairs.two_tower`: the ``clip`` two-tower method (clip / siglip / hcl,
  gathered negatives, momentum encoders with queues, in-modality losses);
- :mod:`~contrastkit.objectives.queued_clip`: CLIP against momentum keys and queues (CoCoSoDa);
- :mod:`~contrastkit.modalities.pairs.harmonization`: cross-modality gradient harmonization (Wu et al.);
- :mod:`~contrastkit.modalities.pairs.retrieval`: retrieval metrics in both directions, by pair or by label;
- :mod:`~contrastkit.modalities.pairs.method`: the two-tower method on the engine (one step, harmonized
  backward, optimiser groups, EMA);
- :mod:`~contrastkit.modalities.pairs.train`: training on the engine and retrieval evaluation;
- :mod:`~contrastkit.modalities.pairs.text_towers`: two text towers from local model folders;
- :mod:`~contrastkit.modalities.pairs.run_folder`: the towers a run saves, reloaded with ``load_pairs_run``;
- :mod:`~contrastkit.modalities.pairs.cli`: the ``contrastkit pairs`` command.
"""

from __future__ import annotations

from contrastkit.core.lazy import lazy_attributes

# Names resolve on first use (PEP 562), so that importing the package (e.g. for its light
# plugin module) loads neither torch nor the methods.
_EXPORTS = {
    "EmbeddingTower": ("contrastkit.modalities.pairs.towers", "EmbeddingTower"),
    "GradientHarmonizer": ("contrastkit.modalities.pairs.harmonization", "GradientHarmonizer"),
    "Pairs": ("contrastkit.modalities.pairs.pairs", "Pairs"),
    "TensorInput": ("contrastkit.modalities.pairs.towers", "TensorInput"),
    "TextInput": ("contrastkit.modalities.pairs.towers", "TextInput"),
    "TrainOptions": ("contrastkit.modalities.pairs.train", "TrainOptions"),
    "TwoTower": ("contrastkit.modalities.pairs.two_tower", "TwoTower"),
    "TwoTowerMethod": ("contrastkit.modalities.pairs.method", "TwoTowerMethod"),
    "TwoTowerOptions": ("contrastkit.modalities.pairs.two_tower", "TwoTowerOptions"),
    "build_two_tower": ("contrastkit.modalities.pairs.two_tower", "build_two_tower"),
    "encode_side": ("contrastkit.modalities.pairs.train", "encode_side"),
    "evaluate_pairs": ("contrastkit.modalities.pairs.train", "evaluate_pairs"),
    "label_retrieval": ("contrastkit.modalities.pairs.retrieval", "label_retrieval"),
    "load_pairs_run": ("contrastkit.modalities.pairs.run_folder", "load_pairs_run"),
    "pair_retrieval": ("contrastkit.modalities.pairs.retrieval", "pair_retrieval"),
    "project_conflicting": ("contrastkit.modalities.pairs.harmonization", "project_conflicting"),
    "projection_head": ("contrastkit.modalities.pairs.towers", "projection_head"),
    "read_aligned_pairs": ("contrastkit.modalities.pairs.pairs", "read_aligned_pairs"),
    "read_code_docstring": ("contrastkit.modalities.pairs.pairs", "read_code_docstring"),
    "read_pairs": ("contrastkit.modalities.pairs.pairs", "read_pairs"),
    "text_two_tower": ("contrastkit.modalities.pairs.text_towers", "text_two_tower"),
    "train_two_tower": ("contrastkit.modalities.pairs.train", "train_two_tower"),
}


__getattr__, __dir__ = lazy_attributes(__name__, _EXPORTS)

__all__ = [
    "EmbeddingTower",
    "GradientHarmonizer",
    "Pairs",
    "TensorInput",
    "TextInput",
    "TrainOptions",
    "TwoTower",
    "TwoTowerMethod",
    "TwoTowerOptions",
    "build_two_tower",
    "encode_side",
    "evaluate_pairs",
    "label_retrieval",
    "load_pairs_run",
    "pair_retrieval",
    "project_conflicting",
    "projection_head",
    "read_aligned_pairs",
    "read_code_docstring",
    "read_pairs",
    "text_two_tower",
    "train_two_tower",
]
