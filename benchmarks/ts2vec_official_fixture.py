"""Record what the official TS2Vec code computes, as a small fixture for the equivalence tests.

The official code (github.com/zhihanyue/ts2vec) is never part of this repository: fetch it
elsewhere and name its folder in ``CONTRASTKIT_TS2VEC_OFFICIAL``; this script imports it from
there, runs its own functions on a few GunPoint / ArrowHead series and writes

    tests/modalities/timeseries/fixtures/ts2vec_official.npz   arrays (float32 / int64 / bool)
    tests/modalities/timeseries/fixtures/ts2vec_official.json  configuration, scalars, provenance

which ``tests/modalities/timeseries/test_ts2vec_official.py`` replays through contrastkit:

* ``init/*``: the official encoder's initial state right after ``torch.manual_seed(SEED)``.
* ``prep/*``: the official training-array preparation (``split_with_nan``,
  ``centerize_vary_length_series``, dropping all-missing series) on series with missing ends.
* ``loss/*``: the official hierarchical loss and its gradients on fixed representations.
* ``step{k}/*``: two steps of the official ``TS2Vec.fit``, run as it is, with every random draw
  recorded as it is made: the batch (the data loader's shuffle), the crop positions
  (``np.random.randint``), the binomial masks (``generate_binomial_mask``) and the dropout
  keep-masks; then the loss, every parameter's gradient, the weights after AdamW and the SWA
  average after the step.
* ``encode/*``: the official ``encode`` of the trained model (full series, per step, pooling
  windows 5 and 4) on series one of which has a missing tail.
* ``svm/*``: embeddings from the official ``encode`` and the accuracy the official
  ``tasks.eval_classification(..., eval_protocol="svm")`` reports on them, with the C its grid
  search chose: on GunPoint (50 training series: the search runs) and on ArrowHead (36: no search,
  C = inf).

    CONTRASTKIT_TS2VEC_OFFICIAL=/path/to/ts2vec OMP_NUM_THREADS=1 python benchmarks/ts2vec_official_fixture.py
"""

from __future__ import annotations

import argparse
import importlib.util
import inspect
import json
import os
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from contrastkit.modalities.timeseries.sources import load_bundled, standardize_with_train_statistics

OFFICIAL_ENV = "CONTRASTKIT_TS2VEC_OFFICIAL"
FIXTURES = Path(__file__).resolve().parents[1] / "tests" / "modalities" / "timeseries" / "fixtures"
SEED = 0
CONFIG = dict(input_dims=1, output_dims=16, hidden_dims=8, depth=3, lr=0.001, batch_size=4, temporal_unit=0)
TRAIN_STEPS = 2


def import_official(folder: Path) -> types.SimpleNamespace:
    """The official modules, imported from their folder (its ``tasks`` package without its
    ``__init__``, which pulls in the anomaly-detection code and its extra dependency)."""
    sys.path.insert(0, str(folder))
    import models.encoder as encoder  # noqa: PLC0415  (the official code's own module names)
    import models.losses as losses  # noqa: PLC0415
    import ts2vec  # noqa: PLC0415
    import utils  # noqa: PLC0415

    spec = importlib.util.spec_from_file_location("tasks", folder / "tasks" / "__init__.py",
                                                  submodule_search_locations=[str(folder / "tasks")])
    sys.modules["tasks"] = importlib.util.module_from_spec(spec)  # the package, left unexecuted
    import tasks._eval_protocols as eval_protocols  # noqa: PLC0415
    import tasks.classification as classification  # noqa: PLC0415

    return types.SimpleNamespace(encoder=encoder, losses=losses, ts2vec=ts2vec, utils=utils,
                                 eval_protocols=eval_protocols, classification=classification)


