"""Importance scores: which weights of a layer matter least and go first.

Every criterion returns a score of the weight's own shape (higher = more important); ``masks.py`` turns
scores into masks for a granularity (structured granularities add the scores up per output channel).

- ``magnitude``: |w|, the classic baseline (Han et al. 2015).
- ``l1`` / ``l2``: |w| and w**2; per output channel they add up to the channel's L1 norm and squared L2 norm
  (Li et al. 2017). On unstructured masks they rank weights like ``magnitude``.
- ``random``: a seeded control; a criterion worth using must beat it.
- ``taylor``: |w * dL/dw|, first-order Taylor (Molchanov et al. 2019), summed over calibration batches; for
  data without labels the loss is the cross-entropy to the dense model's own top-1 (the KL to the dense
  outputs has a zero gradient at the dense model).
- ``activation``: |w| * ||x_j||, the weight times the L2 norm of the input feature it reads (Wanda, Sun et
  al. 2023), with the norms measured on calibration batches.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from analysis.core.dispatch import EagerDispatchMode, storage_key
from analysis.core.layers import Layer
from analysis.core.metrics import class_scores
from analysis.core.ops import CONV_OPS, WEIGHT_OPS, input_operand, op_name, weight_operand

CRITERIA = ("magnitude", "l1", "l2", "random", "taylor", "activation")
CALIBRATED = {"taylor", "activation"}


def check_criterion(criterion: str) -> str:
    if criterion not in CRITERIA:
        raise ValueError(f"unknown criterion {criterion!r}; choose one of {', '.join(CRITERIA)}")
    return criterion


@dataclass
class CalibrationStats:
    """What the data-aware criteria need, keyed by parameter name: summed |w * grad| or input feature norms."""

    taylor: dict[str, torch.Tensor] = field(default_factory=dict)
    input_norms: dict[str, torch.Tensor] = field(default_factory=dict)
    samples: int = 0


class _InputNormRecorder(EagerDispatchMode):
    """Sums the squares of each input feature that a watched conv/matmul weight reads."""

    def __init__(self, watched: dict[int, str]) -> None:
        super().__init__()
        self.watched = watched
        self.sq: dict[str, torch.Tensor] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        out = func(*args, **(kwargs or {}))
        op = op_name(func)
        if op not in WEIGHT_OPS:
            return out
        weight, x = weight_operand(op, args), input_operand(op, args)
        name = self.watched.get(storage_key(weight)) if isinstance(weight, torch.Tensor) else None
        if name is None or not isinstance(x, torch.Tensor):
            return out
        x = x.detach().double()
        if op in CONV_OPS:
            self._add(name, (x * x).sum(dim=[d for d in range(x.dim()) if d != 1]))
        else:
            x = x.reshape(-1, x.shape[-1])
            self._add(name, (x * x).sum(dim=0))
        return out

    def _add(self, name: str, sq: torch.Tensor) -> None:
        self.sq[name] = self.sq[name] + sq if name in self.sq else sq


def collect_stats(
    model: nn.Module,
    layers: list[Layer],
    x: torch.Tensor,
    y: torch.Tensor | None,
    criterion: str,
    batch_size: int = 64,
    device: str | torch.device = "cpu",
) -> CalibrationStats:
    """Gradients (``taylor``) or input norms (``activation``) for ``layers`` over the calibration set ``x``."""
    stats = CalibrationStats(samples=len(x))
    if criterion not in CALIBRATED:
        return stats
    params = {l.param_name: l.weight(model) for l in layers}
    if criterion == "activation":
        recorder = _InputNormRecorder({storage_key(p): n for n, p in params.items()})
        with torch.inference_mode(), recorder:
            for start in range(0, len(x), batch_size):
                model(x[start : start + batch_size].to(device))
        stats.input_norms = {n: sq.sqrt().float().cpu() for n, sq in recorder.sq.items()}
        return stats
    all_params = dict(model.named_parameters())
    restore = {n: p.requires_grad for n, p in all_params.items()}
    grads = {n: torch.zeros_like(p, dtype=torch.float64) for n, p in params.items()}
    try:
        for n, p in all_params.items():
            p.requires_grad_(n in params)
        for start in range(0, len(x), batch_size):
            xb = x[start : start + batch_size].to(device)
            with torch.enable_grad():
                logits = class_scores(model(xb))
                # Without labels the dense model's own top-1 is the target: the KL to the dense outputs has a
                # zero gradient at the dense model itself, so it cannot rank weights to first order.
                target = y[start : start + batch_size].to(device) if y is not None else logits.detach().argmax(-1)
                loss = F.cross_entropy(logits, target, reduction="sum")
                found = torch.autograd.grad(loss, list(params.values()), allow_unused=True)
            for (n, p), g in zip(params.items(), found):
                if g is not None:
                    grads[n] += (p.detach() * g.detach()).double().abs()
    finally:
        for n, p in all_params.items():
            p.requires_grad_(restore[n])
    stats.taylor = {n: g.float().cpu() for n, g in grads.items()}
    return stats


def _seed_for(layer_name: str, seed: int) -> int:
    digest = hashlib.sha256(f"{seed}:{layer_name}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def importance(layer: Layer, weight: torch.Tensor, criterion: str, stats: CalibrationStats | None = None,
               seed: int = 0) -> torch.Tensor:
    """Element-wise importance of ``weight`` (same shape, float32, on the CPU) under ``criterion``."""
    check_criterion(criterion)
    w = weight.detach().float().cpu()
    if criterion in ("magnitude", "l1"):
        return w.abs()
    if criterion == "l2":
        return w * w
    if criterion == "random":
        gen = torch.Generator().manual_seed(_seed_for(layer.name, seed))
        return torch.rand(w.shape, generator=gen)
    if stats is None:
        raise ValueError(f"criterion {criterion!r} needs calibration statistics (collect_stats)")
    if criterion == "taylor":
        return stats.taylor[layer.param_name]
    norms = stats.input_norms.get(layer.param_name)
    if norms is None:
        return w.abs()
    if w.dim() == 2:
        return w.abs() * norms.view(1, -1)
    # Convolution: input channel c of group g is read by the out channels of group g at in-slot c % (C / groups).
    per_group = w.shape[1]
    out_per_group = w.shape[0] // layer.groups
    n = norms.view(layer.groups, per_group)
    n = n.repeat_interleave(out_per_group, dim=0)
    return w.abs() * n.view(w.shape[0], per_group, *([1] * (w.dim() - 2)))
