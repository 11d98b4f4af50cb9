"""The base of Prunescope's dispatch modes (passes that watch every operator of an eager forward pass), and how
they recognise a weight among an operator's arguments."""

from __future__ import annotations

import torch
from torch.utils._python_dispatch import TorchDispatchMode


class EagerDispatchMode(TorchDispatchMode):
    """A ``TorchDispatchMode`` that only ever watches eager forward passes.

    PyTorch wraps a mode's ``__torch_dispatch__`` so that ``torch.compile`` skips it, and that wrapper imports
    ``torch._dynamo`` on its first call: about a second, on every command that lists a model's layers. Our modes
    never run under ``torch.compile``, so they opt out of the wrapper (``_should_skip_dynamo``).
    """

    @classmethod
    def _should_skip_dynamo(cls) -> bool:
        return False


def storage_key(t: torch.Tensor) -> int | None:
    """The address of a tensor's storage: how a pass recognises a weight among an operator's arguments (views
    and transposes share it)."""
    try:
        return t.untyped_storage().data_ptr()
    except (RuntimeError, NotImplementedError):
        return None
