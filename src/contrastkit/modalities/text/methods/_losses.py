"""The query-key InfoNCE of the DebCSE, WhitenedCSE, CCP and ICT text methods, gathered across processes.

The loss itself is in the objectives catalogue: :func:`contrastkit.objectives.query_key.query_key_infonce`
and :class:`~contrastkit.objectives.query_key.QueryKeyInfoNCE` (``query_key_infonce``), with the formula
and the papers. Here only its data-parallel form: :class:`QueryKeyInfoNCE` wrapped in
:class:`~contrastkit.nn.distributed.GatheredObjective` compares each query with the keys of every process
(gathered with gradient), the loss of one process on the concatenated batch.
"""

from __future__ import annotations

from torch import nn

from contrastkit.nn.distributed import GatheredObjective
from contrastkit.objectives.query_key import QueryKeyInfoNCE


def gathered_query_key_infonce(temperature: float) -> nn.Module:
    """:class:`QueryKeyInfoNCE` over the keys of every process (the identity wrapper in one process)."""
    return GatheredObjective(QueryKeyInfoNCE(temperature))
