"""Adaptive scans: measure fewer (layer, sparsity) cells than the full grid, for big models.

Two modes, each a per-layer function with an engine's signature, so ``sensitivity.scan``, the run store (one
row per finished layer: an adaptive scan resumes layer by layer), the CLI and the dashboard run them unchanged:

- ``collapse`` walks the config's sparsities in ascending order, ``points_per_call`` of them per engine call
  (the fast engine runs the sparsities of one call as one batch), and stops once the layer has *collapsed*:
  its metric (accuracy with labels, else agreement) has fallen at least ``collapse_at`` of the way from the
  dense value to chance (1 / number of classes)::

      collapsed  <=>  metric <= chance + (1 - collapse_at) * (dense - chance)

  With the default 0.9 a layer stops within a tenth of the dense-to-chance range above chance. The sparsities
  left are filled with the last measured cell's numbers and flagged ``measured = False``: the profile keeps
  the full grid, so plots, allocation, prediction and the store work unchanged, and users see which cells
  are guesses. If the metric keeps falling after the collapse (it usually does), a filled cell is optimistic
  by at most the distance left to the metric's floor; ``benchmarks/bench_adaptive.py`` measures that error.

- ``bisect`` finds, per layer, the largest sparsity on the grid ``resolution, 2 * resolution, ... < 1``
  whose drop of ``adaptive_metric`` stays within ``tolerance``, by k-section: each engine call measures
  ``points_per_call`` sparsities spread over the open bracket (largest sparsity known to pass, smallest known
  to fail), and the bracket shrinks to the stretch between the first failing point and the last passing one
  below it. The answer is exactly ``sensitivity.tolerance_table`` over the measured points (a layer is as
  tolerant as its first failing sparsity, nothing after it counts). If the drop never decreases as sparsity
  grows (monotone), it also equals ``tolerance_table`` over the full grid; where the curve is not monotone,
  the search may find a passing sparsity above a failing one the grid would have measured below it.

Adaptive decisions need the metric over the whole eval set, so an adaptive layer is one unit over the whole
set: it cannot be cut into eval shards (and so does not run on the Ray backend, which shards the data).
"""

from __future__ import annotations

import time

import pandas as pd

from analysis.core.layers import Layer
from analysis.core.metric_table import chance_level, check_metric, default_metric, drop
from analysis.core.metrics import Sums
from analysis.core.profile import SensitivityProfile, tolerance_table
from analysis.sensitivity.config import PARAMETERS
from analysis.sensitivity.context import LayerResult, ScanContext, kept_fraction
from analysis.sensitivity.engines import ENGINES, EngineFn


def decision_metric(ctx: ScanContext) -> str:
    """The metric that drives the search: the configured one, else accuracy with labels, else agreement."""
    labelled = ctx.y is not None
    return check_metric(ctx.config.adaptive_metric or default_metric(labelled, ctx.task), labelled, ctx.task)


def describe(ctx: ScanContext) -> dict | None:
    """The mode and its parameters as ``scan.json`` records them (``None`` for a full scan)."""
    config = ctx.config
    if config.adaptive == "off":
        return None
    params = {f: getattr(config, f) for f in PARAMETERS[config.adaptive]}
    return {"mode": config.adaptive, **params, "adaptive_metric": decision_metric(ctx)}


def runner(ctx: ScanContext) -> EngineFn:
    """The per-layer function of the context's scan: an engine, or an adaptive mode over that engine."""
    mode = ctx.config.adaptive
    if mode == "off":
        return ENGINES[ctx.config.engine]
    decision_metric(ctx)
    return run_layer_collapse if mode == "collapse" else run_layer_bisect


# --------------------------------------------------------------------------------------------- the modes


def _whole_set(ctx: ScanContext, layer: Layer, shard: tuple[int, int] | None) -> None:
    if shard is not None and tuple(shard) != (0, len(ctx.x)):
        raise ValueError(f"an adaptive scan decides on the whole eval set; layer {layer.name} cannot run on the "
                         f"shard {list(shard)} alone")


def _value(row: dict, metric: str) -> float:
    return float(Sums.from_dict(row).metrics()[metric])


def _drop(row: dict, metric: str, base: float) -> float:
    value = _value(row, metric)
    return drop(metric, base, value)


def collapse_floor(ctx: ScanContext, metric: str) -> float:
    """The metric value at or below which a layer counts as collapsed (see the module docstring)."""
    chance = chance_level(ctx.num_classes)
    dense = float(ctx.baseline().metrics()[metric])
    return chance + (1.0 - ctx.config.collapse_at) * (dense - chance)


