"""Handling a model as a whole: its parameters by name, a copy, and its bytes for another process. TorchScript
modules need their own ways for each (no ``get_parameter``; a ``deepcopy`` whose parameters are not autograd
leaves; no pickling), so every caller goes through these."""

from __future__ import annotations

import copy
import io

import torch
from torch import nn


def parameter(model: nn.Module, name: str) -> torch.Tensor:
    """The parameter ``name`` of ``model``; also for TorchScript modules, which lack ``get_parameter``."""
    if isinstance(model, torch.jit.ScriptModule):
        return dict(model.named_parameters())[name]
    return model.get_parameter(name)


def copy_model(model: nn.Module) -> nn.Module:
    """An independent copy of ``model``. A TorchScript module goes through its own serialisation: its
    ``deepcopy`` gives parameters that are not leaves of autograd, which an optimizer refuses."""
    if isinstance(model, torch.jit.ScriptModule):
        return unpack_model(pack_model(model))
    return copy.deepcopy(model)


def pack_model(model: nn.Module) -> nn.Module | bytes:
    """``model`` ready to send to another process: TorchScript modules cannot be pickled, so they travel as the
    bytes ``torch.jit.save`` writes; other modules as they are."""
    if isinstance(model, torch.jit.ScriptModule):
        buf = io.BytesIO()
        torch.jit.save(model, buf)
        return buf.getvalue()
    return model


def unpack_model(packed: nn.Module | bytes) -> nn.Module:
    """The model ``pack_model`` packed (on the CPU)."""
    if isinstance(packed, bytes):
        return torch.jit.load(io.BytesIO(packed), map_location="cpu")
    return packed
