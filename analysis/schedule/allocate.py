"""Allocation: per-layer sparsities that reach a global target (sparsity, parameters kept or FLOPs kept).

Allocation sets one sparsity per *slot*: a layer, or for channel pruning a coupled group of layers (the
``Accountant``'s ``Coupling``: layers that must lose the same channels get one value, groups kept whole get none).
Every method is a path: one knob that, turned up, prunes every slot at least as much as before, from dense to every
slot at its bound. A bisection on the knob then finds the schedule whose totals (counted by the ``Accountant``, so
channel pruning also removes the next layers' inputs) meet the target. Each slot's sparsity is a whole number of
weights (or channels, heads, positions per block), so the target is met to within one unit per slot.

- ``uniform``: the same sparsity everywhere.
- ``global``: one magnitude threshold over all slots (per channel: the mean |w| of the channel's rows).
- ``lamp``: one threshold on LAMP scores, ``w_u**2 / sum of w_v**2 over the weights v of the layer at least
  as large`` (Lee et al. 2021, "Layer-adaptive sparsity for the magnitude-based pruning").
- ``erk``: Erdos-Renyi-Kernel densities, ``density ~ (sum of the weight's dimensions) / (their product)``
  (Evci et al. 2020, "Rigging the lottery").
- ``sensitivity``: the smallest total predicted drop (sum of the layers' measured drops, curves made
  monotone) for the target: slots are pruned along the lower convex hull of their curves (a group's curve is the
  sum of its layers'), cheapest drop per removed weight (or FLOP) first. A tiny penalty on ``s**2`` spreads pruning
  evenly where the curves are flat.
- ``owl``: outlier-weighted layerwise sparsity (Yin et al. 2024, "Outlier Weighed Layerwise Sparsity", as in
  their code, github.com/luuyin/OWL). Per block (a transformer block, a CNN stage, else the layer), the outlier
  ratio ``D`` is the percentage of the block's Wanda scores ``|W| x ||X||`` (all its layers pooled, on the dense
  model and the calibration samples) above ``m`` times their mean; ``D`` is scaled to ``[0, 2 lambda]`` and each
  block's sparsity is the knob minus its scaled ratio's deviation from the mean: blocks with more outliers get
  less sparsity, the spread between blocks is ``2 lambda``, and equal ratios give uniform sparsity.

``Bounds`` (a maximum per layer, layers kept dense) are honoured by every method; a group takes the tightest bound
of its layers.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from analysis.core import criteria
from analysis.core.blocks import block_of
from analysis.core.data import EvalData
from analysis.core.granularity import (
    CoupledLayer,
    Granularity,
    check_sparsity,
    parse_granularity,
    schedule_layers,
    supports,
)
from analysis.core.layers import Layer
from analysis.core.profile import SensitivityProfile
from analysis.schedule.coupling import CoupledGroup
from analysis.schedule.predict import Curve, layer_curves
from analysis.schedule.schedule import Schedule, ScheduleError
from analysis.schedule.totals import Accountant, Totals

METHODS = ("sensitivity", "uniform", "global", "lamp", "erk", "owl")
TARGET_KINDS = ("sparsity", "params", "flops")
FLAT_PENALTY = 1e-4


@dataclass(frozen=True)
class Target:
    """``sparsity``: fraction of prunable weights removed; ``params``/``flops``: how many to keep (counts)."""

    kind: str
    value: float

    def __post_init__(self) -> None:
        if self.kind not in TARGET_KINDS:
            raise ValueError(f"unknown target {self.kind!r}; choose one of {', '.join(TARGET_KINDS)}")
        if not isinstance(self.value, (int, float)) or isinstance(self.value, bool) or not math.isfinite(self.value):
            raise ValueError(f"target {self.kind} must be a number, got {self.value!r}")
        if self.kind == "sparsity" and not 0.0 <= self.value < 1.0:
            raise ValueError(f"target sparsity {self.value!r} is outside [0, 1)")
        if self.kind != "sparsity" and self.value < 0:
            raise ValueError(f"target {self.kind} {self.value!r} must be a non-negative count")

    def progress(self, t: Totals) -> float:
        """Grows as pruning grows; the target is reached at ``goal``."""
        if self.kind == "sparsity":
            return t.global_sparsity
        return -float(t.params_kept if self.kind == "params" else t.flops_kept)

    @property
    def goal(self) -> float:
        return self.value if self.kind == "sparsity" else -float(self.value)

    def describe(self, t: Totals) -> str:
        if self.kind == "sparsity":
            return f"global sparsity {t.global_sparsity:.4f}"
        return f"{t.params_kept} params" if self.kind == "params" else f"{t.flops_kept} FLOPs"

    def __str__(self) -> str:
        return f"sparsity {self.value:g}" if self.kind == "sparsity" else f"{self.kind} {self.value:g}"


@dataclass
class Bounds:
    """Per-layer limits: ``max_sparsity`` for every layer, ``per_layer`` overrides, ``keep_dense`` names."""

    max_sparsity: float | None = None
    per_layer: dict[str, float] = field(default_factory=dict)
    keep_dense: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.max_sparsity is not None:
            self.max_sparsity = check_sparsity(self.max_sparsity, "maximum sparsity")
        self.per_layer = {k: check_sparsity(v, f"maximum sparsity of layer {k}") for k, v in self.per_layer.items()}
        self.keep_dense = tuple(self.keep_dense)

    def check(self, layers: list[Layer]) -> None:
        names = {l.name for l in layers}
        for name in [*self.per_layer, *self.keep_dense]:
            if name not in names:
                raise ScheduleError(f"bound names layer {name!r}, which the model does not have")

    def limit(self, layer: Layer, granularity: Granularity) -> float:
        """The largest sparsity allowed in ``layer``, on its grid of whole weights or channels."""
        if supports(granularity, layer.shape):
            return 0.0
        return self.cap(layer.name, granularity.units(layer.shape))

    def cap(self, name: str, units: int) -> float:
        """The largest sparsity allowed in layer ``name`` on a grid of ``units`` (every unit but one)."""
        if name in self.keep_dense or units < 2:
            return 0.0
        cap = (units - 1) / units
        for bound in (self.max_sparsity, self.per_layer.get(name)):
            if bound is not None:
                cap = min(cap, math.floor(bound * units + 1e-9) / units)
        return cap


@dataclass(frozen=True)
class Slot:
    """What allocation sets one sparsity for: one layer, or a coupled group (``group``) of ``members``; its sparsity
    moves on a grid of ``units`` steps."""

    name: str
    members: tuple[Layer, ...]
    units: int
    group: CoupledGroup | None = None

    @property
    def params(self) -> int:
        return sum(l.params for l in self.members)

    @property
    def flops(self) -> int:
        return sum(l.flops for l in self.members)


def slots(layers: list[Layer], granularity: str | Granularity, accountant: Accountant) -> list[Slot]:
    """The slots of a schedule: every layer, or for channel pruning every coupled group that can be pruned."""
    gran = parse_granularity(granularity)
    if not gran.structured:
        return [Slot(l.name, (l,), gran.units(l.shape)) for l in layers]
    by_name = {l.name: l for l in layers}
    return [Slot(g.key, tuple(by_name[n] for n in g.layers), g.per_block, g)
            for g in accountant.coupling.groups if g.prunable]


def _grid(s: float, units: int) -> float:
    """``s`` rounded to a whole number of units."""
    return round(s * units) / units


@dataclass(frozen=True)
class Owl:
    """OWL's parameters: ``lam`` (lambda) bounds the spread of the blocks' sparsities (max - min = 2 lambda);
    ``m``: a score above ``m`` times its block's mean is an outlier. The defaults are the OWL paper's
    unstructured examples (lambda 0.08, M 5). ``allocate("owl", ...)`` takes it with the layers' Wanda scores.

    Example::

        >>> from analysis import Owl, Target, allocate, load_workload
        >>> from analysis.core.layers import find_layers
        >>> from analysis.schedule.allocate import wanda_scores
        >>> w = load_workload("sample:digits-resnet", "sample:digits", count=64)
        >>> layers = find_layers(w.model, w.data.x[:1])
        >>> scores = wanda_scores(w.model, layers, w.data)
        >>> schedule = allocate("owl", layers, Target("sparsity", 0.5), scores=scores, owl=Owl(lam=0.1))
        >>> round(schedule.meta["totals"]["global_sparsity"], 2), list(schedule.meta["owl"]["outlier_ratios"])
        (0.5, ['stem.0', 'layer1', 'layer2', 'fc'])
    """

    lam: float = 0.08
    m: float = 5.0

    def __post_init__(self) -> None:
        if not (isinstance(self.lam, (int, float)) and 0.0 <= self.lam < 0.5):
            raise ValueError(f"OWL lambda {self.lam!r} is outside [0, 0.5): it is half the spread of the sparsities")
        if not (isinstance(self.m, (int, float)) and self.m > 0):
            raise ValueError(f"OWL M {self.m!r} must be positive: an outlier is a score above M times the mean")


def wanda_scores(model: nn.Module, layers: list[Layer], data: EvalData, samples: int = 256) -> dict[str, torch.Tensor]:
    """Each layer's Wanda scores ``|W| x ||X||`` on the dense model, the input norms over the first ``samples``
    samples of ``data`` (real tokens only), in the layer's (out, in) order; a coupled layer's parts flattened."""
    parts = [p.layer for l in layers if isinstance(l, CoupledLayer) for p in l.parts] + [
        l for l in layers if not isinstance(l, CoupledLayer)]
    stats = criteria.calibration_stats(model, parts, data, "activation", samples)
    one = {l.name: criteria.importance(l, l.weight(model), "activation", stats).flatten() for l in parts}
    return {l.name: torch.cat([one[p.layer.name] for p in l.parts]) if isinstance(l, CoupledLayer) else one[l.name]
            for l in layers}


def outlier_ratios(layers: list[Layer], scores: Mapping[str, torch.Tensor], m: float = 5.0) -> dict[str, float]:
    """OWL's ``D`` per block: the percentage of the block's scores (its layers' pooled) above ``m`` times their
    mean. A layer outside any numbered block is a block of its own."""
    pooled: dict[str, list[torch.Tensor]] = {}
    for layer in layers:
        if layer.name in scores:
            pooled.setdefault(block_of(layer.name) or layer.name, []).append(scores[layer.name].flatten().double())
    ratios = {}
    for block, parts in pooled.items():
        a = torch.cat(parts)
        ratios[block] = 100.0 * float((a > m * a.mean()).double().mean())
    return ratios


def owl_offsets(ratios: Mapping[str, float], lam: float) -> dict[str, float]:
    """How much less than the knob each block is pruned: its ratio scaled to [0, 2 lambda], minus the mean of the
    scaled ratios (all zero when the ratios are equal, where the reference code would divide by zero)."""
    values = np.array(list(ratios.values()), dtype=float)
    if values.size == 0 or values.max() - values.min() <= 0:
        return {b: 0.0 for b in ratios}
    scaled = (values - values.min()) / (values.max() - values.min()) * 2 * lam
    return {b: float(v - scaled.mean()) for b, v in zip(ratios, scaled)}


# ------------------------------------------------------------------------------------------------- paths


@dataclass
class _Path:
    """sparsities(u) for u in [lo, hi] by slot name, non-decreasing in u; ``integer`` paths take whole u only."""

    fn: Callable[[float], dict[str, float]]
    lo: float
    hi: float
    integer: bool = False


def _uniform(slots_: list[Slot], caps: dict[str, float]) -> _Path:
    def fn(u: float) -> dict[str, float]:
        return {s.name: _grid(min(u, caps[s.name]), s.units) for s in slots_ if caps[s.name] > 0}

    return _Path(fn, 0.0, 1.0)


def _unit_scores(slot: Slot, weights: Mapping[str, torch.Tensor], gran: Granularity, method: str) -> np.ndarray:
    """Scores of a slot's pruning units (weights, channels, or a group's positions), sorted, for one threshold."""
    base = _group_scores(slot, weights, method) if gran.structured else _weight_scores(weights[slot.name], method)
    ordered = np.sort(base, kind="stable")
    if method != "lamp":
        return ordered
    suffix = np.cumsum(ordered[::-1])[::-1]
    return ordered / np.maximum(suffix, 1e-300)


def _weight_scores(weight: torch.Tensor, method: str) -> np.ndarray:
    w = weight.detach().float().cpu().reshape(-1).double()
    return (w * w).numpy() if method == "lamp" else w.abs().numpy()


def _group_scores(slot: Slot, weights: Mapping[str, torch.Tensor], method: str) -> np.ndarray:
    """Per position of a group: the sum of squares of its rows (``lamp``) or the mean |w| of its rows."""
    total, count = np.zeros(slot.units), np.zeros(slot.units)
    shares = slot.group.shares if slot.group else ()
    for share in (s for s in shares if s.role == "out"):
        w = weights[share.layer].detach().float().cpu()
        rows = w.reshape(w.shape[0], -1).double()
        per_row = (rows * rows).sum(dim=1) if method == "lamp" else rows.abs().mean(dim=1)
        found = share.positions >= 0
        np.add.at(total, share.positions[found], per_row.numpy()[found])
        np.add.at(count, share.positions[found], 1)
    return total if method == "lamp" else total / np.maximum(count, 1)


def _threshold(slots_: list[Slot], caps: dict[str, float], gran: Granularity,
               weights: Mapping[str, torch.Tensor], method: str) -> _Path:
    """Remove the k lowest-scoring units over all slots (each slot only down to its cap)."""
    names, scores, owner = [], [], []
    for slot in slots_:
        cap_units = round(caps[slot.name] * slot.units)
        if cap_units <= 0:
            continue
        missing = [l.name for l in slot.members if l.name not in weights]
        if missing:
            raise ScheduleError(f"the {method} method needs the weights of layer {missing[0]}")
        s = _unit_scores(slot, weights, gran, method)[:cap_units]
        names.append(slot)
        scores.append(s)
        owner.append(np.full(len(s), len(names) - 1))
    if not scores:
        return _Path(lambda u: {}, 0, 0, integer=True)
    all_scores, all_owner = np.concatenate(scores), np.concatenate(owner)
    order = np.argsort(all_scores, kind="stable")
    # Rank of each unit in the global order, per slot: how many of a slot's units the first k remove.
    positions = [np.sort(np.nonzero(all_owner[order] == j)[0]) for j in range(len(names))]

    def fn(u: float) -> dict[str, float]:
        k = int(u)
        out = {}
        for slot, pos in zip(names, positions):
            n = int(np.searchsorted(pos, k))
            if n:
                out[slot.name] = n / slot.units
        return out

    return _Path(fn, 0, len(all_scores), integer=True)


def _erk(slots_: list[Slot], caps: dict[str, float]) -> _Path:
    raw = {s.name: sum(sum(l.shape) for l in s.members) / sum(math.prod(l.shape) for l in s.members) for s in slots_}
    active = [s for s in slots_ if caps[s.name] > 0]
    if not active:
        return _Path(lambda u: {}, 0.0, 0.0)

    def fn(u: float) -> dict[str, float]:
        eps = math.exp(-u)
        return {s.name: _grid(min(caps[s.name], max(0.0, 1.0 - eps * raw[s.name])), s.units) for s in active}

    values = [raw[s.name] for s in active]
    return _Path(fn, math.log(min(values)), math.log(max(values)) + 40.0)


def _owl(slots_: list[Slot], layers: list[Layer], caps: dict[str, float], scores: Mapping[str, torch.Tensor],
         owl: Owl) -> _Path:
    """Every block at the knob minus its OWL offset (``owl_offsets``), each slot within its cap; a coupled group
    takes the block of its first layer."""
    missing = [l.name for s in slots_ if caps[s.name] > 0 for l in s.members if l.name not in scores]
    if missing:
        raise ScheduleError(f"the owl method needs the Wanda scores of layer {missing[0]} (model and data)")
    offsets = owl_offsets(outlier_ratios(layers, scores, owl.m), owl.lam)
    shift = {s.name: offsets.get(block_of(s.name) or s.name, 0.0) for s in slots_}

    def fn(u: float) -> dict[str, float]:
        return {s.name: _grid(min(caps[s.name], max(0.0, u - shift[s.name])), s.units)
                for s in slots_ if caps[s.name] > 0}

    return _Path(fn, min(shift.values(), default=0.0), 1.0 + max(shift.values(), default=0.0))


def _slot_curve(slot: Slot, curves: Mapping[str, Curve]) -> Curve | None:
    """A slot's drop curve: its layer's, or the sum of its layers' (None when a layer was not measured)."""
    parts = [curves.get(l.name) for l in slot.members]
    if any(c is None for c in parts):
        return None
    if len(parts) == 1:
        return parts[0]
    last = min(c.max_sparsity for c in parts)
    s = np.unique(np.concatenate([c.sparsity[c.sparsity <= last] for c in parts]))
    return Curve(s, sum(np.interp(s, c.sparsity, c.drop) for c in parts),
                 sum(np.interp(s, c.sparsity, c.monotone) for c in parts), sum(c.full_drop for c in parts))


