"""BatchNorm recalibration: re-estimate running statistics after pruning, the model otherwise frozen.

Pruning a layer shifts the mean and variance of what the next BatchNorm sees; its stored running
statistics then normalise wrongly. Re-estimating them on a few calibration batches (no gradient, no weight
change) often gives back part of the drop for free.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

_BN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


def batchnorms(model: nn.Module) -> list[tuple[str, nn.modules.batchnorm._BatchNorm]]:
    """The BatchNorm layers that track running statistics."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, _BN) and m.track_running_stats]


def has_batchnorm(model: nn.Module) -> bool:
    return bool(batchnorms(model))


@contextmanager
def preserved(model: nn.Module) -> Iterator[None]:
    """Restore every BatchNorm's running statistics (bit for bit) when the block ends."""
    saved = {n: (m.running_mean.clone(), m.running_var.clone(), m.num_batches_tracked.clone())
             for n, m in batchnorms(model)}
    try:
        yield
    finally:
        with torch.no_grad():
            for n, m in batchnorms(model):
                mean, var, count = saved[n]
                m.running_mean.copy_(mean)
                m.running_var.copy_(var)
                m.num_batches_tracked.copy_(count)


def recalibrate(model: nn.Module, x: torch.Tensor, batches: int = 8, batch_size: int = 64,
                device: str | torch.device = "cpu") -> int:
    """Re-estimate every BatchNorm's running mean and variance on up to ``batches`` batches of ``x``.

    Uses the cumulative average over the batches (momentum ``None``), so the result does not depend on the
    old statistics. Only the BatchNorm layers run in training mode; weights do not change. Returns how many
    BatchNorm layers were recalibrated (0 when the model has none: recalibration does not apply).
    """
    bns = batchnorms(model)
    if not bns:
        return 0
    was_training = model.training
    momenta = {n: m.momentum for n, m in bns}
    try:
        model.eval()
        for _, m in bns:
            m.reset_running_stats()
            m.momentum = None
            m.train()
        with torch.no_grad():
            for i, start in enumerate(range(0, len(x), batch_size)):
                if i >= batches:
                    break
                model(x[start : start + batch_size].to(device))
    finally:
        for n, m in bns:
            m.momentum = momenta[n]
        model.train(was_training)
        if not was_training:
            for _, m in bns:
                m.eval()
    return len(bns)
