"""Start a method's encoder from pretrained weights (``contrastkit fit ... --init PATH``).

One loader for every modality: :func:`load_initial_weights` finds the method's encoder (its
``backbone``, ``encoder`` or, for two towers, ``model`` attribute), reads a file of weights, finds
where the encoder's tensors sit in it and copies them in. ``engine.train`` calls it before the
first step of a run that is not resumed (a resumed run restores everything, optimiser included,
from its checkpoint; ``--init`` sets only the encoder's weights, at step 0). What ``PATH`` may be:

- an exported encoder: a ``.safetensors`` file or a folder holding ``model.safetensors``
  (``contrastkit export``'s image encoders, a text run's sentence-transformers ``encoder/``, a
  tabular run's weights);
- a run folder: its exported encoder as above, else ``encoder/model.safetensors`` (text runs),
  else ``checkpoints/last.ckpt``, else ``model.pt`` (time series);
- a contrastkit checkpoint (``.ckpt``: Lightning's ``state_dict``, keys ``method.<part>.<name>``);
- a plain torch state dict (``.pt`` / ``.pth``; a ``state_dict`` entry, or nested dicts of tensors
  such as TS2Vec's ``{"encoder": ..., "averaged_encoder": ...}``, flattened with dots).

A method with a learnable input ``frontend`` beside its encoder (audio's waveform convolutions) gets
it from beside the encoder in the file too, when the file holds it; a method with no encoder
attribute (audio's CPC: frontend + context network) is loaded whole, from a checkpoint of the same
method.

Torch files are read without running code (:mod:`contrastkit.core.safe_loading`).

Matching keys. The file's keys are the encoder's behind a prefix that depends on who wrote it
(``backbone.``, ``encoder.``, ``module.`` of DataParallel, ``method.backbone.`` of a checkpoint,
none for an export). Each way of writing a file key as ``prefix + encoder key`` votes for its
prefix; the prefix with the most votes wins (ties: the one that ends with the encoder's attribute
name, then the shortest, so a checkpoint's ``method.backbone.`` beats its momentum copy). Keys of
the file outside the prefix (a projector, a momentum copy) are other parts of the method and are
left alone. Under it, every key of the encoder must be there with its shape, and nothing else:
otherwise a ConfigError names the missing, unexpected and mis-shaped keys (the first few of each,
and how many). When the whole encoder does not fit, a Hugging Face model inside it (a text
encoder's ``transformer``) is tried, since an exported sentence-transformers folder holds only it.

Copies. A method that keeps a copy of its encoder made when it was built (BYOL's and MoCo's momentum
targets, TS2Vec's SWA average, JEPA's target encoder) would otherwise keep the random weights there:
every other module of the method of the loaded part's type, with the same tensor names and shapes,
gets the loaded weights as well (``InitRecord.copies`` names them).
"""

from __future__ import annotations

import json
import os
import weakref
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from contrastkit.core.errors import ConfigError, DataError
from contrastkit.core.safe_loading import read_torch_file

ENCODER_ATTRIBUTES = ("backbone", "encoder", "model")  # where a method keeps what --init loads, in order
RUN_FOLDER_FILES = ("model.safetensors", "export/model.safetensors", "encoder/model.safetensors",
                    "checkpoints/last.ckpt", "model.pt")
INIT_RECORD = "init.json"  # written into the run folder of a run started with --init
SHOWN = 5  # keys named per kind of mismatch

# method -> InitRecord: a method is initialised once even when a modality asks before engine.train does
_initialised: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


@dataclass(frozen=True)
class InitRecord:
    """What ``--init`` loaded: ``source`` as given, the ``file`` read and its ``format``, the part of the
    method it went into (``loaded_into``, e.g. ``backbone`` or ``encoder.transformer``), the prefix
    stripped from the file's keys and the number of tensors copied."""

    source: str
    file: str
    format: str
    loaded_into: str
    prefix: str
    tensors: int
    copies: tuple[str, ...] = ()

    def as_dict(self) -> dict:
        return asdict(self)