def _sensitivity(slots_: list[Slot], caps: dict[str, float], gran: Granularity,
                 profile: SensitivityProfile, metric: str | None, target: Target) -> _Path:
    """Hull segments of every slot's (cost, drop) curve, taken in order of drop per unit of cost."""
    curves = layer_curves(profile, metric)
    total_w = sum(s.params for s in slots_) or 1
    scale = max((float(c.monotone.max()) for c in curves.values()), default=0.0) or 1.0
    penalty = FLAT_PENALTY * scale
    seg_slot, seg_from, seg_to, seg_slope = [], [], [], []
    for i, slot in enumerate(slots_):
        curve = _slot_curve(slot, curves)
        cap = min(caps[slot.name], curve.max_sparsity) if curve is not None else 0.0
        if cap <= 0:
            continue
        cost = slot.flops if target.kind == "flops" else slot.params
        fixed = gran.fixed_sparsity
        if fixed is not None:
            s = np.array([0.0, fixed]) if cap >= fixed - 1e-9 else np.array([0.0])
        else:
            s = np.union1d(np.linspace(0.0, cap, 51), curve.sparsity[curve.sparsity <= cap])
        d = np.interp(s, curve.sparsity, curve.monotone)
        d = d + penalty * s * s * slot.params / total_w
        for a, b in _lower_hull(s * cost, d):
            seg_slot.append(i)
            seg_from.append(s[a])
            seg_to.append(s[b])
            seg_slope.append((d[b] - d[a]) / max((s[b] - s[a]) * cost, 1e-300))
    if not seg_slot:
        return _Path(lambda u: {}, 0.0, 0.0)
    order = np.lexsort((np.asarray(seg_from), np.asarray(seg_slope)))
    seg_slot = np.asarray(seg_slot)[order]
    seg_from, seg_to = np.asarray(seg_from)[order], np.asarray(seg_to)[order]

    def fn(u: float) -> dict[str, float]:
        j = min(int(u), len(seg_slot))
        frac = u - j
        s = {}
        for k in range(j):
            s[seg_slot[k]] = seg_to[k]
        if j < len(seg_slot) and frac > 0 and gran.fixed_sparsity is None:
            s[seg_slot[j]] = seg_from[j] + frac * (seg_to[j] - seg_from[j])
        return {slots_[i].name: _grid(v, slots_[i].units) for i, v in s.items() if v > 0}

    return _Path(fn, 0.0, float(len(seg_slot)), integer=gran.fixed_sparsity is not None)


