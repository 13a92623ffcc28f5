"""A CLAN run on NSL-KDD for the SIGKILL test in tests/modalities/tabular/test_tabular.py.

    python tests/modalities/tabular/tabular_resume_run.py NSL_KDD_FOLDER OUT [--resume]

1,024 normal rows of KDDTrain+_20Percent encoded as the benchmark encodes them (72 columns, a
one-hot block corrupted as one feature); CLAN 2 x 64, batches of 64 (16 steps an epoch), 150
steps, a checkpoint every 5 steps, so most checkpoints fall inside an epoch and the run stops
inside its tenth epoch.
"""

from __future__ import annotations

import sys

import numpy as np
import torch

from contrastkit.modalities.tabular.sources import load_nsl_kdd, nsl_kdd_encoder
from contrastkit.modalities.tabular.estimators import CLAN


def main(data: str, out: str, resume: bool) -> None:
    torch.set_num_threads(1)
    train = load_nsl_kdd(data, "train20")
    normal = train.rows(np.flatnonzero(train.label == "normal")[:1024])
    encoder = nsl_kdd_encoder(clip=10.0).fit(normal.table)
    rows = encoder.transform(normal.table)
    model = CLAN(rows.shape[1], hidden_dims=64, depth=2, batch_size=64, feature_groups=encoder.feature_groups(),
                 seed=0)
    model.fit(rows, n_epochs=20, out=out, resume=resume, checkpoint_every_steps=5, max_steps=150)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], resume="--resume" in sys.argv[3:])
