"""Prunescope's version, and the versions and machine facts recorded with every result. Torch-free at import:
``prunescope --version`` and ``--help`` read it without loading torch."""

from __future__ import annotations

import platform

__version__ = "0.1.0"


def environment() -> dict[str, str]:
    """Versions and machine facts recorded with every result."""
    import torch

    return {
        "prunescope": __version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "threads": str(torch.get_num_threads()),
    }
