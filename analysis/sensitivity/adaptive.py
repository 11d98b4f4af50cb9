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

- ``sequential`` and ``sequential-bisect`` (``sequential.py``): every cell of the grid, or bisection's probe
  cells, sampled shard by shard until a confidence sequence settles whether its drop is within ``tolerance``.

Adaptive decisions need the metric over the whole eval set, so an adaptive layer is one unit over the whole
set: it cannot be cut into eval shards (and so does not run on the Ray backend, which shards the data).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pandas as pd

from analysis.core.layers import Layer
from analysis.core.metric_table import chance_level, drop
from analysis.core.metrics import Sums
from analysis.core.profile import EARLY, SensitivityProfile, tolerance_table
from analysis.sensitivity import sequential
from analysis.sensitivity.config import PARAMETERS, SEARCH_MODES
from analysis.sensitivity.context import (
    LayerResult,
    ScanContext,
    decision_metric,
    dense_row,
    kept_fraction,
    whole_set,
)
from analysis.sensitivity.engines import ENGINES, EngineFn

Probe = Callable[[tuple[float, ...]], tuple[dict[float, dict], dict[float, bool], float]]
"""Measures sparsities of one layer: their rows by sparsity, whether each passes the tolerance, seconds spent."""


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
    return RUNNERS[mode]


# --------------------------------------------------------------------------------------------- the modes


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
    whole_set(ctx, layer, shard)
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


def search(ctx: ScanContext, layer: Layer, probe: Probe) -> LayerResult:
    """The largest grid sparsity within ``tolerance`` by k-section, each call's points measured by ``probe``; the
    rows are the dense cell and the points measured."""
    grid = ctx.config.sparsities  # grid[i] = i * resolution, grid[0] = 0
    lo, hi = 0, len(grid)  # grid[lo] passes; grid[hi] fails (hi == len(grid): nothing failed yet)
    measured, seconds = {0.0: dense_row(ctx, layer)}, 0.0
    while hi - lo > 1:
        picks = section_points(lo, hi, ctx.config.points_per_call)
        rows, passes, spent = probe(tuple(grid[i] for i in picks))
        seconds += spent
        measured.update(rows)
        failing = [i for i in picks if not passes[grid[i]]]
        if failing:
            hi = failing[0]
        lo = max([lo, *(i for i in picks if i < hi)])
    return LayerResult(layer.name, (0, len(ctx.x)), [measured[s] for s in sorted(measured)], seconds)


def whole_set_probe(ctx: ScanContext, layer: Layer) -> Probe:
    """Points measured on the whole eval set, all in one engine call; a point passes when its drop is within the
    tolerance (``tolerance_table``'s comparison)."""
    run, metric = ENGINES[ctx.config.engine], decision_metric(ctx)
    base = float(ctx.baseline().metrics()[metric])

    def probe(ask: tuple[float, ...]) -> tuple[dict[float, dict], dict[float, bool], float]:
        result = run(ctx, layer, None, ask)
        rows = {row["sparsity"]: {**row, "measured": True} for row in result.rows}
        passes = {s: _drop(row, metric, base) <= ctx.config.tolerance + 1e-12 for s, row in rows.items()}
        return rows, passes, result.seconds

    return probe


def run_layer_bisect(ctx: ScanContext, layer: Layer, shard: tuple[int, int] | None = None) -> LayerResult:
    """The largest grid sparsity within ``tolerance`` by k-section on the whole eval set."""
    whole_set(ctx, layer, shard)
    return search(ctx, layer, whole_set_probe(ctx, layer))


def run_layer_sequential_bisect(ctx: ScanContext, layer: Layer, shard: tuple[int, int] | None = None) -> LayerResult:
    """Bisection whose probe cells are sampled shard by shard until each settles (``sequential.measure``)."""
    whole_set(ctx, layer, shard)
    result = search(ctx, layer, lambda ask: sequential.measure(ctx, layer, ask))
    result.rows[0][EARLY] = False
    return result


RUNNERS: dict[str, EngineFn] = {"collapse": run_layer_collapse, "bisect": run_layer_bisect,
                                "sequential": sequential.run_layer_sequential,
                                "sequential-bisect": run_layer_sequential_bisect}
"""The per-layer function of each adaptive mode (``config.MODES`` but ``off``, which is an engine)."""


# ---------------------------------------------------------------------------------------------- results


def mode_of(profile: SensitivityProfile) -> str:
    return (profile.meta.get("adaptive") or {}).get("mode", "off")


def measured_cells(profile: SensitivityProfile) -> dict[str, int]:
    """Cells measured and filled in, over all layers (a full scan measures every cell)."""
    table = profile.table
    flags = table["measured"].astype(bool) if "measured" in table else pd.Series(True, index=table.index)
    return {"cells": len(table), "measured": int(flags.sum()), "filled": int((~flags).sum())}


