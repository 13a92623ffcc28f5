"""``contrastkit.load(path)``: what a run folder (or an exported model) holds, ready to embed.

The folder's files say what it is:

========================================  ==================================================
folder                                     returns
========================================  ==================================================
image run (``checkpoints/last.ckpt``)      the trained method in eval mode (``.embed(images)``)
  or that ``.ckpt`` file itself
image export (``model.safetensors`` +      :class:`~contrastkit.modalities.image.export.ExportedEncoder`
``config.json`` of ``contrastkit export``)
text run (``encoder/``) or a text model    :class:`~contrastkit.modalities.text.encoders.TextEncoder`
folder (Hugging Face / sentence-transformers)
pairs run (``tower_a/``)                   ``(TwoTower, first input, second input)``
time-series run (``model.pt``)             :class:`~contrastkit.modalities.timeseries.ts2vec.TS2Vec`
graph seed folder (``seed-S/``)            ``(method, graph)``
tabular run (``command.yaml``, or the      the trained SCARF / CLAN estimator in eval mode (``.encode(rows)``;
config.yaml of ``SCARF(...).fit(out=)``)   ``.encode_table(table)`` with the run's feature scaling)
audio run (``modality: audio``)            the trained method in eval mode (``.embed(batch)``)
========================================  ==================================================

Nothing it reads runs code: checkpoints are unpickled with ``torch.load(weights_only=True)``, exports
and text models (and tabular runs) are safetensors + JSON (:mod:`contrastkit.core.safe_loading`). A checkpoint that
carries code is refused with a DataError unless ``trust_checkpoint=True``, which runs that code.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from contrastkit.core.errors import DataError
from contrastkit.modalities.tabular.run_folder import is_estimator_config


def _config(folder: Path) -> dict:
    path = folder / "config.yaml"
    return (yaml.safe_load(path.read_text()) or {}) if path.is_file() else {}


def run_kind(folder: str | Path) -> str | None:
    """What the run folder (or exported model) ``folder`` holds, from its files (the table of
    :mod:`contrastkit.loading`): ``pairs``, ``timeseries``, ``text``, ``graph``, ``tabular``,
    ``audio``, ``image``, ``image-export`` or ``text-model`` (a Hugging Face / sentence-transformers folder);
    None for a folder that holds none of them."""
    folder = Path(folder)
    config = _config(folder)
    if (folder / "tower_a").is_dir():
        return "pairs"
    if (folder / "model.pt").is_file() and "ts2vec" in config:
        return "timeseries"
    if (folder / "encoder").is_dir():
        return "text"
    if config.get("command") == "graph" or ("seed" in config and "features_norm" in config):
        return "graph"
    if (folder / "command.yaml").is_file() or is_estimator_config(config):
        return "tabular"
    if config.get("modality") == "audio":
        return "audio"
    if (folder / "checkpoints" / "last.ckpt").is_file():
        return "image"
    exported = folder / "config.json"
    if exported.is_file() and (folder / "model.safetensors").is_file():
        if json.loads(exported.read_text()).get("format") == "contrastkit-image-encoder":
            return "image-export"
    if exported.is_file():
        return "text-model"
    return None


def load(path: str | Path, *, trust_checkpoint: bool = False) -> Any:
    """The trained model in ``path`` (see the table of :mod:`contrastkit.loading`).

    ``trust_checkpoint=True`` reads an image or graph ``last.ckpt`` that carries code (a pickle
    holding more than tensors and plain values), and so runs that code; by default such a file
    is refused with a DataError."""
    target = Path(path)
    if target.is_file() and target.suffix == ".ckpt":
        from contrastkit.modalities.image.training.restore import load_method

        return load_method(target, trust_checkpoint=trust_checkpoint)[0]
    if not target.is_dir():
        raise DataError(f"contrastkit.load: '{target}' is neither a run folder nor a checkpoint file.")
    kind = run_kind(target)
    if kind == "pairs":
        from contrastkit.modalities.pairs.run_folder import load_pairs_run

        return load_pairs_run(target)
    if kind == "timeseries":
        from contrastkit.modalities.timeseries.ts2vec import TS2Vec

        return TS2Vec.load(target / "model.pt")
    if kind == "text":
        from contrastkit.modalities.text.encoders import TextEncoder

        return TextEncoder.from_folder(target / "encoder")
    if kind == "graph":
        from contrastkit.modalities.graph.run_folder import load_trained

        return load_trained(target, trust_checkpoint=trust_checkpoint)
    if kind == "tabular":
        from contrastkit.modalities.tabular.run_folder import load_tabular_run

        return load_tabular_run(target)
    if kind == "audio":
        from contrastkit.modalities.audio.training import load_audio_run

        return load_audio_run(target)
    if kind == "image":
        from contrastkit.modalities.image.training.restore import load_method

        return load_method(target / "checkpoints" / "last.ckpt", trust_checkpoint=trust_checkpoint)[0]
    if kind == "image-export":
        from contrastkit.modalities.image.export import load_exported

        return load_exported(target)
    if kind == "text-model":
        from contrastkit.modalities.text.encoders import TextEncoder

        return TextEncoder.from_folder(target)
    raise DataError(f"contrastkit.load: '{target}' holds no run that contrastkit knows (no checkpoints/last.ckpt, "
                    f"encoder/, tower_a/, model.pt or exported model).")
