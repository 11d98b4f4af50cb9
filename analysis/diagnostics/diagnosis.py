"""Diagnostics: why a pruned layer hurts, and which cheap fix exists.

For a pruned layer L at sparsity s, measured against the dense model on the eval set:

**Activation shift** (``activation_shift``: one row per pruned layer, sparsity and observed layer). The
observed layers are L itself, every prunable layer after it (their raw outputs: the conv or matmul result,
bias included) and the logits. Columns:

- ``rel_l2``: ||pruned - dense|| / ||dense|| over the whole eval set.
- ``cosine``: the mean over samples of the cosine similarity of the flattened outputs;
  ``cosine_worst_decile``: the mean over the 10% least similar samples; ``cosine_min``: the worst sample.
- ``mean_shift`` / ``std_shift``: |mean_pruned - mean_dense| and |std_pruned - std_dense| of each channel,
  divided by the dense std of that channel, averaged over channels (``*_max``: the worst channel).
- ``hellinger``: the distribution distance per channel is the **Hellinger distance of Gaussian fits** (normals
  with each channel's dense and pruned mean and variance), averaged over channels (``hellinger_max``: the
  worst channel). It needs only streamed moments, is 0 when nothing moved and is bounded by 1, so a channel
  that pruning turned constant counts as 1 instead of the infinite KL divergence of a zero-variance fit.

Outputs are watched at the ATen level (as ``layers.py`` finds layers), so plain modules, TorchScript and
``torch.export`` programs all work. Everything is streamed: per-channel moments merge batch by batch (Chan's
formula), and the per-sample cosines go into a fixed log-spaced histogram of ``1 - cosine`` (with the sum of
each bin, so the worst-decile mean is exact up to the one bin that the decile boundary splits). Memory does
not grow with the eval set. One dense pass per batch is shared by every (layer, sparsity) cell; each cell
adds one pruned pass.

**Dead neurons** (``dead_neurons``: one row per pruned layer, sparsity, observed layer and kind).

- *structural*: units whose output no longer depends on the input, from the weights alone. An output unit of
  a conv or linear layer is dead when every weight it reads from a live input unit is zero (all incoming
  weights zero, or all its inputs dead). Deadness follows the data flow of one forward pass: through
  BatchNorm, activations and pooling channel by channel, through flatten, and through additions only when
  every operand is dead (a residual add keeps a channel alive). An operation not known to act per channel
  makes its output live unless all its inputs are dead, so the count never overstates.
- *functional*: units whose output is the same on every eval sample (zero or another constant), measured
  at the end of the layer's own per-channel chain (its BatchNorm and activation, up to the first operation
  that mixes in another tensor, such as a residual add).

Both are counted on the dense model (``dead_before``) and after pruning (``dead_after``); ``created`` counts
the units pruning killed. Unit indices are space-separated in the ``indices_*`` columns.

**BatchNorm recalibration** (``recalibration``: one row per cell): the metric after pruning without and with
re-estimated BatchNorm statistics (``batchnorm.recalibrate``), and the share of the drop it gives back. A
model without BatchNorm gets a summary that says recalibration does not apply.

Several scans with different criteria side by side: ``diagnose.compare.compare_criteria``.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pandas as pd
import torch
from torch import nn

from analysis.core import batchnorm, masks
from analysis.core.dispatch import EagerDispatchMode, storage_key
from analysis.core.granularity import check_sparsity
from analysis.core.layers import Layer, decomposed_attention, find_layers
from analysis.core.metrics import Sums, class_scores, evaluate, sums_from_logits
from analysis.core.ops import (
    ARITHMETIC,
    CAT,
    CHANNELWISE,
    CONV_OPS,
    POOLING,
    RESHAPES,
    WEIGHT_OPS,
    channel_dim,
    first_tensor,
    input_operand,
    op_name,
    weight_operand,
)
from analysis.core.version import environment
from analysis.sensitivity.config import ScanConfig
from analysis.sensitivity.context import ScanContext, prepare
from analysis.workload.onnx import refuse
from analysis.workload.workload import Workload

LOGITS = "logits"

# ------------------------------------------------------------------------------------------------ structure


class _DeadFlow(EagerDispatchMode):
    """Follows one forward pass and keeps, for every tensor it makes, which channels do not depend on the input.

    A tensor's deadness is a bool vector over dim 1 (rank >= 2) or a 0-d bool. Tensors the pass did not make
    (parameters, buffers) are constants: dead. The model input is registered live before the pass.
    """

    def __init__(self, watched: dict[int, str], example: torch.Tensor) -> None:
        super().__init__()
        self.watched = watched
        self.info: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self.layers: dict[str, torch.Tensor] = {}
        self._set(example, self._fill(example, False))

    @staticmethod
    def _fill(t: torch.Tensor, dead: bool) -> torch.Tensor:
        return torch.full((t.shape[1],) if t.dim() >= 2 else (), dead, dtype=torch.bool)

    def _set(self, t: torch.Tensor, dead: torch.Tensor) -> None:
        self.info[id(t)] = (t, dead)

    def _get(self, t: torch.Tensor) -> torch.Tensor:
        entry = self.info.get(id(t))
        return entry[1] if entry is not None and entry[0] is t else self._fill(t, True)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        op = op_name(func)
        outs = [o for o in (out if isinstance(out, (tuple, list)) else (out,)) if isinstance(o, torch.Tensor)]
        if not outs:
            return out
        main = outs[0]
        tensors = [a for a in args if isinstance(a, torch.Tensor)]
        dead = self._rule(op, args, tensors, main)
        self._set(main, dead)
        for extra in outs[1:]:
            self._set(extra, self._fill(extra, bool(dead.all())))
        weight = weight_operand(op, args) if op in WEIGHT_OPS else None
        if weight is not None:
            name = self.watched.get(storage_key(weight))
            if name is not None and name not in self.layers:
                self.layers[name] = dead.clone()
        return out

    def _rule(self, op: str, args: tuple, tensors: list[torch.Tensor], out: torch.Tensor) -> torch.Tensor:
        every_input_dead = all(bool(self._get(t).all()) for t in tensors)
        if every_input_dead:
            return self._fill(out, True)
        x = tensors[0]
        if op in WEIGHT_OPS:
            return self._linear_rule(op, args, out)
        if op in CHANNELWISE or op in POOLING:
            if x.dim() >= 2 and out.dim() >= 2 and out.shape[:2] == x.shape[:2]:
                return self._get(x).clone()
        elif op in ARITHMETIC:
            dead = self._fill(out, True)
            for t in tensors:
                d = self._get(t)
                if t.dim() >= 2 and out.dim() >= 2 and t.shape[1] == out.shape[1]:
                    dead &= d
                elif not bool(d.all()):
                    return self._fill(out, False)
            return dead
        elif op in RESHAPES and x.dim() >= 2 and out.dim() >= 2 and out.shape[0] == x.shape[0]:
            if out.shape[1] == x.shape[1]:
                return self._get(x).clone()
            per_channel = math.prod(x.shape[2:])
            if out.shape[1] == x.shape[1] * per_channel:
                return self._get(x).repeat_interleave(per_channel)
        elif op == CAT:
            dim = args[1] if len(args) > 1 else 0
            parts = args[0]
            if dim == 1 and all(p.dim() >= 2 for p in parts):
                return torch.cat([self._get(p) for p in parts])
        return self._fill(out, False)

    def _linear_rule(self, op: str, args: tuple, out: torch.Tensor) -> torch.Tensor:
        """An output unit is dead when every weight it reads from a live input unit is zero."""
        weight = weight_operand(op, args)
        if weight is None or storage_key(weight) not in self.watched:
            return self._fill(out, False)
        if op in CONV_OPS:
            x = args[0]
            live_in = ~self._get(x)
            if live_in.dim() == 0:
                return self._fill(out, False)
            groups = x.shape[1] // weight.shape[1]
            per_group = weight.shape[1]
            reads = (weight.detach() != 0).reshape(weight.shape[0], per_group, -1).any(dim=2).cpu()
            live_slots = live_in.view(groups, per_group).repeat_interleave(weight.shape[0] // groups, dim=0)
            return ~(reads & live_slots).any(dim=1)
        x = input_operand(op, args)
        live_in = ~self._get(x)
        if x.dim() != 2 or live_in.dim() == 0:
            return self._fill(out, False)
        w = weight.detach() if op == "aten.linear" else weight.detach().t()
        if w.dim() != 2:
            return self._fill(out, False)
        reads = (w != 0).cpu()
        return ~(reads & live_in.view(1, -1)).any(dim=1)


def structural_dead(model: nn.Module, layers: list[Layer], example: torch.Tensor) -> dict[str, torch.Tensor]:
    """For each layer, a bool vector over its output units: ``True`` where the unit no longer depends on the
    input (see the module docstring). ``example`` is one small batch; only the weights decide the answer."""
    watched = {storage_key(l.weight(model)): l.name for l in layers}
    flow = _DeadFlow(watched, example)
    with torch.inference_mode(), decomposed_attention(), flow:
        model(example)
    return {l.name: flow.layers[l.name] for l in layers if l.name in flow.layers}


# --------------------------------------------------------------------------------------------- observation


class _Observer(EagerDispatchMode):
    """Hands each watched layer's raw output (first use per pass) to ``on_output`` as it is produced, and keeps
    the batch-wise min and max of the end of each layer's own per-channel chain (BatchNorm, activation)."""

    def __init__(self, watched: dict[int, str], on_output: Callable[[str, torch.Tensor, int], None] | None) -> None:
        super().__init__()
        self.watched = watched
        self.on_output = on_output
        self.seen: set[str] = set()
        self.chain: dict[int, tuple[torch.Tensor, str, int]] = {}
        self.ends: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        out = func(*args, **(kwargs or {}))
        op = op_name(func)
        if op in WEIGHT_OPS:
            weight = weight_operand(op, args)
            name = self.watched.get(storage_key(weight)) if isinstance(weight, torch.Tensor) else None
            if name is not None and name not in self.seen and isinstance(out, torch.Tensor):
                self.seen.add(name)
                dim = channel_dim(op) % out.dim()
                if self.on_output is not None:
                    self.on_output(name, out, dim)
                self._extend(out, name, dim)
            return out
        x = args[0] if args and isinstance(args[0], torch.Tensor) else None
        entry = self.chain.get(id(x)) if x is not None else None
        if entry is not None and entry[0] is x:
            main = first_tensor(out)
            if op in CHANNELWISE and isinstance(main, torch.Tensor) and main.shape == x.shape:
                self._extend(main, entry[1], entry[2])
            elif op.endswith("_"):
                del self.chain[id(x)]
        return out

    def _extend(self, t: torch.Tensor, name: str, dim: int) -> None:
        """``t`` is now the end of layer ``name``'s chain: keep its min and max over the batch, units last."""
        self.chain[id(t)] = (t, name, dim)
        v = t.detach()
        lo = v.amin(dim=0).movedim(dim - 1, -1).float().cpu()
        hi = v.amax(dim=0).movedim(dim - 1, -1).float().cpu()
        self.ends[name] = (lo, hi, v.shape[dim])


