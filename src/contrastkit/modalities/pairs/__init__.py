"""Two modalities at once: CLIP-style two-tower training for any pair of encoders.

- :mod:`~contrastkit.modalities.pairs.pairs`: paired sources (two fields of a JSONL/CSV file, two files
  aligned by id, the code-docstring pairs with their split);
- :mod:`~contrastkit.modalities.pairs.towers`: tower inputs (collate + augmentation) and projection heads;
- :mod:`~contrastkit.modalities.pairs.two_tower`: the ``clip`` two-tower method (clip / siglip / hcl,
  gathered negatives, momentum encoders with queues, in-modality losses);
- :mod:`~contrastkit.objectives.queued_clip`: CLIP against momentum keys and queues (CoCoSoDa);
- :mod:`~contrastkit.modalities.pairs.harmonization`: cross-modality gradient harmonization (Wu et al.);
- :mod:`~contrastkit.modalities.pairs.retrieval`: retrieval metrics in both directions;
- :mod:`~contrastkit.modalities.pairs.method`: the two-tower method on the engine (one step, harmonized
  backward, optimiser groups, EMA);
- :mod:`~contrastkit.modalities.pairs.train`: training on the engine and retrieval evaluation;
- :mod:`~contrastkit.modalities.pairs.text_towers`: two text towers from local model folders;
- :mod:`~contrastkit.modalities.pairs.run_folder`: the towers a run saves, reloaded with ``load_pairs_run``;
- :mod:`~contrastkit.modalities.pairs.cli`: the ``contrastkit pairs`` command.
"""

from __future__ import annotations

from contrastkit.modalities.pairs.harmonization import GradientHarmonizer, project_conflicting
from contrastkit.modalities.pairs.method import TwoTowerMethod
from contrastkit.modalities.pairs.pairs import (
    Pairs,
    read_aligned_pairs,
    read_code_docstring,
    read_pairs,
)
from contrastkit.modalities.pairs.retrieval import pair_retrieval
from contrastkit.modalities.pairs.run_folder import load_pairs_run
from contrastkit.modalities.pairs.text_towers import text_two_tower
from contrastkit.modalities.pairs.towers import TensorInput, TextInput, projection_head
from contrastkit.modalities.pairs.train import (
    TrainOptions,
    encode_side,
    evaluate_pairs,
    train_two_tower,
)
from contrastkit.modalities.pairs.two_tower import TwoTower, TwoTowerOptions, build_two_tower

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
