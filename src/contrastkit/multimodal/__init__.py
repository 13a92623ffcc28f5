"""Two modalities at once: CLIP-style two-tower training for any pair of encoders.

- :mod:`~contrastkit.multimodal.pairs`: paired sources (two fields of a JSONL/CSV file, two files
  aligned by id, the code-docstring pairs with their split);
- :mod:`~contrastkit.multimodal.towers`: tower inputs (collate + augmentation) and projection heads;
- :mod:`~contrastkit.multimodal.two_tower`: the ``clip`` two-tower method (clip / siglip / hcl,
  gathered negatives, momentum encoders with queues, in-modality losses);
- :mod:`~contrastkit.multimodal.queued_clip`: CLIP against momentum keys and queues (CoCoSoDa);
- :mod:`~contrastkit.multimodal.harmonization`: cross-modality gradient harmonization (Wu et al.);
- :mod:`~contrastkit.multimodal.retrieval`: retrieval metrics in both directions;
- :mod:`~contrastkit.multimodal.method`: the two-tower method on the engine (one step, harmonized
  backward, optimiser groups, EMA);
- :mod:`~contrastkit.multimodal.train`: training on the engine and retrieval evaluation;
- :mod:`~contrastkit.multimodal.text_towers`: two text towers from local model folders;
- :mod:`~contrastkit.multimodal.run_folder`: the towers a run saves, reloaded with ``load_pairs_run``;
- :mod:`~contrastkit.multimodal.cli`: the ``contrastkit pairs`` command.
"""

from __future__ import annotations

from contrastkit.multimodal.harmonization import GradientHarmonizer, project_conflicting
from contrastkit.multimodal.method import TwoTowerMethod
from contrastkit.multimodal.pairs import (
    Pairs,
    read_aligned_pairs,
    read_code_docstring,
    read_pairs,
)
from contrastkit.multimodal.retrieval import pair_retrieval
from contrastkit.multimodal.run_folder import load_pairs_run
from contrastkit.multimodal.text_towers import text_two_tower
from contrastkit.multimodal.towers import TensorInput, TextInput, projection_head
from contrastkit.multimodal.train import (
    TrainOptions,
    encode_side,
    evaluate_pairs,
    train_two_tower,
)
from contrastkit.multimodal.two_tower import TwoTower, TwoTowerOptions, build_two_tower

__all__ = [
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
