"""Where real data lives. One setting: the environment variable CONTRASTKIT_DATA, defaulting to
``../shared/data`` (relative to the current directory, i.e. beside a checkout of the project)."""

from __future__ import annotations

import os
from pathlib import Path


def data_root() -> Path:
    return Path(os.environ.get("CONTRASTKIT_DATA", "../shared/data")).expanduser()
