"""Importance criteria: which weights of a layer matter least and go first. One small class per method, registered
once by name; the CLI's choices, the dashboard's options and the help text come from the registry.

Every criterion scores a weight element-wise, in the weight's own shape (higher = more important); a
granularity (``core.granularity``) turns the scores into masks, structured ones through the criterion's
per-channel scores.

- ``magnitude``: |w|, the classic baseline (Han et al. 2015).
- ``l1`` / ``l2``: |w| and w**2; per output channel they add up to the channel's L1 norm and (root of the sum)
  its L2 norm (Li et al. 2017). On unstructured masks they rank weights like ``magnitude``.
- ``random``: a seeded control; a criterion worth using must beat it.
- ``taylor``: |w * dL/dw|, first-order Taylor (Molchanov et al. 2019), summed over calibration batches; for
  data without labels the loss is the cross-entropy to the dense model's own top-1 (the KL to the dense
  outputs has a zero gradient at the dense model).
- ``activation``: |w| * ||x_j||, the weight times the L2 norm of the input feature it reads (Wanda, Sun et
  al. 2023), with the norms measured on calibration batches (real tokens only: padding never counts).
  Unstructured masks compare the weights within each output row, as Wanda does (``per_row``).

Scores come in the layer's (out, in, ...) order, whatever the weight's storage (``Layer.transposed``).

``taylor`` and ``activation`` need calibration statistics (``collect_stats``): gradients or input norms of the
first ``samples`` eval samples, the one place those are computed.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import nn

from analysis.core.data import EvalData, real_rows, token_mask
from analysis.core.dispatch import EagerDispatchMode, storage_key
from analysis.core.layers import Layer
from analysis.core.metric_table import CLASSIFICATION
from analysis.core.metrics import class_scores, task_loss
from analysis.core.ops import CONV_OPS, WEIGHT_OPS, input_operand, op_name, weight_operand


@dataclass
class CalibrationStats:
    """What the data-aware criteria need, keyed by parameter name: summed |w * grad| or input feature norms."""

    taylor: dict[str, torch.Tensor] = field(default_factory=dict)
    input_norms: dict[str, torch.Tensor] = field(default_factory=dict)
    samples: int = 0


class Criterion:
    """One way to score a layer's weights. ``needs`` names the calibration statistics it reads (``gradients``,
    ``activations``, or ``None``): a model run outside PyTorch (ONNX Runtime) has neither."""

    name: ClassVar[str]
    needs: ClassVar[str | None] = None
    summary: ClassVar[str]
    per_row: ClassVar[bool] = False  # unstructured masks compare weights within each output row

    def scores(self, layer: Layer, weight: torch.Tensor, stats: CalibrationStats | None, seed: int) -> torch.Tensor:
        """Element-wise importance of ``weight`` (float32, on the CPU), in its shape."""
        raise NotImplementedError

    def channel_scores(self, scores: torch.Tensor) -> torch.Tensor:
        """Per-output-channel importance: the sum of the channel's element scores."""
        return scores.reshape(scores.shape[0], -1).sum(dim=1)


CRITERIA_CLASSES: dict[str, type[Criterion]] = {}


def register(cls: type[Criterion]) -> type[Criterion]:
    """Add a criterion class to the registry under its ``name`` (a decorator)."""
    CRITERIA_CLASSES[cls.name] = cls
    return cls


@register
class Magnitude(Criterion):
    name, summary = "magnitude", "|w|: the classic baseline"

    def scores(self, layer: Layer, weight: torch.Tensor, stats: CalibrationStats | None, seed: int) -> torch.Tensor:
        return weight.detach().float().cpu().abs()


@register
class L1(Magnitude):
    name, summary = "l1", "|w|, summed per channel: the channel's L1 norm"


@register
class L2(Criterion):
    name, summary = "l2", "w**2; per channel the root of the sum: the channel's L2 norm"

    def scores(self, layer: Layer, weight: torch.Tensor, stats: CalibrationStats | None, seed: int) -> torch.Tensor:
        w = weight.detach().float().cpu()
        return w * w

    def channel_scores(self, scores: torch.Tensor) -> torch.Tensor:
        return super().channel_scores(scores).sqrt()


@register
class Random(Criterion):
    name, summary = "random", "seeded random scores: the control a criterion must beat"

    def scores(self, layer: Layer, weight: torch.Tensor, stats: CalibrationStats | None, seed: int) -> torch.Tensor:
        digest = hashlib.sha256(f"{seed}:{layer.name}".encode()).digest()
        gen = torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))
        return torch.rand(tuple(weight.shape), generator=gen)


@register
class Taylor(Criterion):
    name, needs, summary = "taylor", "gradients", "|w * dL/dw| on calibration batches (first-order Taylor)"

    def scores(self, layer: Layer, weight: torch.Tensor, stats: CalibrationStats | None, seed: int) -> torch.Tensor:
        return layer.stored(_stats(self, stats).taylor[layer.param_name])


