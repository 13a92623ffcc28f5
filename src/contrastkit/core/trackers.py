"""Which experiment trackers a run logs to: ``--logger csv|tensorboard|mlflow|wandb``.

``metrics.csv`` is the run folder's own log (the report and ``--resume`` read it), so ``csv`` is
always among the trackers; the others are Lightning's loggers, each writing inside the run folder
and needing no network (:mod:`contrastkit.engine.trackers` builds them).

Every modality builds its own :class:`~contrastkit.engine.settings.TrainSettings`, so the command
line does not hand the choice to each of them: ``contrastkit fit`` runs the modality's command
inside :func:`logging_to`, and a ``TrainSettings`` made there takes the trackers as its default
(``TrainSettings.loggers``). From Python the same block works around any fit::

    with logging_to(["csv", "mlflow"]):
        SCARF(...).fit(x, out="runs/scarf")

This module is light (no torch, no Lightning): the command line imports it to check the names.
"""

from __future__ import annotations

import contextlib
import importlib.util
from collections.abc import Iterable, Iterator
from contextvars import ContextVar

from contrastkit.core.errors import ConfigError, unknown_name_message

# name -> the module it needs (None: Lightning's own CSV writer)
TRACKERS = {"csv": None, "tensorboard": "tensorboard", "mlflow": "mlflow", "wandb": "wandb"}
DEFAULT_TRACKERS = ("csv",)

_requested: ContextVar[tuple[str, ...]] = ContextVar("contrastkit_trackers", default=DEFAULT_TRACKERS)


def check_trackers(names: Iterable[str] | None) -> tuple[str, ...]:
    """``names`` as the trackers a run logs to: ``csv`` first, each once, each known and installed."""
    chosen = ["csv"]
    for name in names or ():
        name = str(name).strip().lower()
        if name not in TRACKERS:
            raise ConfigError(unknown_name_message("tracker", name, TRACKERS) + " (--logger)")
        if name not in chosen:
            chosen.append(name)
    missing = [name for name in chosen if TRACKERS[name] and importlib.util.find_spec(TRACKERS[name]) is None]
    if missing:
        raise ConfigError(f"--logger {' '.join(missing)} needs the package(s) {', '.join(TRACKERS[m] for m in missing)}, "
                          f"which are not installed: install contrastkit's extra 'trackers' "
                          f"(pip install 'contrastkit[trackers]'), or leave the option out.")
    return tuple(chosen)


def requested_trackers() -> tuple[str, ...]:
    """The trackers of the innermost :func:`logging_to` block (``("csv",)`` outside any)."""
    return _requested.get()


@contextlib.contextmanager
def logging_to(names: Iterable[str] | None) -> Iterator[tuple[str, ...]]:
    """Runs trained inside the block log to ``names`` (checked by :func:`check_trackers`)."""
    token = _requested.set(check_trackers(names))
    try:
        yield _requested.get()
    finally:
        _requested.reset(token)