def _lower_hull(x: np.ndarray, y: np.ndarray) -> list[tuple[int, int]]:
    """Segments (index pairs) of the lower convex hull of points sorted by x, from the first to the last."""
    hull: list[int] = []
    for i in range(len(x)):
        while len(hull) >= 2:
            a, b = hull[-2], hull[-1]
            if (y[b] - y[a]) * (x[i] - x[a]) >= (y[i] - y[a]) * (x[b] - x[a]):
                hull.pop()
            else:
                break
        hull.append(i)
    return list(zip(hull[:-1], hull[1:]))


# ------------------------------------------------------------------------------------------------ solver


def _solve(path: _Path, slots_: list[Slot], accountant: Accountant, gran: str,
           target: Target) -> tuple[dict[str, float], Totals]:
    """The point of ``path`` whose totals are closest to the target, by bisection on the knob; returns per-layer
    sparsities (every member of a slot at the slot's value)."""
    members = {s.name: [l.name for l in s.members] for s in slots_}

    def at(u: float) -> tuple[dict[str, float], Totals]:
        s = {layer: v for name, v in path.fn(u).items() for layer in members[name]}
        return s, accountant.totals(s, gran)

    lo_s, lo_t = at(path.lo)
    if target.progress(lo_t) >= target.goal:
        return lo_s, lo_t
    hi_s, hi_t = at(path.hi)
    if target.progress(hi_t) < target.goal:
        raise ScheduleError(f"target {target} is out of reach: with these bounds the method gets to at most "
                            f"{target.describe(hi_t)}")
    lo, hi = path.lo, path.hi
    for _ in range(200):
        if (hi - lo <= 1) if path.integer else (hi - lo <= 1e-12 * max(1.0, abs(hi))):
            break
        mid = (lo + hi) // 2 if path.integer else (lo + hi) / 2
        mid_s, mid_t = at(mid)
        if target.progress(mid_t) >= target.goal:
            hi, hi_s, hi_t = mid, mid_s, mid_t
        else:
            lo, lo_s, lo_t = mid, mid_s, mid_t
    if abs(target.progress(lo_t) - target.goal) < abs(target.progress(hi_t) - target.goal):
        return lo_s, lo_t
    return hi_s, hi_t