class Recorder:
    """Everything random the official fit draws, in the order it draws it."""

    def __init__(self, official: types.SimpleNamespace):
        self.official = official
        self.randint: list[np.ndarray] = []
        self.masks: list[np.ndarray] = []
        self.dropout_keeps: list[np.ndarray] = []
        self.batches: list[np.ndarray] = []
        self.last_batch: torch.Tensor | None = None

    def install(self, net: torch.nn.Module) -> None:
        official, recorder = self.official, self

        class RecordingRandom:  # np.random as the official ts2vec module sees it
            def __getattr__(self, name):
                return getattr(np.random, name)

            def randint(self, *args, **kwargs):
                value = np.random.randint(*args, **kwargs)
                recorder.randint.append(np.asarray(value, dtype=np.int64))
                return value

        class NumpyWithRecordingRandom:
            random = RecordingRandom()

            def __getattr__(self, name):
                return getattr(np, name)

        official.ts2vec.np = NumpyWithRecordingRandom()

        draw_mask = official.encoder.generate_binomial_mask

        def recording_mask(batch, length, p=0.5):
            mask = draw_mask(batch, length, p)
            recorder.masks.append(mask.numpy().copy())
            return mask

        official.encoder.generate_binomial_mask = recording_mask

        take_per_row = official.ts2vec.take_per_row

        def recording_take(array, starts, length):
            if array is not recorder.last_batch:  # both crops of a step are cut from one batch
                recorder.last_batch = array
                recorder.batches.append(array.numpy().copy())
            return take_per_row(array, starts, length)

        official.ts2vec.take_per_row = recording_take

        dropout = net.repr_dropout

        class RecordingDropout(torch.nn.Module):
            """The official dropout unchanged; its keep-mask is read by replaying the same
            generator state on a tensor of ones first."""

            def forward(self, h):
                if not self.training:
                    return dropout(h)
                state = torch.get_rng_state()
                probe = F.dropout(torch.ones_like(h), dropout.p, True)
                torch.set_rng_state(state)
                recorder.dropout_keeps.append((probe != 0).numpy().copy())
                return dropout(h)

        net.repr_dropout = RecordingDropout()


def as_official(x: np.ndarray) -> np.ndarray:
    """(N, C, T) -> the official layout (N, T, C)."""
    return np.ascontiguousarray(x.transpose(0, 2, 1))


def record(official: types.SimpleNamespace) -> tuple[dict[str, np.ndarray], dict]:
    arrays: dict[str, np.ndarray] = {}
    meta: dict = {"config": CONFIG, "seed": SEED, "train_steps": TRAIN_STEPS}

    # ---- data: standardised GunPoint series; two with missing ends (variable length)
    gun_train, gun_test = load_bundled("GunPoint", "train"), load_bundled("GunPoint", "test")
    x_train, x_test = standardize_with_train_statistics(gun_train.x, gun_test.x)
    fit_series = x_train[:4].copy()
    fit_series[1, :, -30:] = np.nan  # a shorter series: the official fit re-centres every series
    fit_series[2, :, :10] = np.nan
    arrays["fit/input"] = fit_series

    # ---- preparation of a training array (split into sections, re-centre, drop empty series)
    prep_input = np.concatenate([fit_series, np.full_like(fit_series[:1], np.nan)])
    raw = as_official(prep_input)
    sections = raw.shape[1] // 60
    prepared = np.concatenate(official.utils.split_with_nan(raw, sections, axis=1), axis=0)
    prepared = official.utils.centerize_vary_length_series(prepared)
    prepared = prepared[~np.isnan(prepared).all(axis=2).all(axis=1)]
    arrays["prep/input"], arrays["prep/output"] = prep_input, prepared.astype(np.float32)
    meta["prep_max_train_length"] = 60

    # ---- hierarchical loss on fixed representations (odd lengths: the pooling drops a step)
    generator = torch.Generator().manual_seed(SEED)
    for name, shape, temporal_unit in (("t13", (3, 13, 5), 0), ("t13_unit2", (3, 13, 5), 2), ("b1", (1, 6, 4), 0)):
        z1 = torch.randn(shape, generator=generator, requires_grad=True)
        z2 = torch.randn(shape, generator=generator, requires_grad=True)
        loss = official.losses.hierarchical_contrastive_loss(z1, z2, temporal_unit=temporal_unit)
        loss.backward()
        arrays.update({f"loss/{name}/z1": z1.detach().numpy(), f"loss/{name}/z2": z2.detach().numpy(),
                       f"loss/{name}/grad_z1": z1.grad.numpy(), f"loss/{name}/grad_z2": z2.grad.numpy()})
        meta.setdefault("loss", {})[name] = {"value": float(loss), "temporal_unit": temporal_unit}

    # ---- the official model, its initial state, and two recorded steps of its fit
    torch.manual_seed(SEED)
    np.random.seed(SEED)
    model = official.ts2vec.TS2Vec(device="cpu", max_train_length=None, **CONFIG)
    for key, value in model._net.state_dict().items():
        arrays[f"init/{key}"] = value.numpy().copy()
    arrays["init_averaged/n_averaged"] = model.net.n_averaged.numpy().copy()
    meta["dropout_p"] = model._net.repr_dropout.p
    meta["mask_p"] = inspect.signature(official.encoder.generate_binomial_mask).parameters["p"].default
    recorder = Recorder(official)
    recorder.install(model._net)
    steps: list[dict] = []

    def after_step(trained, loss):
        steps.append({
            "loss": loss,
            "grads": {k: p.grad.numpy().copy() for k, p in trained._net.named_parameters()},
            "weights": {k: v.numpy().copy() for k, v in trained._net.state_dict().items()
                        if not k.startswith("repr_dropout")},
            "averaged": {k: v.numpy().copy() for k, v in trained.net.state_dict().items()},
        })

    model.after_iter_callback = after_step
    model.fit(as_official(fit_series), n_iters=TRAIN_STEPS)
    if len(steps) != TRAIN_STEPS or len(recorder.batches) != TRAIN_STEPS:
        raise RuntimeError(f"expected {TRAIN_STEPS} recorded steps, got {len(steps)} / {len(recorder.batches)}")
    meta["steps"] = []
    for k, step in enumerate(steps):
        crop_length, crop_left, crop_eleft, crop_eright, offsets = recorder.randint[5 * k : 5 * k + 5]
        arrays[f"step{k}/batch"] = recorder.batches[k]
        arrays[f"step{k}/offsets"] = offsets
        arrays[f"step{k}/mask1"], arrays[f"step{k}/mask2"] = recorder.masks[2 * k : 2 * k + 2]
        arrays[f"step{k}/dropout1"], arrays[f"step{k}/dropout2"] = recorder.dropout_keeps[2 * k : 2 * k + 2]
        for group in ("grads", "weights", "averaged"):
            for key, value in step[group].items():
                arrays[f"step{k}/{group}/{key}"] = value
        meta["steps"].append({"loss": step["loss"], "crop_length": int(crop_length), "crop_left": int(crop_left),
                              "crop_eleft": int(crop_eleft), "crop_eright": int(crop_eright)})

    # ---- encode with the averaged weights (the official encode puts the model in eval mode)
    encode_input = x_test[:6].copy()
    encode_input[4, :, -40:] = np.nan
    arrays["encode/input"] = encode_input
    for window in ("full_series", None, 5, 4):
        arrays[f"encode/{window}"] = model.encode(as_official(encode_input), encoding_window=window)

    # ---- SVM protocol on fixed embeddings: GunPoint (search) and ArrowHead (no search, 3 classes)
    arrow_train, arrow_test = load_bundled("ArrowHead", "train"), load_bundled("ArrowHead", "test")
    a_train, a_test = standardize_with_train_statistics(arrow_train.x, arrow_test.x)
    meta["svm"] = {}
    for name, (tr, ytr, te, yte) in {"gunpoint": (x_train, gun_train.y, x_test, gun_test.y),
                                     "arrowhead": (a_train, arrow_train.y, a_test, arrow_test.y)}.items():
        tr, te = as_official(tr.astype(np.float64)), as_official(te.astype(np.float64))
        _, result = official.classification.eval_classification(model, tr, ytr, te, yte, eval_protocol="svm")
        train_repr = model.encode(tr, encoding_window="full_series")
        test_repr = model.encode(te, encoding_window="full_series")
        chosen = official.eval_protocols.fit_svm(train_repr, ytr)
        arrays.update({f"svm/{name}/train_repr": train_repr, f"svm/{name}/train_y": ytr.astype(np.int64),
                       f"svm/{name}/test_repr": test_repr, f"svm/{name}/test_y": yte.astype(np.int64)})
        meta["svm"][name] = {"acc": float(result["acc"]), "C": float(chosen.C),
                             "acc_of_chosen": float(chosen.score(test_repr, yte))}
    return arrays, meta