def weights_file(path: str | os.PathLike) -> Path:
    """The file of weights that ``path`` names: itself, or in a folder the first of ``RUN_FOLDER_FILES``."""
    path = Path(path)
    if path.is_file():
        return path
    if path.is_dir():
        for name in RUN_FOLDER_FILES:
            if (path / name).is_file():
                return path / name
        raise ConfigError(f"--init: the folder '{path}' holds none of {', '.join(RUN_FOLDER_FILES)}; give an "
                          f"exported encoder ('contrastkit export'), a run folder, a .ckpt or a .pt state dict.")
    raise ConfigError(f"--init: '{path}' does not exist.")


def read_weights(path: str | os.PathLike) -> tuple[dict[str, Tensor], Path, str]:
    """(flat state dict, the file read, its format: safetensors | checkpoint | state-dict)."""
    file = weights_file(path)
    if file.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(file), file, "safetensors"
        except (SafetensorError, OSError) as exc:
            raise DataError(f"--init: '{file}' is not a readable safetensors file ({exc}).") from None
    content = read_torch_file(file, alternative="Export the encoder as safetensors ('contrastkit export') and "
                                                "give that to --init.")
    if isinstance(content, Mapping) and isinstance(content.get("state_dict"), Mapping):
        return _flatten(content["state_dict"]), file, "checkpoint" if "global_step" in content else "state-dict"
    if isinstance(content, Mapping):
        return _flatten(content), file, "state-dict"
    raise DataError(f"--init: '{file}' holds a {type(content).__name__}, not a state dict (a mapping of names "
                    f"to tensors).")


def _flatten(mapping: Mapping, prefix: str = "") -> dict[str, Tensor]:
    flat: dict[str, Tensor] = {}
    for key, value in mapping.items():
        if isinstance(value, Tensor):
            flat[prefix + str(key)] = value
        elif isinstance(value, Mapping):
            flat.update(_flatten(value, f"{prefix}{key}."))
    return flat


def encoder_of(method: nn.Module) -> tuple[str, nn.Module]:
    """(attribute name, module) of the part of ``method`` that ``--init`` loads: its encoder, or the
    whole method (``"method"``) when it keeps none under ``ENCODER_ATTRIBUTES`` (audio's CPC)."""
    for name in ENCODER_ATTRIBUTES:
        module = getattr(method, name, None)
        if isinstance(module, nn.Module):
            return name, module
    return "method", method


@dataclass
class _Fit:
    prefix: str
    matched: int
    missing: list[str]
    unexpected: list[str]
    mis_shaped: list[tuple[str, tuple, tuple]]

    @property
    def exact(self) -> bool:
        return not (self.missing or self.unexpected or self.mis_shaped)


def match_keys(source: Mapping[str, Tensor], target: Mapping[str, Tensor], preferred: str = "") -> _Fit:
    """How ``source``'s keys fit ``target``'s behind the best prefix (see the module docstring)."""
    votes: dict[str, int] = {}
    for key in source:
        cut = 0
        while True:
            if key[cut:] in target:
                votes[key[:cut]] = votes.get(key[:cut], 0) + 1
            cut = key.find(".", cut) + 1
            if cut == 0:
                break
    if votes:
        prefix = max(votes, key=lambda p: (votes[p], bool(preferred) and p.endswith(preferred + "."), -len(p)))
    else:
        prefix = ""
    under = {key[len(prefix):]: value for key, value in source.items() if key.startswith(prefix)}
    missing = [key for key in target if key not in under]
    unexpected = [key for key in under if key not in target]
    mis_shaped = [(key, tuple(under[key].shape), tuple(target[key].shape)) for key in target
                  if key in under and under[key].shape != target[key].shape]
    return _Fit(prefix, votes.get(prefix, 0), missing, unexpected, mis_shaped)


def _mismatch_message(fit: _Fit, file: Path, part: str, source: Mapping, target: Mapping) -> str:
    def listing(keys: list[str]) -> str:
        more = f", ... ({len(keys) - SHOWN} more)" if len(keys) > SHOWN else ""
        return ", ".join(keys[:SHOWN]) + more

    if fit.matched == 0:
        return (f"--init: no key of '{file}' ({len(source)} tensors, e.g. {listing(list(source))}) names a tensor of "
                f"the method's {part} ({len(target)} tensors, e.g. {listing(list(target))}). Is it the encoder of "
                f"another architecture or modality?")
    parts = []
    if fit.missing:
        parts.append(f"{len(fit.missing)} missing from the file: {listing(fit.missing)}")
    if fit.unexpected:
        parts.append(f"{len(fit.unexpected)} unexpected (in the file, not in the {part}): {listing(fit.unexpected)}")
    if fit.mis_shaped:
        shapes = [f"{key} (file {list(got)}, {part} {list(want)})" for key, got, want in fit.mis_shaped]
        parts.append(f"{len(fit.mis_shaped)} of another shape: {listing(shapes)}")
    stripped = f" after the prefix '{fit.prefix}'" if fit.prefix else ""
    return (f"--init: the weights in '{file}' do not fit the method's {part}{stripped}: " + "; ".join(parts) +
            ". Build the run with the architecture and options the weights were trained with (--backbone, "
            "--width, --model, ...), or give the weights of this encoder.")


