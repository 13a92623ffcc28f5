"""Audio methods on the engine: the batches, the training call and the embeddings of clips.

A batch is ``{"wave": (B, longest) float32, "length": (B,) int64, "index": (B,) int64}``: the clips
at the sampler's positions, zero-padded to the longest (:meth:`AudioClips.batch`). The engine's
:class:`~contrastkit.engine.processes.ShareBatches` cuts every epoch's shuffle (seeded by (seed,
epoch)) into global batches of ``batch_size`` x processes, and
:class:`~contrastkit.engine.processes.GlobalDrawsModule` hands each method the step's seed, the
same on every process, from which the views are drawn for the whole global batch
(:class:`~contrastkit.modalities.audio.methods.parts.StepDraws`). So a run killed after any
checkpoint resumes to the weights of an uninterrupted one, and N processes of b clips train as one
process of N x b clips.
"""

from __future__ import annotations

import os

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from contrastkit.engine import TrainSettings, train
from contrastkit.engine.processes import GlobalDrawsModule, ShareBatches
from contrastkit.engine.trainer import TrainResult
from contrastkit.modalities.audio.sources import AudioClips


class ClipBatches(Dataset):
    """The clips at ``positions`` of ``clips``; one ``__getitems__`` call returns a padded batch."""

    def __init__(self, clips: AudioClips, positions: np.ndarray):
        self.clips = clips
        self.positions = np.asarray(positions, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.positions)

    def __getitems__(self, rows: list[int]) -> dict[str, torch.Tensor]:
        index = self.positions[np.asarray(rows, dtype=np.int64)]
        waves, lengths = self.clips.batch(index)
        return {"wave": torch.from_numpy(waves), "length": torch.from_numpy(lengths),
                "index": torch.from_numpy(index)}


def train_audio(method: nn.Module, clips: AudioClips, positions: np.ndarray, settings: TrainSettings,
                run_dir: str | os.PathLike, *, resume: bool = False, description: dict | None = None) -> TrainResult:
    """Train ``method`` on the clips at ``positions`` into ``run_dir`` (the engine's run folder).
    A method with frame targets fitted on the training clips (HuBERT) fits them first, the same
    way on every process and on resuming."""
    prepare_targets = getattr(method, "prepare_targets", None)
    if prepare_targets is not None:
        prepare_targets(clips, positions)
    module = GlobalDrawsModule(method, settings, description)
    return train(method, ShareBatches(ClipBatches(clips, positions), settings.batch_size, settings.seed), settings,
                 run_dir, resume=resume, description=description, module=module)


@torch.no_grad()
def embed_clips(method: nn.Module, clips: AudioClips, positions: np.ndarray | None = None, batch_size: int = 64,
                device: str | torch.device = "cpu") -> np.ndarray:
    """``method.embed`` of every clip at ``positions`` (all when None), whole, in eval mode; clips
    are batched in order of length, so a batch pads little, and returned in the order given."""
    positions = np.arange(len(clips)) if positions is None else np.asarray(positions, dtype=np.int64)
    was_training = method.training
    method.eval().to(device)
    order = np.argsort(clips.lengths[positions], kind="stable")
    out: list[np.ndarray] = [None] * len(positions)  # type: ignore[list-item]
    for start in range(0, len(order), batch_size):
        rows = order[start:start + batch_size]
        waves, lengths = clips.batch(positions[rows])
        batch = {"wave": torch.from_numpy(waves).to(device), "length": torch.from_numpy(lengths).to(device)}
        for row, vector in zip(rows, method.embed(batch).float().cpu().numpy(), strict=True):
            out[row] = vector
    method.train(was_training)
    return np.stack(out) if out else np.zeros((0, 0), dtype=np.float32)


def load_audio_run(folder: str | os.PathLike) -> nn.Module:
    """The trained method of an audio run folder, in eval mode (``method.embed(batch)``): rebuilt
    from its config.yaml and given the weights of checkpoints/last.ckpt (read without running code)."""
    from pathlib import Path

    import yaml

    from contrastkit.core.safe_loading import START_AGAIN, read_torch_file
    from contrastkit.engine.run_folder import CHECKPOINT
    from contrastkit.modalities.audio.cli import DEFAULTS, build_method

    folder = Path(folder)
    options = {**DEFAULTS, **(yaml.safe_load((folder / "config.yaml").read_text()) or {})}
    method = build_method(options, options["sample_rate"])
    state = read_torch_file(folder / CHECKPOINT, alternative=START_AGAIN)["state_dict"]
    method.load_state_dict({k.removeprefix("method."): v for k, v in state.items()})
    return method.eval()