def allocate(method: str, layers: list[Layer], target: Target, *, granularity: str = "unstructured",
             criterion: str = "magnitude", bounds: Bounds | None = None, accountant: Accountant | None = None,
             weights: Mapping[str, torch.Tensor] | None = None, profile: SensitivityProfile | None = None,
             metric: str | None = None, allocatable: list[str] | None = None,
             scores: Mapping[str, torch.Tensor] | None = None, owl: Owl | None = None) -> Schedule:
    """A ``Schedule`` that meets ``target`` with ``method`` (see the module docstring).

    ``layers`` are all prunable layers (the totals cover them all); ``allocatable`` limits which ones the
    method may prune (default: all, or for ``sensitivity`` the layers the profile measured; a coupled group only
    when all its layers may be pruned). ``global`` and ``lamp`` need ``weights`` (layer name -> weight tensor);
    ``sensitivity`` needs ``profile``; ``owl`` needs the layers' Wanda ``scores`` (``wanda_scores``) and takes its
    parameters from ``owl``. For channel pruning pass the model's ``accountant`` (``Accountant.from_model``) so
    that coupled layers get one value.

    Example::

        >>> from analysis import Target, allocate, find_layers, load_workload
        >>> workload = load_workload("sample:digits-mlp", "sample:digits")
        >>> layers = find_layers(workload.model, workload.data.x[:1])
        >>> allocate("erk", layers, Target("sparsity", 0.8)).meta["totals"]["global_sparsity"] > 0.79
        True
    """
    if method not in METHODS:
        raise ScheduleError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    gran = parse_granularity(granularity)
    bounds = bounds or Bounds()
    bounds.check(layers)
    accountant = accountant or Accountant(layers)
    if gran.fixed_sparsity is not None and method != "sensitivity":
        raise ScheduleError(f"granularity {gran} prunes each layer exactly {gran.fixed_sparsity:g} or not at all; only "
                            "the sensitivity method chooses which layers (use --method sensitivity)")
    if method == "sensitivity" and profile is None:
        raise ScheduleError("the sensitivity method needs a sensitivity profile (a scan)")
    if gran.coupled and method in ("global", "lamp"):
        raise ScheduleError(f"the {method} method ranks single weights or channels; {gran} are allocated with "
                            "uniform, erk, owl or sensitivity")
    if allocatable is None and method == "sensitivity":
        allocatable = profile.layers
    allowed = set(allocatable) if allocatable is not None else {l.name for l in layers}
    slots_ = slots(layers, gran, accountant)
    caps = {s.name: _slot_cap(s, gran, bounds, allowed) for s in slots_}
    if method == "uniform":
        path = _uniform(slots_, caps)
    elif method in ("global", "lamp"):
        if weights is None:
            raise ScheduleError(f"the {method} method needs the model's weights")
        path = _threshold(slots_, caps, gran, weights, method)
    elif method == "erk":
        path = _erk(slots_, caps)
    elif method == "owl":
        if scores is None:
            raise ScheduleError("the owl method needs the layers' Wanda scores: the model and its eval data")
        path = _owl(slots_, layers, caps, scores, owl or Owl())
    else:
        path = _sensitivity(slots_, caps, gran, profile, metric, target)
    sparsities, t = _solve(path, slots_, accountant, str(gran), target)
    meta = {"method": method, "target": {"kind": target.kind, "value": target.value}, "totals": t.to_dict()}
    if method == "sensitivity":
        meta["metric"] = metric or profile.default_metric
    if method == "owl":
        owl = owl or Owl()
        meta["owl"] = {"lambda": owl.lam, "m": owl.m, "outlier_ratios": outlier_ratios(layers, scores, owl.m)}
    ordered = {l.name: float(sparsities[l.name]) for l in layers if sparsities.get(l.name, 0.0) > 0}
    return Schedule(ordered, criterion, str(gran), meta)


