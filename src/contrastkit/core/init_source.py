"""Which pretrained weights a run starts from: ``contrastkit fit ... --init PATH``.

Every modality builds its own :class:`~contrastkit.engine.settings.TrainSettings`, so, as for the
trackers (:mod:`contrastkit.core.trackers`), the command line does not hand the path to each of
them: ``contrastkit fit`` runs the modality's command inside :func:`starting_from`, a
``TrainSettings`` made there takes the path as its default (``TrainSettings.init``), and
``engine.train`` loads it into the method's encoder before the first step
(:mod:`contrastkit.engine.init_weights`). From Python the same block works around any fit::

    with starting_from("runs/simclr/export"):
        contrastkit.fit(method="simclr", data="digits", max_steps=100, out="runs/continued")

This module is light (no torch): the command line imports it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar
from pathlib import Path

from contrastkit.core.errors import ConfigError

_requested: ContextVar[str | None] = ContextVar("contrastkit_init", default=None)


def check_init_path(path: str | None) -> str | None:
    """``path`` when it names an existing file or folder (None stays None); else a ConfigError."""
    if path is None:
        return None
    if not Path(path).exists():
        raise ConfigError(f"--init: '{path}' does not exist. Give an exported encoder (a folder with "
                          f"model.safetensors, or the .safetensors file), a run folder, a checkpoint (.ckpt) "
                          f"or a torch state dict (.pt / .pth).")
    return str(path)


def requested_init() -> str | None:
    """The weights of the innermost :func:`starting_from` block (None outside any)."""
    return _requested.get()


@contextlib.contextmanager
def starting_from(path: str | None) -> Iterator[str | None]:
    """Runs trained inside the block start from the encoder weights at ``path`` (None: their own
    initialisation)."""
    token = _requested.set(check_init_path(path))
    try:
        yield _requested.get()
    finally:
        _requested.reset(token)