@register
class Activation(Criterion):
    name, needs, summary = "activation", "activations", "|w| x ||input feature|| on calibration batches (Wanda)"
    per_row = True

    def scores(self, layer: Layer, weight: torch.Tensor, stats: CalibrationStats | None, seed: int) -> torch.Tensor:
        w = weight.detach().float().cpu()
        norms = _stats(self, stats).input_norms.get(layer.param_name)
        if norms is None:
            return w.abs()
        if w.dim() == 2:
            return w.abs() * norms.view(1, -1)
        # Convolution: input channel c of group g is read by the out channels of group g at in-slot c % (C / groups).
        per_group = w.shape[1]
        n = norms.view(layer.groups, per_group).repeat_interleave(w.shape[0] // layer.groups, dim=0)
        return w.abs() * n.view(w.shape[0], per_group, *([1] * (w.dim() - 2)))


def _stats(criterion: Criterion, stats: CalibrationStats | None) -> CalibrationStats:
    if stats is None:
        raise ValueError(f"criterion {criterion.name!r} needs calibration statistics (collect_stats)")
    return stats


CRITERIA = tuple(CRITERIA_CLASSES)
CALIBRATED = frozenset(name for name, cls in CRITERIA_CLASSES.items() if cls.needs)


def get_criterion(name: str) -> Criterion:
    """The criterion registered as ``name``; an unknown name is a ``ValueError`` listing the known ones."""
    if name not in CRITERIA_CLASSES:
        raise ValueError(f"unknown criterion {name!r}; choose one of {', '.join(CRITERIA)}")
    return CRITERIA_CLASSES[name]()


def check_criterion(criterion: str) -> str:
    return get_criterion(criterion).name


def importance(layer: Layer, weight: torch.Tensor, criterion: str, stats: CalibrationStats | None = None,
               seed: int = 0) -> torch.Tensor:
    """Element-wise importance of ``weight`` (float32, on the CPU) under ``criterion``, in the layer's (out, in)
    order (``weight`` as stored; transposed for a ``Conv1D``)."""
    return get_criterion(criterion).scores(layer, weight.t() if layer.transposed else weight, stats, seed)


def channel_scores(scores: torch.Tensor, criterion: str) -> torch.Tensor:
    """Per-output-channel importance of element scores under ``criterion``."""
    return get_criterion(criterion).channel_scores(scores)


# --------------------------------------------------------------------------------------- calibration statistics


class _InputNormRecorder(EagerDispatchMode):
    """Sums the squares of each input feature that a watched conv/matmul weight reads."""

    def __init__(self, watched: dict[int, str]) -> None:
        super().__init__()
        self.watched = watched
        self.sq: dict[str, torch.Tensor] = {}
        self.mask: torch.Tensor | None = None  # the batch's real tokens (token-id inputs); padding never counts

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
            x = real_rows(x, self.mask).reshape(-1, x.shape[-1])
            self._add(name, (x * x).sum(dim=0))
        return out

    def _add(self, name: str, sq: torch.Tensor) -> None:
        self.sq[name] = self.sq[name] + sq if name in self.sq else sq


def calibration_stats(model: nn.Module, layers: list[Layer], data: EvalData, criterion: str, samples: int = 256,
                      batch_size: int = 64, device: str | torch.device = "cpu") -> CalibrationStats:
    """The calibration statistics ``criterion`` needs for ``layers``, over the first ``samples`` samples of
    ``data`` (with their labels, when it has them). Every caller (the scan, the schedule's channel ranking,
    measurement, export) passes the scan's ``calib_samples``, so they all rank weights by the same numbers."""
    head = data.head(samples)
    return collect_stats(model, layers, head.x, head.y, criterion, batch_size, device, data.task)


def collect_stats(model: nn.Module, layers: list[Layer], x: torch.Tensor, y: torch.Tensor | None, criterion: str,
                  batch_size: int = 64, device: str | torch.device = "cpu",
                  task: str = CLASSIFICATION) -> CalibrationStats:
    """Gradients (``taylor``), input norms (``activation``) or nothing, as ``criterion`` needs, for ``layers``
    over the calibration inputs ``x`` (and labels ``y``; ``task`` says what the outputs are)."""
    needs = get_criterion(criterion).needs
    stats = CalibrationStats(samples=len(x))
    params = {l.param_name: l.weight(model) for l in layers}
    if needs == "activations":
        stats.input_norms = _input_norms(model, params, x, batch_size, device)
    elif needs == "gradients":
        stats.taylor = _taylor(model, params, x, y, batch_size, device, task)
    return stats


def _input_norms(model: nn.Module, params: dict[str, torch.Tensor], x: torch.Tensor, batch_size: int,
                 device: str | torch.device) -> dict[str, torch.Tensor]:
    recorder = _InputNormRecorder({storage_key(p): n for n, p in params.items()})
    with torch.inference_mode(), recorder:
        for start in range(0, len(x), batch_size):
            xb = x[start : start + batch_size]
            recorder.mask = token_mask(xb)
            model(xb.to(device))
    return {n: sq.sqrt().float().cpu() for n, sq in recorder.sq.items()}


def _taylor(model: nn.Module, params: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor | None,
            batch_size: int, device: str | torch.device, task: str = CLASSIFICATION) -> dict[str, torch.Tensor]:
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
                loss = task_loss(logits, None if y is None else y[start : start + batch_size], task)
                found = torch.autograd.grad(loss, list(params.values()), allow_unused=True)
            for (n, p), g in zip(params.items(), found):
                if g is not None:
                    grads[n] += (p.detach() * g.detach()).double().abs()
    finally:
        for n, p in all_params.items():
            p.requires_grad_(restore[n])
    return {n: g.float().cpu() for n, g in grads.items()}