def _slot_cap(slot: Slot, gran: Granularity, bounds: Bounds, allowed: set[str]) -> float:
    """The largest sparsity a slot may take: the tightest bound of its layers, 0 unless all may be pruned."""
    if any(l.name not in allowed for l in slot.members):
        return 0.0
    if slot.group is None:
        return bounds.limit(slot.members[0], gran)
    return min(bounds.cap(l.name, slot.units) for l in slot.members)


# ------------------------------------------------------------------------------------------ from a scan


_SUFFIXES = {"k": 1e3, "m": 1e6, "g": 1e9}


def parse_target(kind: str, text: str | float, total: int) -> Target:
    """A target from what a user types: a sparsity in [0, 1); a count (``120000``, ``1.5M``) or a percentage
    of the total (``30%``) of parameters or FLOPs to keep."""
    if kind == "sparsity":
        try:
            return Target(kind, float(text))
        except (TypeError, ValueError):
            raise ValueError(f"target sparsity {text!r} is not a number in [0, 1)") from None
    raw = str(text).strip().lower()
    scale = 1.0
    try:
        if raw.endswith("%"):
            value = float(raw[:-1]) / 100.0 * total
        else:
            if raw and raw[-1] in _SUFFIXES:
                raw, scale = raw[:-1], _SUFFIXES[raw[-1]]
            value = float(raw) * scale
    except ValueError:
        raise ValueError(f"target {kind} {text!r} is not a count (such as 120000 or 1.5M) or a percentage "
                         "(such as 30%)") from None
    if not math.isfinite(value) or value < 0 or value > total:
        raise ValueError(f"target {kind} {text!r} is outside 0 to {total} (the model's prunable {kind})")
    return Target(kind, value)