# -------------------------------------------------------------------------------------------- accumulators

_HIST_FLOOR = 1e-12
_HIST_PER_DECADE = 50
_HIST_BINS = 2 + int(math.ceil((math.log10(2.0) - math.log10(_HIST_FLOOR)) * _HIST_PER_DECADE))


class _Moments:
    """Per-channel count, mean and sum of squared deviations, merged batch by batch (Chan et al.)."""

    def __init__(self) -> None:
        self.n = 0
        self.mean: torch.Tensor | None = None
        self.m2: torch.Tensor | None = None

    def add(self, values: torch.Tensor) -> None:
        nb = values.shape[0]
        if nb == 0:
            return
        mean_b = values.mean(dim=0)
        m2_b = ((values - mean_b) ** 2).sum(dim=0)
        if self.mean is None:
            self.n, self.mean, self.m2 = nb, mean_b, m2_b
            return
        total = self.n + nb
        delta = mean_b - self.mean
        self.mean = self.mean + delta * (nb / total)
        self.m2 = self.m2 + m2_b + delta * delta * (self.n * nb / total)
        self.n = total

    @property
    def var(self) -> torch.Tensor:
        return self.m2 / max(self.n, 1)


class _Shift:
    """Streaming activation-shift statistics of one observed output under one pruned cell."""

    def __init__(self) -> None:
        self.samples = 0
        self.sq_diff = 0.0
        self.sq_dense = 0.0
        self.cos_sum = 0.0
        self.cos_min = 1.0
        self.hist_n = torch.zeros(_HIST_BINS, dtype=torch.float64)
        self.hist_u = torch.zeros(_HIST_BINS, dtype=torch.float64)
        self.dense = _Moments()
        self.pruned = _Moments()

    def add(self, dense: torch.Tensor, pruned: torch.Tensor, dim: int) -> None:
        d = dense.detach().double()
        p = pruned.detach().double()
        if self.hist_n.device != d.device:
            self.hist_n, self.hist_u = self.hist_n.to(d.device), self.hist_u.to(d.device)
        n = d.shape[0]
        self.samples += n
        diff = (p - d).reshape(n, -1)
        d2 = d.reshape(n, -1)
        p2 = p.reshape(n, -1)
        self.sq_diff += float((diff * diff).sum())
        self.sq_dense += float((d2 * d2).sum())
        cos = _cosine(d2, p2, diff)
        self.cos_sum += float(cos.sum())
        self.cos_min = min(self.cos_min, float(cos.min()))
        u = (1.0 - cos).clamp(min=0.0)
        idx = torch.where(u <= _HIST_FLOOR, torch.zeros_like(u),
                          1 + ((u.clamp(min=_HIST_FLOOR).log10() - math.log10(_HIST_FLOOR)) * _HIST_PER_DECADE).floor())
        idx = idx.long().clamp(0, _HIST_BINS - 1)
        self.hist_n += torch.bincount(idx, minlength=_HIST_BINS).double()
        self.hist_u += torch.bincount(idx, weights=u, minlength=_HIST_BINS)
        channels = d.shape[dim]
        self.dense.add(d.movedim(dim, -1).reshape(-1, channels))
        self.pruned.add(p.movedim(dim, -1).reshape(-1, channels))

    def worst_decile(self) -> float:
        """Mean cosine of the 10% least similar samples (at least one)."""
        k = max(1, math.ceil(0.1 * self.samples))
        taken, total = 0.0, 0.0
        for b in range(_HIST_BINS - 1, -1, -1):
            count = float(self.hist_n[b])
            if count == 0:
                continue
            take = min(count, k - taken)
            total += float(self.hist_u[b]) * take / count
            taken += take
            if taken >= k:
                break
        return 1.0 - total / k

    def row(self) -> dict:
        var_d, var_p = self.dense.var, self.pruned.var
        floor = 1e-12 + 1e-8 * float(var_d.mean())
        vd, vp = var_d.clamp(min=floor), var_p.clamp(min=floor)
        sd = vd.sqrt()
        dm = self.pruned.mean - self.dense.mean
        mean_shift = dm.abs() / sd
        std_shift = (var_p.sqrt() - var_d.sqrt()).abs() / sd
        # 2 s_d s_p / (s_d^2 + s_p^2) written as 1 - (s_d - s_p)^2 / (...): exactly 1 when nothing moved.
        spread = 1.0 - (vd.sqrt() - vp.sqrt()) ** 2 / (vd + vp)
        hellinger = (1.0 - spread.sqrt() * torch.exp(-dm * dm / (4.0 * (vd + vp)))).clamp(min=0.0).sqrt()
        if self.sq_dense > 0:
            rel_l2 = math.sqrt(self.sq_diff / self.sq_dense)
        else:
            rel_l2 = 0.0 if self.sq_diff == 0 else math.inf
        return {
            "rel_l2": rel_l2,
            "cosine": self.cos_sum / max(self.samples, 1),
            "cosine_worst_decile": self.worst_decile(),
            "cosine_min": self.cos_min,
            "mean_shift": float(mean_shift.mean()),
            "mean_shift_max": float(mean_shift.max()),
            "std_shift": float(std_shift.mean()),
            "std_shift_max": float(std_shift.max()),
            "hellinger": float(hellinger.mean()),
            "hellinger_max": float(hellinger.max()),
            "channels": int(dm.numel()),
            "samples": self.samples,
        }


