"""The reference engine: for every sparsity, prune the layer in place, run the whole model over the shard, restore."""

from __future__ import annotations

import time

import torch

from analysis.core import batchnorm, masks
from analysis.core.layers import Layer
from analysis.core.metrics import Sums, class_scores, evaluate, sums_from_logits
from analysis.sensitivity.context import LayerResult, ScanContext, kept_fraction
from analysis.sensitivity.device import arithmetic


def run_layer_naive(ctx: ScanContext, layer: Layer, shard: tuple[int, int] | None = None,
                    sparsities: tuple[float, ...] | None = None) -> LayerResult:
    """Prune ``layer`` alone at each sparsity (default: the config's), run the whole model over the shard, restore.

    With ``bn_recalibrate`` the BatchNorm statistics are re-estimated on the first ``bn_batches`` batches of
    the eval inputs (the whole set, not the shard, so shards add up) before measuring, and put back after.
    When the dense outputs are too large to keep, each batch's are computed once before its pruned runs.
    """
    start_t = time.perf_counter()
    lo, hi = shard or (0, len(ctx.x))
    sparsities = ctx.config.sparsities if sparsities is None else tuple(sparsities)
    layer_masks = ctx.masks_for(layer, sparsities)
    if ctx.dense_logits is None and not ctx.config.bn_recalibrate:
        sums = _batch_by_batch(ctx, layer, (lo, hi), sparsities, layer_masks)
    else:
        sums = [_one_sparsity(ctx, layer, (lo, hi), s, m) for s, m in zip(sparsities, layer_masks)]
    rows = [{"sparsity": s, "actual_sparsity": 1.0 - kept_fraction(m), **part.to_dict()}
            for s, m, part in zip(sparsities, layer_masks, sums)]
    return LayerResult(layer.name, (lo, hi), rows, time.perf_counter() - start_t)


def _one_sparsity(ctx: ScanContext, layer: Layer, shard: tuple[int, int], sparsity: float,
                  mask: torch.Tensor) -> Sums:
    """One sparsity over the whole shard, against the kept dense outputs."""
    lo, hi = shard
    x, y, dense = ctx.x[lo:hi], ctx.labels(lo, hi), ctx.dense(lo, hi)
    if sparsity == 0.0:
        return sums_from_logits(dense, dense, y, ctx.task)
    with masks.applied(ctx.model, layer.masks(mask)), batchnorm.preserved(ctx.model), \
            arithmetic(ctx.config.precision, ctx.device):
        if ctx.config.bn_recalibrate:
            batchnorm.recalibrate(ctx.model, ctx.recalibration_inputs(), ctx.config.bn_batches, ctx.config.batch_size,
                                  ctx.device)
        return evaluate(ctx.model, x, y, dense, ctx.config.batch_size, ctx.device, ctx.task)


def _batch_by_batch(ctx: ScanContext, layer: Layer, shard: tuple[int, int], sparsities: tuple[float, ...],
                    layer_masks: list[torch.Tensor]) -> list[Sums]:
    """Every sparsity, batch after batch: each batch's dense outputs computed once, then its pruned runs."""
    lo, hi = shard
    totals = [Sums(labelled=ctx.y is not None) for _ in sparsities]
    for start in range(lo, hi, ctx.config.batch_size):
        stop = min(start + ctx.config.batch_size, hi)
        xb, yb, dense = ctx.x[start:stop].to(ctx.device), ctx.labels(start, stop), ctx.dense(start, stop)
        for i, (sparsity, mask) in enumerate(zip(sparsities, layer_masks)):
            if sparsity == 0.0:
                totals[i] = totals[i] + sums_from_logits(dense, dense, yb, ctx.task)
                continue
            with masks.applied(ctx.model, layer.masks(mask)), arithmetic(ctx.config.precision, ctx.device), \
                    torch.inference_mode():
                out = class_scores(ctx.model(xb))
            totals[i] = totals[i] + sums_from_logits(out, dense, yb, ctx.task)
    return totals