@dataclass
class ScheduleSetting:
    """What allocation needs about a scanned model: the profile, the layers, the weights (``global`` and ``lamp``
    rank them) and an accountant (channel pruning: the channel graph and the channels' order)."""

    profile: SensitivityProfile
    layers: list[Layer]
    accountant: Accountant
    weights: dict[str, torch.Tensor] | None
    model: nn.Module | None = None
    data: EvalData | None = None
    _scores: dict[str, torch.Tensor] | None = None

    def wanda(self) -> dict[str, torch.Tensor] | None:
        """The layers' Wanda scores (``wanda_scores``, for ``owl``), computed once; ``None`` without the model and
        its data."""
        if self._scores is None and self.model is not None and self.data is not None:
            samples = (self.profile.meta.get("config") or {}).get("calib_samples", 256)
            self._scores = wanda_scores(self.model, self.layers, self.data, samples)
        return self._scores


def needs_model(profile: SensitivityProfile, methods: Sequence[str] = ("sensitivity",)) -> bool:
    """Whether allocating ``methods`` for ``profile`` needs the model itself (its weights or its channel graph),
    not only the layer list the profile records."""
    gran = parse_granularity(profile.meta.get("granularity", "unstructured"))
    return gran.structured or any(m in ("global", "lamp", "owl") for m in methods)


