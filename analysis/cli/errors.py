"""How the ``prunescope`` command fails and refuses: a user's mistake is one line on stderr and exit code 2, and an
``--out`` that cannot be written is refused before any work. Torch-free, so ``prunescope --help`` stays quick."""

from __future__ import annotations

import os
from pathlib import Path

EXIT_USAGE = 2
EXIT_VERIFY = 1


class UsageError(Exception):
    """A wrong input from the user: reported as one line, exit code 2."""


def check_out(path: Path, folder: bool) -> None:
    """Refuse an ``--out`` that cannot be written before any work is done (a scan's results are not lost to a
    path that names a file, or a folder where a file goes)."""
    if folder and path.exists() and not path.is_dir():
        raise UsageError(f"--out {path} is a file; give a folder for the results")
    if not folder and path.is_dir():
        raise UsageError(f"--out {path} is a folder; give a file name")
    parent = path if folder else path.parent
    existing = next((p for p in (parent, *parent.parents) if p.exists()), None)
    if existing is not None and not existing.is_dir():
        raise UsageError(f"--out {path} cannot be written: {existing} is a file")
    if existing is not None and not os.access(existing, os.W_OK):
        raise UsageError(f"--out {path} cannot be written: no permission to write in {existing}")
