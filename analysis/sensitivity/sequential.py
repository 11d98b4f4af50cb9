"""Sequential scans: a cell stops consuming samples once its answer is known.

The eval set is consumed in shards of ``shard_size`` samples, in a fixed order seeded by the config's seed
(``context.sequenced``: a permutation independent of the model, so every prefix is a random sample of the set
even when the set is stored sorted by class). After each shard every open cell is asked the question the user
set: is its drop of ``adaptive_metric`` within ``tolerance``? The test is a confidence sequence
(``core.intervals.decide``), valid however often it looks: over all looks, a cell's settled answer is wrong with
probability at most ``1 - confidence`` (the population drop is the target; the eval set is a sample of it). A
settled cell takes no more samples: the next shard runs only the open cells' masks (the fast engine leaves the
settled ones out of its downstream batch). A cell near the threshold never settles and uses the whole set; its
sums are then the full grid's (the same samples, in another order) and its answer is the full grid's.

Each row is a cell's sums over the samples it used (``n``), with ``measured`` and ``settled_early`` (it stopped
before the whole set). A settled cell's point estimate always agrees with its answer (the sequence contains it),
so ``tolerance_table`` over a sequential profile reads the answers; its intervals are the confidence sequences
(``SensitivityProfile.with_confidence``), the fixed-sample ones being too narrow after stopping early.

Two modes (``adaptive.runner`` picks them): ``sequential`` measures every cell of the config's sparsities this
way; ``sequential-bisect`` is bisection (``adaptive.search``) whose probe cells are measured this way.
"""

from __future__ import annotations

import numpy as np

from analysis.core.intervals import SUM_NAMES, decide, error_bars
from analysis.core.layers import Layer
from analysis.core.metric_table import drop
from analysis.core.metrics import Sums
from analysis.core.profile import EARLY
from analysis.sensitivity.context import LayerResult, ScanContext, decision_metric, dense_row, whole_set
from analysis.sensitivity.engines import ENGINES


def shards(total: int, size: int) -> list[tuple[int, int]]:
    """The looks of a sequential scan: ``[0, size), [size, 2 size), ...`` over ``total`` samples."""
    return [(lo, min(lo + size, total)) for lo in range(0, total, size)]


def _columns(sums: dict[float, Sums], cells: tuple[float, ...]) -> dict[str, np.ndarray]:
    return {name: np.array([getattr(sums[s], name) for s in cells], dtype=float) for name in SUM_NAMES}


def measure(ctx: ScanContext, layer: Layer,
            sparsities: tuple[float, ...]) -> tuple[dict[float, dict], dict[float, bool], float]:
    """``layer``'s cells at ``sparsities``, each sampled shard by shard until it settles: the rows by sparsity,
    whether each passes (its drop is within the tolerance: the settled answer, else the whole set's) and the
    seconds spent."""
    config, run, total = ctx.config, ENGINES[ctx.config.engine], len(ctx.x)
    metric = decision_metric(ctx)
    test = error_bars(metric).drop
    sums = {s: Sums(labelled=ctx.y is not None) for s in sparsities}
    verdict, actual, seconds = {s: "open" for s in sparsities}, {}, 0.0
    for lo, hi in shards(total, config.shard_size):
        todo = tuple(s for s in sparsities if verdict[s] == "open")
        if not todo:
            break
        result = run(ctx, layer, (lo, hi), todo)
        seconds += result.seconds
        for row in result.rows:
            sums[row["sparsity"]] += Sums.from_dict(row)
            actual[row["sparsity"]] = row["actual_sparsity"]
        if hi < total:
            verdict.update(zip(todo, decide(test, _columns(sums, todo), config.tolerance, config.confidence, total)))
    base = float(ctx.baseline().metrics()[metric])
    rows = {s: {"sparsity": s, "actual_sparsity": actual[s], **sums[s].to_dict(), "measured": True,
                EARLY: sums[s].n < total} for s in sparsities}
    passes = {s: verdict[s] == "within" if verdict[s] != "open"
              else drop(metric, base, float(sums[s].metrics()[metric])) <= config.tolerance + 1e-12
              for s in sparsities}
    return rows, passes, seconds


def run_layer_sequential(ctx: ScanContext, layer: Layer, shard: tuple[int, int] | None = None) -> LayerResult:
    """Every pruned sparsity of the config as a sequential cell; the dense cell (it costs nothing) first."""
    whole_set(ctx, layer, shard)
    rows, _, seconds = measure(ctx, layer, tuple(s for s in ctx.config.sparsities if s > 0))
    return LayerResult(layer.name, (0, len(ctx.x)), [{**dense_row(ctx, layer), EARLY: False},
                                                      *(rows[s] for s in sorted(rows))], seconds)


__all__ = ["measure", "run_layer_sequential", "shards"]
