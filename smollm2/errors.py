"""The two ways a command ends in one line instead of a traceback: bad input (exit 2), a run that cannot go on (3).

Anything a user can get wrong (a config key, a data file, a checkpoint, a tokenizer, a CLI flag, the
environment a launcher set) raises `UserError` with a one-line message that names the file or key and
what was expected. A training run that stops itself because going on would waste the allocation or
corrupt its state (steps that keep failing, a rank that stopped answering) raises `RunFailed`. The CLI
turns them into `smollm2 <verb>: error: <message>` (exit 2) and `smollm2 <verb>: stopped: <message>`
(exit 3) on stderr; every other exception is a bug or a failure of the machine and keeps its traceback.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path


class UserError(Exception):
    """Bad input from the user: reported as one line on stderr, exit code 2."""


class RunFailed(Exception):
    """A run that stopped itself for a reason it can state in one line: exit code 3."""


def write_failed(path: str | os.PathLike, exc: BaseException) -> UserError:
    """A write under `path` that failed (a full disk or quota, a read-only or unwritable folder, a file where
    a folder should be) as one line naming it, with the space left there: a full disk shows as such even
    when the library that wrote says only "unexpected pos" or "N requested and M written"."""
    text = str(exc).strip()
    reason = getattr(exc, "strerror", None) or (text.splitlines()[0] if text else type(exc).__name__)
    folder = Path(path)
    while not folder.is_dir() and folder != folder.parent:
        folder = folder.parent
    free = shutil.disk_usage(folder).free
    return UserError(f"{path}: cannot write ({reason}); {free / 2**20:.1f} MiB free on that file system")
