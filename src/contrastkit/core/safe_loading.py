"""Reading a file made elsewhere without running its code.

``torch.save`` writes a pickle, and a pickle may name any Python callable and have it called while
the file is read: a checkpoint someone else made could run code the moment it is opened. So every
``.ckpt`` / ``.pt`` file contrastkit reads goes through :func:`read_torch_file`, which unpickles
with ``torch.load(weights_only=True)``: tensors, dicts, lists, tuples, numbers, strings and
``None`` only, which is all that contrastkit's own checkpoints hold (their descriptions are YAML-
and JSON-safe values, and every saved state is a ``state_dict``). A file that asks for anything
else is refused with a :class:`~contrastkit.core.errors.DataError` naming it and the safe
alternative, unless the caller trusts it explicitly (``trust=True``: the commands'
``--trust-checkpoint``, the functions' ``trust_checkpoint=True``), which reads it with the full
unpickler and so runs whatever code it carries. Weights that leave a run folder are safetensors
plus JSON, which hold no code at all.
"""

from __future__ import annotations

import os
import pickle
import re
from pathlib import Path
from typing import Any

from contrastkit.core.errors import DataError

TRUST_OPTION = "--trust-checkpoint"
# What a refusal of an image checkpoint offers (embed, export, contrastkit.load, fit --resume).
# What a refusal of a run's last.ckpt offers where resuming cannot trust a file.
START_AGAIN = ("contrastkit's own checkpoints never carry code, so this one was not written by contrastkit or was "
               "altered: start the run again without resuming it (without --resume / resume=True), in a new "
               "folder or after removing this one.")


class UnsafeFileError(DataError):
    """A file that would run code when read, refused (a DataError: the CLI exits with status 2)."""


SHARE_SAFELY = ("A model meant to be shared is 'contrastkit export' output (model.safetensors + config.json), "
                "which loads without running code.")


def refusal_reason(error: BaseException) -> str:
    """What the weights-only unpickler objected to, in a few words."""
    text = str(error)
    named = re.search(r"GLOBAL (\S+) was not an allowed global", text)
    if named:
        return f"it calls or builds '{named.group(1)}'"
    operand = re.search(r"Unsupported operand (\d+)", text)
    if operand:
        return f"it uses pickle instruction {operand.group(1)}, which plain data does not need"
    return "it holds objects other than tensors and plain values"


def read_torch_file(path: str | os.PathLike, *, trust: bool = False, alternative: str,
                    map_location: Any = "cpu", mmap: bool = False) -> Any:
    """The content of the ``torch.save`` file ``path``, read without running code.

    ``alternative`` ends the refusal's message: what the user can do instead (pass
    ``--trust-checkpoint``, start again without ``--resume``, use an export). ``trust=True``
    reads the file with the full unpickler: it runs any code the file carries.
    """
    import torch

    path = Path(path)
    try:
        return torch.load(path, map_location=map_location, weights_only=not trust, mmap=mmap)
    except pickle.UnpicklingError as error:
        if trust:
            raise DataError(f"'{path}' could not be read ({error}).") from None
        raise UnsafeFileError(
            f"'{path}' was not read: reading it would run code it carries ({refusal_reason(error)}), and "
            f"contrastkit reads files without running their code (its own checkpoints hold only tensors and "
            f"plain values). {alternative}") from None
    except FileNotFoundError:
        raise DataError(f"'{path}' does not exist.") from None
    except Exception as error:  # truncated or not a torch file at all: say which file, not where torch failed
        raise DataError(f"'{path}' could not be read ({type(error).__name__}: {error}).") from None


def trust_alternative(*, command_line: bool = True, share_hint: bool = True) -> str:
    """The refusal's ending where the caller can trust the file: ``--trust-checkpoint`` (with
    ``command_line``) or ``trust_checkpoint=True``, and (with ``share_hint``) the safe way to share
    an image model."""
    how = f"pass {TRUST_OPTION} (trust_checkpoint=True in Python)" if command_line else "pass trust_checkpoint=True"
    ending = f" {SHARE_SAFELY}" if share_hint else ""
    return f"If you know who made this checkpoint and trust them, {how}, which reads it with its code.{ending}"