def bisect_table(profile: SensitivityProfile) -> pd.DataFrame:
    """The tolerance table of a bisection scan: per layer the largest tolerable sparsity found and its bounds at
    the profile's confidence (``tolerance_table``), the drop there and its interval, the first failing sparsity
    (empty if none up to the grid's top), the pruned sparsities evaluated and the samples they used."""
    info = profile.meta.get("adaptive") or {}
    if info.get("mode") not in SEARCH_MODES:
        raise ValueError("this profile is not a bisection scan (scan with --adaptive bisect or sequential-bisect)")
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
            "max_sparsity_lo": entry.max_sparsity_lo,
            "max_sparsity_hi": entry.max_sparsity_hi,
            "drop": float(at["drop"]),
            "drop_lo": float(at["drop_lo"]),
            "drop_hi": float(at["drop_hi"]),
            metric: float(at[metric]),
            "first_failing": float(above["sparsity"].iloc[0]) if len(above) else float("nan"),
            "evaluations": int((cells["sparsity"] > 0).sum()),
            "sample_evaluations": int(cells.loc[cells["sparsity"] > 0, "n"].sum()),
        })
    out = pd.DataFrame(rows)
    out.attrs.update(metric=metric, tolerance=tolerance, resolution=float(info["resolution"]))
    return out


def sample_evaluations(profile: SensitivityProfile) -> dict[str, float]:
    """What a scan spent: the pruned cells it measured, those settled early (sequential), its sample-evaluations
    (the samples every measured pruned cell used) and the full grid's over the same sparsities (every pruned
    sparsity of the grid, every layer finished, every sample), and the share saved."""
    table = profile.table
    measured = table["measured"].astype(bool) if "measured" in table else pd.Series(True, index=table.index)
    pruned = table[(table["sparsity"] > 0) & measured]
    grid = sum(1 for s in profile.meta.get("sparsities", []) if s > 0)
    full = len(profile.layers) * grid * int(profile.meta.get("samples", 0))
    used = int(pruned["n"].sum())
    return {"cells": len(pruned), "settled_early": int(pruned[EARLY].sum()) if EARLY in pruned else 0,
            "sample_evaluations": used, "full_grid": full, "saved": 1.0 - used / full if full else 0.0}


def side_by_side(profile: SensitivityProfile, full: SensitivityProfile, metric: str | None = None,
                 tolerance: float | None = None) -> pd.DataFrame:
    """A scan (sequential, bisection, ...) next to a full-grid scan of the same model and data, per layer: the
    tolerance answer of each (``tolerance_table``; default tolerance: the scan's), the scan's bounds on its
    answer at its confidence, whether the full grid's answer lies between them (``inside``), and what each
    spent. ``attrs`` hold the metric, the tolerance and both scans' ``sample_evaluations``.

    Example (a sequential scan next to the full grid it saves samples on)::

        >>> from analysis import ScanConfig, load_workload, scan, side_by_side
        >>> workload, grid = load_workload("sample:digits-mlp", "sample:digits"), (0.3, 0.6, 0.9)
        >>> full = scan(workload, ScanConfig(sparsities=grid))
        >>> quick = scan(workload, ScanConfig(sparsities=grid, adaptive="sequential", tolerance=0.02, shard_size=100))
        >>> table = side_by_side(quick, full)
        >>> list(table.columns)
        ['layer', 'max_sparsity', 'max_sparsity_lo', 'max_sparsity_hi', 'full_max_sparsity', 'inside', ...]
        >>> table.attrs["scan"]["sample_evaluations"] < table.attrs["full"]["sample_evaluations"]
        True
    """
    info = profile.meta.get("adaptive") or {}
    metric = metric or info.get("adaptive_metric") or profile.default_metric
    tolerance = float(info.get("tolerance", 0.01) if tolerance is None else tolerance)
    mine = tolerance_table(profile, tolerance, metric).set_index("layer")
    theirs = tolerance_table(full, tolerance, metric).set_index("layer")["max_sparsity"]
    table = profile.table[profile.table["sparsity"] > 0]
    out = mine[["max_sparsity", "max_sparsity_lo", "max_sparsity_hi"]].join(theirs.rename("full_max_sparsity"),
                                                                            how="inner")
    out["inside"] = (out["max_sparsity_lo"] <= out["full_max_sparsity"]) & \
        (out["full_max_sparsity"] <= out["max_sparsity_hi"])
    out["same"] = out["max_sparsity"] == out["full_max_sparsity"]
    out["cells"] = table.groupby("layer").size()
    out["sample_evaluations"] = table.groupby("layer")["n"].sum()
    out = out.reset_index()
    out.attrs.update(metric=metric, tolerance=tolerance, scan=sample_evaluations(profile),
                     full=sample_evaluations(full), confidence=profile.confidence)
    return out