def needs_data(profile: SensitivityProfile, methods: Sequence[str] = ()) -> bool:
    """Whether allocation needs the eval data: the channel order of a structured scan with a data-aware
    criterion, or OWL's Wanda scores."""
    gran = parse_granularity(profile.meta.get("granularity", "unstructured"))
    return "owl" in methods or gran.structured and profile.meta.get("criterion", "magnitude") in criteria.CALIBRATED


def schedule_setting(profile: SensitivityProfile, model: nn.Module | None = None,
                     data: EvalData | None = None) -> ScheduleSetting:
    """The setting of ``profile``: from its recorded layers alone, or, given the scanned ``model`` (and its eval
    ``data`` where ``needs_data``), with the model's weights and channel graph, ranked with the scan's criterion,
    calibration size and seed.

    Example::

        >>> from analysis import ScanConfig, load_workload, scan, schedule_setting
        >>> profile = scan(load_workload("sample:digits-mlp", "sample:digits"), ScanConfig(sparsities=(0.5, 0.9)))
        >>> setting = schedule_setting(profile)
        >>> [layer.name for layer in setting.layers], setting.accountant.weights
        (['fc1', 'fc2', 'fc3'], 17024)
    """
    meta = profile.meta
    if model is None:
        layers = [Layer.from_meta(d) for d in meta.get("layers", [])]
        if not layers:
            raise ScheduleError("the scan lists no layers")
        return ScheduleSetting(profile, layers, Accountant(layers), None)
    shape = meta.get("input_shape")
    if not shape:
        raise ScheduleError("the scan does not record its input shape; it cannot trace the model")
    example = data.x[:1] if data is not None else torch.zeros(
        1, *shape, dtype=torch.int64 if meta.get("input_dtype") == "int64" else torch.float32)
    layers = schedule_layers(model, example, meta.get("granularity", "unstructured"), profile.layers)
    criterion, config = meta.get("criterion", "magnitude"), meta.get("config") or {}
    stats = None
    if needs_data(profile):
        if data is None:
            raise ScheduleError(f"the {criterion} criterion ranks channels on the eval data; it is needed too")
        stats = criteria.calibration_stats(model, layers, data, criterion, config.get("calib_samples", 256))
    accountant = Accountant.from_model(model, example, layers, criterion, meta.get("granularity", "unstructured"),
                                       stats, config.get("seed", 0))
    weights = {l.name: l.weight(model).detach() for l in layers}
    return ScheduleSetting(profile, layers, accountant, weights, model, data)


