"""A tabular run reloaded from its folder: ``contrastkit.load(RUN)`` on a SCARF or CLAN run.

What a run folder keeps (:meth:`~contrastkit.modalities.tabular.estimators.TabularContrastive.fit`
and :mod:`contrastkit.modalities.tabular.cli`):

- ``config.yaml``: the estimator's name and constructor arguments (``{"estimator": "SCARF",
  "options": {...}}``), from which the estimator is rebuilt;
- ``model.safetensors``: its trained weights (``encoder.*``, and SCARF's ``projector.*``);
- ``feature_encoder.json`` (runs of ``contrastkit fit``): the
  :class:`~contrastkit.modalities.tabular.sources.TabularEncoder` the command fitted on the run's
  training rows -- the one-hot vocabularies, medians and IQRs that turn the table into the rows the
  encoder read. Without it a reload would rescale the table differently and embed it wrongly, so
  it is saved with the run and given back as the estimator's ``feature_encoder``
  (``estimator.encode_table(table)``);
- ``reference_rows.safetensors``: the rows the estimator was fitted on (for CLAN, the benign
  training rows), which :meth:`~contrastkit.modalities.tabular.estimators.TabularContrastive.score`
  compares new rows with: the reloaded estimator scores as the one that trained did, without the
  training table (a run written before this file existed needs ``score(x, reference=...)``);
- ``command.yaml`` (runs of ``contrastkit fit``): the command's options (its data, label column).

A run trained from Python (``SCARF(...).fit(x, out=DIR)``) has all but the feature encoder and
the command: the reloaded estimator encodes (``encode(x)``) and scores (``score(x)``) rows as the
one that trained did.

Nothing here runs code from the folder: weights are safetensors, the rest YAML and JSON. Light at
import (no torch): the command line reads the file names.
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from contrastkit.core.errors import DataError

FEATURE_ENCODER_FILE = "feature_encoder.json"
WEIGHTS_FILE = "model.safetensors"
REFERENCE_FILE = "reference_rows.safetensors"
ESTIMATORS = ("SCARF", "CLAN")


def is_estimator_config(config: dict) -> bool:
    """Whether a run folder's config.yaml is a tabular estimator's (:func:`load_tabular_run` reads it)."""
    return isinstance(config, dict) and config.get("estimator") in ESTIMATORS


def write_feature_encoder(run_dir: str | Path, feature_encoder) -> Path:
    """``run_dir/feature_encoder.json``: the fitted TabularEncoder's state."""
    path = Path(run_dir) / FEATURE_ENCODER_FILE
    path.write_text(json.dumps(feature_encoder.state()) + "\n")
    return path


def write_reference_rows(run_dir: str | Path, rows) -> Path:
    """``run_dir/reference_rows.safetensors``: the (N, D) rows an estimator was fitted on."""
    from safetensors.torch import save_file

    path = Path(run_dir) / REFERENCE_FILE
    save_file({"rows": rows.detach().cpu().contiguous()}, str(path))
    return path


def read_feature_encoder(run_dir: str | Path):
    """The TabularEncoder of ``run_dir/feature_encoder.json``, or None when the run has none."""
    from contrastkit.modalities.tabular.sources import TabularEncoder

    path = Path(run_dir) / FEATURE_ENCODER_FILE
    if not path.is_file():
        return None
    try:
        state = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise DataError(f"'{path}' is not JSON ({error}); it is written by 'contrastkit fit' with the run.") from None
    return TabularEncoder.from_state(state)


def load_tabular_run(run_dir: str | Path, device: str = "cpu"):
    """The trained SCARF / CLAN estimator of the run folder ``run_dir`` on ``device``, in eval mode,
    with the run's ``feature_encoder`` when the folder keeps one (module docstring)."""
    from safetensors.torch import load_file

    from contrastkit.modalities.tabular.estimators import CLAN, SCARF

    folder = Path(run_dir)
    config_path, weights = folder / "config.yaml", folder / WEIGHTS_FILE
    config = yaml.safe_load(config_path.read_text()) if config_path.is_file() else None
    from_command = (folder / "command.yaml").is_file()
    resume = (f"'contrastkit fit --out {folder} --resume'" if from_command
              else f"SCARF/CLAN(...).fit(x, out='{folder}', resume=True) in Python")
    if not is_estimator_config(config):
        if from_command:
            raise DataError(f"'{folder}' is a tabular run that has not started training (no estimator in its "
                            f"config.yaml); continue it with {resume}.")
        raise DataError(f"'{folder}' is not a tabular run: its config.yaml does not name a SCARF or CLAN estimator "
                        f"(pass the folder that 'contrastkit fit --method scarf|clan --out' wrote).")
    if not weights.is_file():
        raise DataError(f"'{folder}' has no {WEIGHTS_FILE}: the run did not finish; continue it with {resume}.")
    options = {**config.get("options", {}), "device": device}
    groups = options.get("feature_groups")
    if groups is not None:
        import numpy as np

        options["feature_groups"] = np.asarray(groups, dtype=np.int64)
    estimator = {"SCARF": SCARF, "CLAN": CLAN}[config["estimator"]](**options)
    state = load_file(str(weights), device=str(estimator.device))
    modules = {"encoder": estimator.encoder, "projector": estimator.projector}
    for name, module in modules.items():
        part = {key.removeprefix(name + "."): value for key, value in state.items() if key.startswith(name + ".")}
        if module is None:
            continue
        try:
            module.load_state_dict(part)
        except RuntimeError as error:
            raise DataError(f"'{weights}' does not fit the {config['estimator']} that '{config_path}' describes "
                            f"({str(error).splitlines()[0]}).") from None
    unknown = sorted(key for key in state if key.split(".", 1)[0] not in modules)
    if unknown:
        raise DataError(f"'{weights}' holds weights of no part of {config['estimator']}: {', '.join(unknown[:5])}.")
    estimator.feature_encoder = read_feature_encoder(folder)
    if estimator.feature_encoder is not None and estimator.feature_encoder.output_dim != estimator.input_dims:
        raise DataError(f"'{folder / FEATURE_ENCODER_FILE}' encodes {estimator.feature_encoder.output_dim} features; "
                        f"the encoder of '{folder}' reads {estimator.input_dims}.")
    reference = folder / REFERENCE_FILE
    if reference.is_file():
        rows = load_file(str(reference)).get("rows")
        if rows is None or rows.ndim != 2 or rows.shape[1] != estimator.input_dims:
            raise DataError(f"'{reference}' does not hold the (N, {estimator.input_dims}) rows the encoder of "
                            f"'{folder}' reads; delete it and pass score(x, reference=...) instead.")
        estimator.reference = rows
    estimator._train_mode(False)
    return estimator
