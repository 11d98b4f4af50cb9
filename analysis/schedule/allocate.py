"""Allocation: per-layer sparsities that reach a global target (sparsity, parameters kept or FLOPs kept).

Every method is a path: one knob that, turned up, prunes every layer at least as much as before, from dense
to every layer at its bound. A bisection on the knob then finds the schedule whose totals (counted by an
``Accountant``, so channel pruning also removes the next layers' inputs) meet the target. Each layer's
sparsity is a whole number of weights (or channels), so the target is met to within one weight (or one
channel) per layer.

- ``uniform``: the same sparsity everywhere.
- ``global``: one magnitude threshold over all layers (per channel: the mean |w| of the channel).
- ``lamp``: one threshold on LAMP scores, ``w_u**2 / sum of w_v**2 over the weights v of the layer at least
  as large`` (Lee et al. 2021, "Layer-adaptive sparsity for the magnitude-based pruning").
- ``erk``: Erdos-Renyi-Kernel densities, ``density ~ (sum of the weight's dimensions) / (their product)``
  (Evci et al. 2020, "Rigging the lottery").
- ``sensitivity``: the smallest total predicted drop (sum of the layers' measured drops, curves made
  monotone) for the target: layers are pruned along the lower convex hull of their curves, cheapest drop per
  removed weight (or FLOP) first. A tiny penalty on ``s**2`` spreads pruning evenly where the curves are flat.
- ``owl``: outlier-weighted layerwise sparsity (Yin et al. 2024, "Outlier Weighed Layerwise Sparsity", as in
  their code, github.com/luuyin/OWL). Per block (a transformer block, a CNN stage, else the layer), the outlier
  ratio ``D`` is the percentage of the block's Wanda scores ``|W| x ||X||`` (all its layers pooled, on the dense
  model and the calibration samples) above ``m`` times their mean; ``D`` is scaled to ``[0, 2 lambda]`` and each
  block's sparsity is the knob minus its scaled ratio's deviation from the mean: blocks with more outliers get
  less sparsity, the spread between blocks is ``2 lambda``, and equal ratios give uniform sparsity.

``Bounds`` (a maximum per layer, layers kept dense) are honoured by every method.
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
from analysis.schedule.predict import layer_curves
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
        if layer.name in self.keep_dense or supports(granularity, layer.shape):
            return 0.0
        units = _units(layer, granularity)
        cap = (units - 1) / units
        for bound in (self.max_sparsity, self.per_layer.get(layer.name)):
            if bound is not None:
                cap = min(cap, math.floor(bound * units + 1e-9) / units)
        return cap


def _units(layer: Layer, granularity: Granularity) -> int:
    return granularity.units(layer.shape)


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
    """sparsities(u) for u in [lo, hi], non-decreasing in u; ``integer`` paths take whole u only."""

    fn: Callable[[float], dict[str, float]]
    lo: float
    hi: float
    integer: bool = False


def _uniform(layers: list[Layer], caps: dict[str, float], gran: Granularity) -> _Path:
    def fn(u: float) -> dict[str, float]:
        return {l.name: _grid(min(u, caps[l.name]), _units(l, gran)) for l in layers if caps[l.name] > 0}

    return _Path(fn, 0.0, 1.0)


def _unit_scores(layer: Layer, weight: torch.Tensor, gran: Granularity, method: str) -> np.ndarray:
    """Scores of a layer's pruning units (weights or channels), for one global threshold."""
    w = weight.detach().float().cpu()
    if gran.structured:
        sq = (w * w).reshape(w.shape[0], -1)
        base = sq.sum(dim=1) if method == "lamp" else w.abs().reshape(w.shape[0], -1).mean(dim=1)
    else:
        base = (w * w).reshape(-1) if method == "lamp" else w.abs().reshape(-1)
    base = base.double().numpy()
    if method != "lamp":
        return np.sort(base, kind="stable")
    ordered = np.sort(base, kind="stable")
    suffix = np.cumsum(ordered[::-1])[::-1]
    return ordered / np.maximum(suffix, 1e-300)