def schedule_for(setting: ScheduleSetting, method: str, target: Target, bounds: Bounds | None = None,
                 metric: str | None = None, owl: Owl | None = None) -> Schedule:
    """The schedule ``method`` makes for ``target`` on a scanned model; it inherits the scan's criterion and
    granularity, and (``sensitivity``) prunes only the layers the scan measured.

    Example::

        >>> from analysis import ScanConfig, Target, load_workload, scan, schedule_for, schedule_setting
        >>> profile = scan(load_workload("sample:digits-mlp", "sample:digits"), ScanConfig(sparsities=(0.5, 0.9)))
        >>> schedule = schedule_for(schedule_setting(profile), "uniform", Target("sparsity", 0.5))
        >>> schedule.sparsities
        {'fc1': 0.5, 'fc2': 0.5, 'fc3': 0.5}
    """
    meta = setting.profile.meta
    schedule = allocate(method, setting.layers, target, granularity=meta.get("granularity", "unstructured"),
                        criterion=meta.get("criterion", "magnitude"), bounds=bounds, accountant=setting.accountant,
                        weights=setting.weights, profile=setting.profile, metric=metric,
                        allocatable=setting.profile.layers if method == "sensitivity" else None,
                        scores=setting.wanda() if method == "owl" else None, owl=owl)
    schedule.meta.update({"model": meta.get("model"), "data": meta.get("data")})
    return schedule