def run_layer_collapse(ctx: ScanContext, layer: Layer, shard: tuple[int, int] | None = None) -> LayerResult:
    """The config's sparsities in ascending groups until the layer collapses; the rest filled, not measured."""
    _whole_set(ctx, layer, shard)
    run = ENGINES[ctx.config.engine]
    metric = decision_metric(ctx)
    floor = collapse_floor(ctx, metric)
    grid = list(ctx.config.sparsities)
    step = ctx.config.points_per_call
    rows: list[dict] = []
    seconds, i = 0.0, 0
    while i < len(grid):
        size = step + 1 if i == 0 and grid[0] == 0.0 else step  # the dense cell costs nothing: it rides along
        result = run(ctx, layer, None, tuple(grid[i:i + size]))
        seconds += result.seconds
        rows += [{**row, "measured": True} for row in result.rows]
        i += size
        if any(row["sparsity"] > 0 and _value(row, metric) <= floor for row in result.rows):
            break
    t0 = time.perf_counter()
    rest = grid[i:]
    last = rows[-1]
    for sparsity, mask in zip(rest, ctx.masks_for(layer, rest)):
        rows.append({**last, "sparsity": sparsity, "actual_sparsity": 1.0 - kept_fraction(mask), "measured": False})
    return LayerResult(layer.name, (0, len(ctx.x)), rows, seconds + time.perf_counter() - t0)


def section_points(lo: int, hi: int, k: int) -> list[int]:
    """``k`` grid indices spread evenly strictly inside ``(lo, hi)``, or all of them when there are no more."""
    if hi - lo - 1 <= k:
        return list(range(lo + 1, hi))
    return [lo + round(j * (hi - lo) / (k + 1)) for j in range(1, k + 1)]


def run_layer_bisect(ctx: ScanContext, layer: Layer, shard: tuple[int, int] | None = None) -> LayerResult:
    """The largest grid sparsity within ``tolerance`` by k-section; the rows are the points measured."""
    _whole_set(ctx, layer, shard)
    run = ENGINES[ctx.config.engine]
    metric = decision_metric(ctx)
    base = float(ctx.baseline().metrics()[metric])
    grid = ctx.config.sparsities  # grid[i] = i * resolution, grid[0] = 0
    limit = ctx.config.tolerance + 1e-12  # tolerance_table's comparison
    lo, hi = 0, len(grid)  # grid[lo] passes; grid[hi] fails (hi == len(grid): nothing failed yet)
    measured: dict[float, dict] = {}
    seconds = 0.0
    while hi - lo > 1:
        picks = section_points(lo, hi, ctx.config.points_per_call)
        ask = tuple(grid[i] for i in picks)
        result = run(ctx, layer, None, ask if measured else (0.0, *ask))
        seconds += result.seconds
        by_sparsity = {row["sparsity"]: row for row in result.rows}
        measured.update((s, {**row, "measured": True}) for s, row in by_sparsity.items())
        failing = [i for i in picks if _drop(by_sparsity[grid[i]], metric, base) > limit]
        if failing:
            hi = failing[0]
        lo = max([lo, *(i for i in picks if i < hi)])
    rows = [measured[s] for s in sorted(measured)]
    return LayerResult(layer.name, (0, len(ctx.x)), rows, seconds)


# ---------------------------------------------------------------------------------------------- results


def mode_of(profile: SensitivityProfile) -> str:
    return (profile.meta.get("adaptive") or {}).get("mode", "off")


def measured_cells(profile: SensitivityProfile) -> dict[str, int]:
    """Cells measured and filled in, over all layers (a full scan measures every cell)."""
    table = profile.table
    flags = table["measured"].astype(bool) if "measured" in table else pd.Series(True, index=table.index)
    return {"cells": len(table), "measured": int(flags.sum()), "filled": int((~flags).sum())}


def bisect_table(profile: SensitivityProfile) -> pd.DataFrame:
    """The tolerance table of a bisection scan: per layer the largest tolerable sparsity found, the drop there,
    the first failing sparsity (empty if none up to the grid's top) and the pruned sparsities evaluated."""
    info = profile.meta.get("adaptive") or {}
    if info.get("mode") != "bisect":
        raise ValueError("this profile is not a bisection scan (scan with --adaptive bisect)")
    metric, tolerance = info["adaptive_metric"], float(info["tolerance"])
    ranked = tolerance_table(profile, tolerance, metric)
    drops = profile.drop(metric)
    rows = []
    for entry in ranked.itertuples(index=False):
        cells = drops[drops["layer"] == entry.layer].sort_values("sparsity")
        at = cells[cells["sparsity"] == entry.max_sparsity].iloc[0]
        above = cells[(cells["sparsity"] > entry.max_sparsity) & (cells["drop"] > tolerance + 1e-12)]
        rows.append({
            "layer": entry.layer,
            "type": entry.type,
            "params": entry.params,
            "max_sparsity": entry.max_sparsity,
            "drop": float(at["drop"]),
            metric: float(at[metric]),
            "first_failing": float(above["sparsity"].iloc[0]) if len(above) else float("nan"),
            "evaluations": int((cells["sparsity"] > 0).sum()),
        })
    out = pd.DataFrame(rows)
    out.attrs.update(metric=metric, tolerance=tolerance, resolution=float(info["resolution"]))
    return out