def _threshold(layers: list[Layer], caps: dict[str, float], gran: Granularity,
               weights: Mapping[str, torch.Tensor], method: str) -> _Path:
    """Remove the k lowest-scoring units over all layers (each layer only down to its cap)."""
    names, scores, owner = [], [], []
    for i, layer in enumerate(layers):
        cap_units = round(caps[layer.name] * _units(layer, gran))
        if cap_units <= 0:
            continue
        if layer.name not in weights:
            raise ScheduleError(f"the {method} method needs the weights of layer {layer.name}")
        s = _unit_scores(layer, weights[layer.name], gran, method)[:cap_units]
        names.append(layer)
        scores.append(s)
        owner.append(np.full(len(s), len(names) - 1))
    if not scores:
        return _Path(lambda u: {}, 0, 0, integer=True)
    all_scores, all_owner = np.concatenate(scores), np.concatenate(owner)
    order = np.argsort(all_scores, kind="stable")
    # Rank of each unit in the global order, per layer: how many of a layer's units the first k remove.
    positions = [np.sort(np.nonzero(all_owner[order] == j)[0]) for j in range(len(names))]

    def fn(u: float) -> dict[str, float]:
        k = int(u)
        out = {}
        for layer, pos in zip(names, positions):
            n = int(np.searchsorted(pos, k))
            if n:
                out[layer.name] = n / _units(layer, gran)
        return out

    return _Path(fn, 0, len(all_scores), integer=True)


def _erk(layers: list[Layer], caps: dict[str, float], gran: Granularity) -> _Path:
    raw = {l.name: sum(l.shape) / math.prod(l.shape) for l in layers}
    active = [l for l in layers if caps[l.name] > 0]
    if not active:
        return _Path(lambda u: {}, 0.0, 0.0)

    def fn(u: float) -> dict[str, float]:
        eps = math.exp(-u)
        return {l.name: _grid(min(caps[l.name], max(0.0, 1.0 - eps * raw[l.name])), _units(l, gran))
                for l in active}

    values = [raw[l.name] for l in active]
    return _Path(fn, math.log(min(values)), math.log(max(values)) + 40.0)


def _owl(layers: list[Layer], caps: dict[str, float], gran: Granularity, scores: Mapping[str, torch.Tensor],
         owl: Owl) -> _Path:
    """Every block at the knob minus its OWL offset (``owl_offsets``), each layer within its cap."""
    missing = [l.name for l in layers if caps[l.name] > 0 and l.name not in scores]
    if missing:
        raise ScheduleError(f"the owl method needs the Wanda scores of layer {missing[0]} (model and data)")
    offsets = owl_offsets(outlier_ratios(layers, scores, owl.m), owl.lam)
    shift = {l.name: offsets.get(block_of(l.name) or l.name, 0.0) for l in layers}

    def fn(u: float) -> dict[str, float]:
        return {l.name: _grid(min(caps[l.name], max(0.0, u - shift[l.name])), _units(l, gran))
                for l in layers if caps[l.name] > 0}

    return _Path(fn, min(shift.values(), default=0.0), 1.0 + max(shift.values(), default=0.0))