def _hugging_face_parts(encoder: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(name, child) for name, child in encoder.named_children()
            if hasattr(child, "save_pretrained") and hasattr(child, "config")]


def load_initial_weights(method: nn.Module, path: str | os.PathLike) -> InitRecord:
    """Copy the encoder weights at ``path`` into ``method``'s encoder (once per method); see the
    module docstring. Returns what was loaded; a ConfigError names the keys that do not fit."""
    if method in _initialised:
        return _initialised[method]
    source, file, kind = read_weights(path)
    attribute, encoder = encoder_of(method)
    candidates = [(attribute, encoder)] + [(f"{attribute}.{n}", m) for n, m in _hugging_face_parts(encoder)]
    fits = []
    for part, module in candidates:
        target = module.state_dict()
        fit = match_keys(source, target, preferred=part.split(".")[-1])
        if fit.exact and target:
            state = {key: source[fit.prefix + key] for key in target}
            with torch.no_grad():
                module.load_state_dict(state, strict=True)
                copies = _refresh_copies(method, module, state)
                if _load_frontend(method, source, fit.prefix, attribute, file):
                    part = f"frontend + {part}"
            record = InitRecord(str(path), str(file), kind, part, fit.prefix, len(state), copies)
            _initialised[method] = record
            return record
        fits.append((fit.matched / max(len(target), 1), fit, part, target))
    _, fit, part, target = max(fits, key=lambda item: item[0])
    raise ConfigError(_mismatch_message(fit, file, part, source, target))


def _load_frontend(method: nn.Module, source: Mapping[str, Tensor], prefix: str, attribute: str, file: Path) -> bool:
    """Load the method's learnable input frontend (audio's waveform convolutions) from beside the
    encoder in the file, when the file holds it there (a run of the same modality); True if it did."""
    frontend = getattr(method, "frontend", None)
    target = frontend.state_dict() if isinstance(frontend, nn.Module) else {}
    if not target or attribute == "method" or not prefix.endswith(attribute + "."):
        return False
    beside = prefix[: -len(attribute) - 1] + "frontend."
    if not any(key.startswith(beside) for key in source):
        return False
    fit = match_keys({k: v for k, v in source.items() if k.startswith(beside)}, target)
    if not fit.exact or fit.prefix != beside:
        raise ConfigError(_mismatch_message(fit, file, "frontend", source, target))
    frontend.load_state_dict({key: source[beside + key] for key in target}, strict=True)
    return True


def _refresh_copies(method: nn.Module, loaded: nn.Module, state: dict[str, Tensor]) -> tuple[str, ...]:
    """Load ``state`` into every other module of ``method`` shaped like ``loaded`` (its copies)."""
    shapes = {key: value.shape for key, value in loaded.state_dict().items()}
    inside = {id(m) for m in loaded.modules()}
    copies = []
    for name, module in method.named_modules():
        if type(module) is not type(loaded) or id(module) in inside:
            continue
        own = module.state_dict()
        if {key: value.shape for key, value in own.items()} == shapes:
            module.load_state_dict(state, strict=True)
            copies.append(name)
    return tuple(copies)


def initial_weights_record(method: nn.Module) -> InitRecord | None:
    """What :func:`load_initial_weights` loaded into ``method`` (None: nothing)."""
    return _initialised.get(method)


def write_init_record(run_dir: str | os.PathLike, record: InitRecord) -> None:
    """``init.json`` in the run folder: where the run's encoder started."""
    Path(run_dir, INIT_RECORD).write_text(json.dumps(record.as_dict(), indent=2) + "\n")
