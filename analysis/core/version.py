"""Versions and machine facts recorded with every result."""

from __future__ import annotations

import platform

import torch

__version__ = "0.1.0"


def environment() -> dict[str, str]:
    """Versions and machine facts recorded with every result."""
    import analysis

    return {
        "prunescope": analysis.__version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "threads": str(torch.get_num_threads()),
    }
