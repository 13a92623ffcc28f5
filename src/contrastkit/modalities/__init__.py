"""One package per kind of data, each with the same inside: ``sources`` (files on disk -> data),
``views`` (random and evaluation transforms), ``encoders``, ``methods`` and ``cli`` (its options),
and ``plugin``: a light module that registers the modality (:class:`Modality`) and its methods (in
:data:`contrastkit.core.registry.METHODS`) without importing their code.

``contrastkit fit --method M --data D`` finds the method in the registry; when several modalities
share the name, the modality whose :attr:`Modality.recognises` accepts ``--data`` runs it (or the one
``--modality`` names).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from contrastkit.core.errors import ConfigError, unknown_name_message

# The modalities, in the order `contrastkit fit --help` lists them.
PLUGINS = ("image", "text", "pairs", "graph", "timeseries", "tabular", "audio")

# Options that mean the same for every modality (`contrastkit fit --help`). `logger` is added to every
# modality's parser by the common command (contrastkit.fit_command), not by the modality.
COMMON_OPTIONS = ("out", "resume", "config", "seed", "devices", "strategy", "precision", "max-epochs",
                  "max-steps", "max-minutes", "batch-size", "lr", "logger")


@dataclass(frozen=True)
class Modality:
    """What the common command needs of a modality.

    - ``cli``: module with ``add_arguments(parser)`` (the modality's options, common ones spelled as
      in :data:`COMMON_OPTIONS`) and ``command(args) -> int`` (trains and writes the run folder).
    - ``recognises(data) -> bool``: whether ``--data`` looks like this modality's data (a built-in
      name, a file type, a folder's contents); used only when a method name is shared.
    - ``renamed``: common option -> the modality's own spelling, where its parser spells it so
      (``max-epochs`` -> ``epochs``).
    - ``not_applicable``: common option -> why it does not apply to this modality (an error).
    """

    name: str
    summary: str
    cli: str
    recognises: Callable[[str], bool]
    renamed: dict[str, str] = field(default_factory=dict)
    not_applicable: dict[str, str] = field(default_factory=dict)

    def load_cli(self):
        return importlib.import_module(self.cli)


MODALITIES: dict[str, Modality] = {}
_loaded = False


def register_modality(modality: Modality) -> Modality:
    if modality.name in MODALITIES:
        raise ValueError(f"modality '{modality.name}' is registered twice")
    MODALITIES[modality.name] = modality
    return modality


def load_plugins() -> dict[str, Modality]:
    """Import every modality's plugin (light: names and options only), once."""
    global _loaded
    if not _loaded:
        _loaded = True
        for name in PLUGINS:
            importlib.import_module(f"{__name__}.{name}.plugin")
    return MODALITIES


def get_modality(name: str) -> Modality:
    load_plugins()
    if name not in MODALITIES:
        raise ConfigError(unknown_name_message("modality", name, MODALITIES))
    return MODALITIES[name]


def recognising(data: str | None) -> Callable[[list[str]], list[str]]:
    """For :meth:`MethodRegistry.resolve`: the candidate modalities that recognise ``data``."""
    def pick(candidates: list[str]) -> list[str]:
        if data is None:
            return []
        return [m for m in candidates if get_modality(m).recognises(str(data))]
    return pick


def suffix_of(data: str) -> str:
    """``'x/y.jsonl.gz'`` -> ``'.jsonl.gz'``; ``''`` for a folder or a name without a suffix."""
    name = Path(data).name.lower()
    if name.endswith(".gz"):
        return "".join(Path(name).suffixes[-2:])
    return Path(name).suffix


def folder_holds(data: str, suffixes: tuple[str, ...], depth: int = 2, limit: int = 500) -> bool:
    """Whether the folder ``data`` holds a file ending in one of ``suffixes`` within ``depth``
    levels (looking at ``limit`` entries at most: a huge folder is not read through)."""
    root = Path(data).expanduser()
    if not root.is_dir():
        return False
    seen = 0
    level = [root]
    for _ in range(depth):
        below = []
        for folder in level:
            for entry in folder.iterdir():
                seen += 1
                if seen > limit:
                    return False
                if entry.is_file() and entry.name.lower().endswith(suffixes):
                    return True
                if entry.is_dir():
                    below.append(entry)
        level = below
    return False