def _sensitivity(layers: list[Layer], caps: dict[str, float], gran: Granularity,
                 profile: SensitivityProfile, metric: str | None, target: Target) -> _Path:
    """Hull segments of every layer's (cost, drop) curve, taken in order of drop per unit of cost."""
    curves = layer_curves(profile, metric)
    total_w = sum(l.params for l in layers)
    scale = max((float(c.monotone.max()) for c in curves.values()), default=0.0) or 1.0
    penalty = FLAT_PENALTY * scale
    seg_layer, seg_from, seg_to, seg_slope = [], [], [], []
    for i, layer in enumerate(layers):
        curve = curves.get(layer.name)
        cap = min(caps[layer.name], curve.max_sparsity) if curve is not None else 0.0
        if cap <= 0:
            continue
        cost = layer.flops if target.kind == "flops" else layer.params
        fixed = gran.fixed_sparsity
        if fixed is not None:
            s = np.array([0.0, fixed]) if cap >= fixed - 1e-9 else np.array([0.0])
        else:
            s = np.union1d(np.linspace(0.0, cap, 51), curve.sparsity[curve.sparsity <= cap])
        d = np.interp(s, curve.sparsity, curve.monotone)
        d = d + penalty * s * s * layer.params / total_w
        for a, b in _lower_hull(s * cost, d):
            seg_layer.append(i)
            seg_from.append(s[a])
            seg_to.append(s[b])
            seg_slope.append((d[b] - d[a]) / max((s[b] - s[a]) * cost, 1e-300))
    if not seg_layer:
        return _Path(lambda u: {}, 0.0, 0.0)
    order = np.lexsort((np.asarray(seg_from), np.asarray(seg_slope)))
    seg_layer = np.asarray(seg_layer)[order]
    seg_from, seg_to = np.asarray(seg_from)[order], np.asarray(seg_to)[order]

    def fn(u: float) -> dict[str, float]:
        j = min(int(u), len(seg_layer))
        frac = u - j
        s = {}
        for k in range(j):
            s[seg_layer[k]] = seg_to[k]
        if j < len(seg_layer) and frac > 0 and gran.fixed_sparsity is None:
            s[seg_layer[j]] = seg_from[j] + frac * (seg_to[j] - seg_from[j])
        return {layers[i].name: _grid(v, _units(layers[i], gran)) for i, v in s.items() if v > 0}

    return _Path(fn, 0.0, float(len(seg_layer)), integer=gran.fixed_sparsity is not None)


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


def _solve(path: _Path, accountant: Accountant, gran: str, target: Target) -> tuple[dict[str, float], Totals]:
    """The point of ``path`` whose totals are closest to the target, by bisection on the knob."""

    def at(u: float) -> tuple[dict[str, float], Totals]:
        s = path.fn(u)
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
    method may prune (default: all, or for ``sensitivity`` the layers the profile measured). ``global`` and
    ``lamp`` need ``weights`` (layer name -> weight tensor); ``sensitivity`` needs ``profile``; ``owl`` needs the
    layers' Wanda ``scores`` (``wanda_scores``) and takes its parameters from ``owl``.

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
    caps = {l.name: bounds.limit(l, gran) if l.name in allowed else 0.0 for l in layers}
    if method == "uniform":
        path = _uniform(layers, caps, gran)
    elif method in ("global", "lamp"):
        if weights is None:
            raise ScheduleError(f"the {method} method needs the model's weights")
        path = _threshold(layers, caps, gran, weights, method)
    elif method == "erk":
        path = _erk(layers, caps, gran)
    elif method == "owl":
        if scores is None:
            raise ScheduleError("the owl method needs the layers' Wanda scores: the model and its eval data")
        path = _owl(layers, caps, gran, scores, owl or Owl())
    else:
        path = _sensitivity(layers, caps, gran, profile, metric, target)
    sparsities, t = _solve(path, accountant, str(gran), target)
    meta = {"method": method, "target": {"kind": target.kind, "value": target.value}, "totals": t.to_dict()}
    if method == "sensitivity":
        meta["metric"] = metric or profile.default_metric
    if method == "owl":
        owl = owl or Owl()
        meta["owl"] = {"lambda": owl.lam, "m": owl.m, "outlier_ratios": outlier_ratios(layers, scores, owl.m)}
    ordered = {l.name: float(sparsities[l.name]) for l in layers if sparsities.get(l.name, 0.0) > 0}
    return Schedule(ordered, criterion, str(gran), meta)


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
