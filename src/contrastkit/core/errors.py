"""User-facing errors.

Every error a user can cause (a bad path, a corrupt file, an unknown option, a loss that went
NaN) is raised as a :class:`ContrastkitError` whose message is one paragraph naming the file,
option or shape and saying what to do. The CLI prints that paragraph and exits with status 2,
without a traceback; library users catch the class like any exception.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from typing import Any


class ContrastkitError(Exception):
    """An error caused by input or configuration, with a message meant for the user."""


class DataError(ContrastkitError):
    """A data path is missing, empty, unreadable, corrupt or of inconsistent shape."""


class ConfigError(ContrastkitError):
    """An unknown name or an invalid value for an option."""


class TrainingError(ContrastkitError):
    """Training cannot go on (e.g. the loss became NaN); the last good checkpoint is kept."""


def closest_names(name: str, choices: Iterable[str], n: int = 3) -> list[str]:
    """The valid names closest to ``name`` (for 'did you mean ...' messages)."""
    choices = list(choices)
    close = difflib.get_close_matches(name, choices, n=n, cutoff=0.5)
    if not close:
        close = [c for c in choices if name.lower() in c.lower() or c.lower() in name.lower()][:n]
    return close


def unknown_name_message(kind: str, name: str, choices: Iterable[str]) -> str:
    """'Unknown method 'simclrr'. Did you mean: simclr? Valid methods: ...'."""
    choices = sorted(choices)
    close = closest_names(name, choices)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    return f"Unknown {kind} '{name}'.{hint} Valid {kind}s: {', '.join(choices)}."


def with_known_options(defaults: Mapping[str, Any], given: Mapping[str, Any], where: str) -> dict[str, Any]:
    """``defaults`` updated with ``given``; a name of ``given`` that ``defaults`` lacks raises
    ConfigError: "Unknown option 'x' in <where>. Did you mean: ...? Valid options: ..."."""
    for name in given:
        if name not in defaults:
            close = closest_names(name, defaults)
            hint = f" Did you mean: {', '.join(close)}?" if close else ""
            raise ConfigError(f"Unknown option '{name}' in {where}.{hint} Valid options: {', '.join(sorted(defaults))}.")
    return {**defaults, **given}