def _cosine(a: torch.Tensor, b: torch.Tensor, diff: torch.Tensor) -> torch.Tensor:
    """Row-wise cosine as 1 - (|a-b|^2 - (|a|-|b|)^2) / (2|a||b|): exactly 1 when a == b, stable near 1.
    Two zero rows count as identical (1); one zero row against a non-zero one as orthogonal (0)."""
    na, nb = a.norm(dim=1), b.norm(dim=1)
    dd = (diff * diff).sum(dim=1)
    denom = 2 * na * nb
    cos = 1.0 - (dd - (na - nb) ** 2) / denom.clamp(min=1e-300)
    cos = torch.where(denom > 0, cos, torch.where(dd == 0, torch.ones_like(cos), torch.zeros_like(cos)))
    return cos.clamp(-1.0, 1.0)


class _Constancy:
    """Per-unit, per-position min and max over the samples: a unit is constant when they agree everywhere."""

    def __init__(self) -> None:
        self.lo: torch.Tensor | None = None
        self.hi: torch.Tensor | None = None
        self.channels = 0

    def add(self, lo: torch.Tensor, hi: torch.Tensor, channels: int) -> None:
        self.channels = channels
        self.lo = lo if self.lo is None else torch.minimum(self.lo, lo)
        self.hi = hi if self.hi is None else torch.maximum(self.hi, hi)

    def dead(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(constant, zero) bool vectors over the units."""
        lo = self.lo.reshape(-1, self.channels)
        hi = self.hi.reshape(-1, self.channels)
        scale = float(torch.maximum(lo.abs(), hi.abs()).max()) if lo.numel() else 0.0
        tol = 1e-6 * scale
        constant = ((hi - lo) <= tol).all(dim=0)
        zero = ((hi.abs() <= tol) & (lo.abs() <= tol)).all(dim=0)
        return constant, zero


# ---------------------------------------------------------------------------------------------- the run


@dataclass
class Diagnosis:
    """The diagnostics of one or more (layer, sparsity) cells: tidy tables and a JSON-ready summary."""

    shift: pd.DataFrame
    dead: pd.DataFrame
    recalibration: pd.DataFrame
    summary: dict = field(default_factory=dict)

    def save(self, out_dir: str | Path) -> Path:
        """Write ``activation_shift.csv``, ``dead_neurons.csv``, ``bn_recalibration.csv`` and ``diagnose.json``."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        self.shift.to_csv(out / "activation_shift.csv", index=False)
        self.dead.to_csv(out / "dead_neurons.csv", index=False)
        self.recalibration.to_csv(out / "bn_recalibration.csv", index=False)
        (out / "diagnose.json").write_text(json.dumps(self.summary, indent=2, default=str) + "\n")
        return out

    @classmethod
    def load(cls, folder: str | Path) -> "Diagnosis":
        """A diagnosis read back from a folder ``save`` (``prunescope diagnose``) wrote."""
        folder = Path(folder)
        names = ("activation_shift.csv", "dead_neurons.csv", "bn_recalibration.csv")
        missing = [n for n in names if not (folder / n).is_file()]
        if missing:
            raise ValueError(f"{folder} is not a diagnose folder: {', '.join(missing)} missing")
        tables = []
        for n in names:
            try:
                tables.append(pd.read_csv(folder / n, dtype={"indices_created": str, "layer": str, "observed": str}))
            except pd.errors.EmptyDataError:
                tables.append(pd.DataFrame())
        summary = json.loads((folder / "diagnose.json").read_text()) if (folder / "diagnose.json").is_file() else {}
        return cls(*tables, summary)


def _indices(mask: torch.Tensor) -> str:
    return " ".join(str(i) for i in torch.nonzero(mask).flatten().tolist())


def _dead_row(layer: str, sparsity: float, observed: str, kind: str, before: torch.Tensor,
              after: torch.Tensor, zero_before: torch.Tensor | None = None,
              zero_after: torch.Tensor | None = None) -> dict:
    units = int(before.numel())
    created = after & ~before
    return {
        "layer": layer, "sparsity": sparsity, "observed": observed, "kind": kind, "units": units,
        "dead_before": int(before.sum()), "dead_after": int(after.sum()), "created": int(created.sum()),
        "fraction_before": float(before.sum()) / max(units, 1), "fraction_after": float(after.sum()) / max(units, 1),
        "zero_before": None if zero_before is None else int(zero_before.sum()),
        "zero_after": None if zero_after is None else int(zero_after.sum()),
        "indices_before": _indices(before), "indices_after": _indices(after), "indices_created": _indices(created),
    }


def requested_sparsities(config: ScanConfig) -> list[float]:
    """The sparsities a diagnosis runs: the config's, after validation, with 0 only when asked for."""
    asked_zero = any(check_sparsity(s) == 0.0 for s in config.sparsities)
    values = list(config.validated().sparsities)
    return [s for s in values if s > 0.0 or asked_zero]


def diagnose(workload: Workload, config: ScanConfig, calib_x: torch.Tensor | None = None,
             recalibration: bool = True, context: ScanContext | None = None) -> Diagnosis:
    """Diagnose every selected layer (``config.layers``, all when ``None``) at each of ``config.sparsities``.

    ``calib_x`` are the inputs BatchNorm recalibration re-estimates its statistics on (default: the eval
    inputs; only the inputs are used, never labels); ``config.bn_batches`` batches of ``config.batch_size``.

    Example::

        >>> from analysis import ScanConfig, diagnose, load_workload
        >>> workload = load_workload("sample:digits-cnn", "sample:digits", count=128)
        >>> d = diagnose(workload, ScanConfig(layers=("block2.0",), sparsities=(0.5,), granularity="channel"))
        >>> sorted(set(d.shift["observed"]))
        ['block2.0', 'block3.0', 'fc', 'logits']
    """
    refuse(workload.model, "diagnose", "it records the activations inside the model")
    t0 = time.perf_counter()
    sparsities = requested_sparsities(config)
    ctx = context or prepare(workload, config)
    plan = _Plan.of(ctx, sparsities)
    t_shift = time.perf_counter()
    seen = _observe(ctx, plan)
    shift_s = time.perf_counter() - t_shift
    t_struct = time.perf_counter()
    shift, dead = _shift_table(plan, seen), _dead_table(ctx, plan, seen)
    struct_s = time.perf_counter() - t_struct
    t_recal = time.perf_counter()
    recal = recalibration_table(ctx, plan.cells, seen.sums, calib_x, enabled=recalibration)
    recal_s = time.perf_counter() - t_recal
    summary = _summary(workload, ctx, sparsities, shift, dead, recal, {
        "prepare_s": round(t_shift - t0, 4), "shift_s": round(shift_s, 4), "dead_s": round(struct_s, 4),
        "recalibration_s": round(recal_s, 4), "total_s": round(time.perf_counter() - t0, 4)})
    return Diagnosis(shift, dead, recal.table, summary)


@dataclass
class _Plan:
    """What a diagnosis runs: the (layer, sparsity, mask) cells, every layer of the model in forward order, the
    weights to watch (by storage) and, for each diagnosed layer, the layers at or after it."""

    cells: list[tuple[Layer, float, torch.Tensor]]
    all_layers: list[Layer]
    order: dict[str, int]
    watched: dict[object, str]
    downstream: dict[str, list[str]]

    @classmethod
    def of(cls, ctx: ScanContext, sparsities: list[float]) -> "_Plan":
        index = {s: i for i, s in enumerate(ctx.config.sparsities)}
        cells = [(layer, s, ctx.masks_for(layer)[index[s]]) for layer in ctx.layers for s in sparsities]
        all_layers = find_layers(ctx.model, ctx.x[:1].to(ctx.device))
        order = {l.name: i for i, l in enumerate(all_layers)}
        watched = {storage_key(l.weight(ctx.model)): l.name for l in all_layers}
        downstream = {layer.name: [l.name for l in all_layers if order[l.name] >= order[layer.name]]
                      for layer in ctx.layers}
        return cls(cells, all_layers, order, watched, downstream)

    def distance(self, layer: str, observed: str) -> int:
        """How many layers after ``layer`` the ``observed`` output sits (the logits count as after the last)."""
        return self.order.get(observed, len(self.all_layers)) - self.order[layer]


@dataclass
class _Seen:
    """What one pass over the eval set observed: activation shifts per (cell, observed layer), constancy of each
    output dense and per cell, and the logit sums per cell."""

    shifts: dict[tuple[int, str], _Shift] = field(default_factory=dict)
    const_dense: dict[str, _Constancy] = field(default_factory=dict)
    const_pruned: dict[tuple[int, str], _Constancy] = field(default_factory=dict)
    sums: dict[int, Sums] = field(default_factory=dict)


def _observe(ctx: ScanContext, plan: _Plan) -> _Seen:
    """Run the eval set once: per batch, the dense model, then every cell with its mask applied."""
    seen, model, cfg = _Seen(), ctx.model, ctx.config
    with torch.inference_mode(), decomposed_attention():
        for start in range(0, len(ctx.x), cfg.batch_size):
            xb = ctx.x[start : start + cfg.batch_size].to(ctx.device)
            yb = ctx.labels(start, start + cfg.batch_size)
            dense_out: dict[str, tuple[torch.Tensor, int]] = {}
            obs = _Observer(plan.watched,
                            lambda name, out, dim: dense_out.__setitem__(name, (out.detach().clone(), dim)))
            with obs:
                dense_logits = class_scores(model(xb)).float()
            for name, (lo, hi, ch) in obs.ends.items():
                seen.const_dense.setdefault(name, _Constancy()).add(lo, hi, ch)
            for i, (layer, _, mask) in enumerate(plan.cells):
                _observe_cell(seen, plan, i, layer, mask, model, xb, yb, dense_out, dense_logits, ctx.task)
    return seen


def _observe_cell(seen: _Seen, plan: _Plan, i: int, layer: Layer, mask: torch.Tensor, model: nn.Module,
                  xb: torch.Tensor, yb: torch.Tensor | None, dense_out: dict, dense_logits: torch.Tensor,
                  task: str) -> None:
    """One batch through the model with cell ``i``'s mask, compared with the dense outputs (metric sums as
    ``task`` measures them: a causal LM's per next token)."""
    wanted = set(plan.downstream[layer.name])

    def compare(name: str, out: torch.Tensor, dim: int) -> None:
        if name in wanted and name in dense_out:
            seen.shifts.setdefault((i, name), _Shift()).add(dense_out[name][0], out, dim)

    obs = _Observer(plan.watched, compare)
    with masks.applied(model, layer.masks(mask)), obs:
        logits = class_scores(model(xb)).float()
    seen.shifts.setdefault((i, LOGITS), _Shift()).add(dense_logits, logits, logits.dim() - 1)
    seen.sums[i] = seen.sums.get(i, Sums(labelled=yb is not None)) + sums_from_logits(logits, dense_logits, yb, task)
    for name, (lo, hi, ch) in obs.ends.items():
        if name in wanted:
            seen.const_pruned.setdefault((i, name), _Constancy()).add(lo, hi, ch)


def _shift_table(plan: _Plan, seen: _Seen) -> pd.DataFrame:
    """One row per (cell, observed layer or the logits): how far the activations moved."""
    rows = []
    for i, (layer, sparsity, _) in enumerate(plan.cells):
        for name in [*plan.downstream[layer.name], LOGITS]:
            if (i, name) in seen.shifts:
                rows.append({"layer": layer.name, "sparsity": sparsity, "observed": name,
                             "distance": plan.distance(layer.name, name), **seen.shifts[(i, name)].row()})
    return pd.DataFrame(rows)


def _dead_table(ctx: ScanContext, plan: _Plan, seen: _Seen) -> pd.DataFrame:
    """One row per (cell, observed layer, kind): units dead before and after pruning, structurally (from the
    weights) and functionally (constant over the eval set)."""
    rows, model, example = [], ctx.model, ctx.x[:1].to(ctx.device)
    struct_dense = structural_dead(model, plan.all_layers, example)
    for i, (layer, sparsity, mask) in enumerate(plan.cells):
        with masks.applied(model, layer.masks(mask)):
            struct_after = structural_dead(model, plan.all_layers, example)
        for name in plan.downstream[layer.name]:
            if name in struct_dense and name in struct_after:
                rows.append(_dead_row(layer.name, sparsity, name, "structural", struct_dense[name],
                                      struct_after[name]))
            if name in seen.const_dense and (i, name) in seen.const_pruned:
                c_before, z_before = seen.const_dense[name].dead()
                c_after, z_after = seen.const_pruned[(i, name)].dead()
                rows.append(_dead_row(layer.name, sparsity, name, "functional", c_before, c_after,
                                      z_before, z_after))
    return pd.DataFrame(rows)


@dataclass
class Recalibration:
    """The metric after pruning, without and with BatchNorm recalibration, per cell."""

    applies: bool
    reason: str
    table: pd.DataFrame
    batchnorm_layers: int = 0


def recalibration_table(ctx: ScanContext, cells: list[tuple[Layer, float, torch.Tensor]], pruned: dict[int, Sums],
                        calib_x: torch.Tensor | None = None, enabled: bool = True) -> Recalibration:
    """For each cell: the metric pruned (from ``pruned``), and pruned with re-estimated BatchNorm statistics.

    ``recovered`` is the share of the drop that recalibration gives back: (recal - pruned) / (dense - pruned)
    for a higher-is-better metric, empty when there was no drop.
    """
    model, cfg = ctx.model, ctx.config
    metric = "accuracy" if ctx.y is not None else "agreement"
    base = ctx.baseline().metrics()
    count = len(batchnorm.batchnorms(model))
    if not enabled:
        return Recalibration(False, "recalibration was not asked for", pd.DataFrame(), count)
    if count == 0:
        return Recalibration(False, "the model has no BatchNorm layers that track running statistics: "
                                    "recalibration does not apply", pd.DataFrame(), 0)
    calib = ctx.x if calib_x is None else calib_x
    rows = []
    for i, (layer, sparsity, mask) in enumerate(cells):
        before = pruned[i].metrics()
        with masks.applied(model, layer.masks(mask)), batchnorm.preserved(model):
            batchnorm.recalibrate(model, calib, cfg.bn_batches, cfg.batch_size, ctx.device)
            after = evaluate(model, ctx.x, ctx.y, ctx.dense_logits, cfg.batch_size, ctx.device,
                             task=ctx.task).metrics()
        drop = base[metric] - before[metric]
        rows.append({
            "layer": layer.name, "sparsity": sparsity, "metric": metric, "dense": base[metric],
            "pruned": before[metric], "recalibrated": after[metric],
            "recovered": (after[metric] - before[metric]) / drop if drop > 0 else None,
            "loss_pruned": before["loss"], "loss_recalibrated": after["loss"],
            "kl_pruned": before["kl"], "kl_recalibrated": after["kl"],
        })
    inputs = min(len(calib), cfg.bn_batches * cfg.batch_size)
    return Recalibration(True, f"re-estimated {count} BatchNorm layers on {inputs} calibration inputs",
                         pd.DataFrame(rows), count)


def _summary(workload: Workload, ctx: ScanContext, sparsities: list[float], shift: pd.DataFrame, dead: pd.DataFrame,
             recal: Recalibration, timings: dict) -> dict:
    cells = []
    for layer in ctx.layers:
        for s in sparsities:
            cell: dict = {"layer": layer.name, "sparsity": s}
            if not shift.empty:
                rows = shift[(shift["layer"] == layer.name) & (shift["sparsity"] == s)]
                own = rows[rows["observed"] == layer.name]
                logit = rows[rows["observed"] == LOGITS]
                if not own.empty:
                    cell["own_rel_l2"] = float(own["rel_l2"].iloc[0])
                if not logit.empty:
                    cell["logits_rel_l2"] = float(logit["rel_l2"].iloc[0])
                    cell["logits_cosine"] = float(logit["cosine"].iloc[0])
            if not dead.empty:
                rows = dead[(dead["layer"] == layer.name) & (dead["sparsity"] == s)]
                for kind in ("structural", "functional"):
                    k = rows[rows["kind"] == kind]
                    cell[f"{kind}_dead_created"] = int(k["created"].sum())
            if not recal.table.empty:
                r = recal.table[(recal.table["layer"] == layer.name) & (recal.table["sparsity"] == s)].iloc[0]
                cell.update({"pruned": r["pruned"], "recalibrated": r["recalibrated"], "recovered": r["recovered"]})
            cells.append(cell)
    return {
        "model": workload.model_spec,
        "data": workload.data.spec,
        "samples": len(ctx.x),
        "labelled": ctx.y is not None,
        "criterion": ctx.config.criterion,
        "granularity": ctx.config.granularity,
        "sparsities": sparsities,
        "layers": [l.name for l in ctx.layers],
        "skipped_layers": ctx.skipped,
        "baseline": ctx.baseline().metrics(),
        "distribution_distance": "Hellinger distance of per-channel Gaussian fits",
        "recalibration": {"applies": recal.applies, "reason": recal.reason, "batchnorm_layers": recal.batchnorm_layers,
                          "batches": ctx.config.bn_batches, "batch_size": ctx.config.batch_size},
        "cells": cells,
        "config": asdict(ctx.config),
        "timings": timings,
        "versions": environment(),
    }