def provenance(folder: Path) -> dict:
    try:
        commit = subprocess.run(["git", "-C", str(folder), "rev-parse", "HEAD"], capture_output=True, text=True,
                                check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    import sklearn  # noqa: PLC0415

    return {"official_commit": commit, "torch": torch.__version__, "numpy": np.__version__,
            "scikit-learn": sklearn.__version__}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=FIXTURES, help="folder for ts2vec_official.npz/.json")
    args = parser.parse_args()
    folder = os.environ.get(OFFICIAL_ENV)
    if not folder or not (Path(folder) / "ts2vec.py").is_file():
        raise SystemExit(f"Set {OFFICIAL_ENV} to the folder of the official TS2Vec code (holding ts2vec.py).")
    folder = Path(folder).resolve()
    torch.set_num_threads(1)
    arrays, meta = record(import_official(folder))
    meta["provenance"] = provenance(folder)
    args.out.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.out / "ts2vec_official.npz", **{k: np.asarray(v) for k, v in arrays.items()})
    (args.out / "ts2vec_official.json").write_text(json.dumps(meta, indent=1) + "\n")
    size = sum((args.out / f).stat().st_size for f in ("ts2vec_official.npz", "ts2vec_official.json"))
    print(f"wrote {len(arrays)} arrays to {args.out} ({size / 1024:.0f} KiB)")
    for name, svm in meta["svm"].items():
        print(f"official SVM protocol, {name}: acc {svm['acc']:.4f} (C = {svm['C']})")


if __name__ == "__main__":
    main()
