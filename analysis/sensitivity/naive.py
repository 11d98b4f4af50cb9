"""The reference engine: for every sparsity, prune the layer in place, run the whole model over the shard, restore."""

from __future__ import annotations

import time

from analysis.core import batchnorm, masks
from analysis.core.layers import Layer
from analysis.core.metrics import evaluate, sums_from_logits
from analysis.sensitivity.context import LayerResult, ScanContext, kept_fraction
from analysis.sensitivity.device import arithmetic


def run_layer_naive(ctx: ScanContext, layer: Layer, shard: tuple[int, int] | None = None,
                    sparsities: tuple[float, ...] | None = None) -> LayerResult:
    """Prune ``layer`` alone at each sparsity (default: the config's), run the whole model over the shard, restore.

    With ``bn_recalibrate`` the BatchNorm statistics are re-estimated on the first ``bn_batches`` batches of
    the eval inputs (the whole set, not the shard, so shards add up) before measuring, and put back after.
    """
    start_t = time.perf_counter()
    lo, hi = shard or (0, len(ctx.x))
    x, y, dense = ctx.x[lo:hi], ctx.labels(lo, hi), ctx.dense_logits[lo:hi]
    rows = []
    sparsities = ctx.config.sparsities if sparsities is None else tuple(sparsities)
    for sparsity, mask in zip(sparsities, ctx.masks_for(layer, sparsities)):
        if sparsity == 0.0:
            sums = sums_from_logits(dense, dense, y)
        else:
            with masks.applied(ctx.model, {layer.param_name: mask}), batchnorm.preserved(ctx.model), \
                    arithmetic(ctx.config.precision, ctx.device):
                if ctx.config.bn_recalibrate:
                    batchnorm.recalibrate(ctx.model, ctx.recalibration_inputs(), ctx.config.bn_batches,
                                          ctx.config.batch_size, ctx.device)
                sums = evaluate(ctx.model, x, y, dense, ctx.config.batch_size, ctx.device)
        rows.append({"sparsity": sparsity, "actual_sparsity": 1.0 - kept_fraction(mask), **sums.to_dict()})
    return LayerResult(layer.name, (lo, hi), rows, time.perf_counter() - start_t)
