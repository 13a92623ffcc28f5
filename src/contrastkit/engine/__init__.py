"""The engine: one LightningModule and one ``train`` routine for every modality's pretraining.

A method maps a batch to ``(loss, logs)`` (:mod:`contrastkit.engine.module` gives the protocol);
the engine owns devices, DDP, precision, the optimiser and its schedule, per-step reseeding,
checkpoints (every epoch and every N steps, written atomically), exact resume, the metrics log and
the run folder (:mod:`contrastkit.engine.run_folder`).
"""

from contrastkit.engine.data import EpochShuffleSampler, OneBatchSampler, ResumableLoader, batch_loader
from contrastkit.engine.module import EngineModule, step_seed
from contrastkit.engine.settings import TrainSettings
from contrastkit.engine.trainer import TrainResult, train

__all__ = ["EngineModule", "EpochShuffleSampler", "OneBatchSampler", "ResumableLoader", "TrainResult",
           "TrainSettings", "batch_loader", "step_seed", "train"]
