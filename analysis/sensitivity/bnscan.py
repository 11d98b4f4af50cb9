"""The fast engine under BatchNorm recalibration: the naive engine's numbers, the prefix run once per scan.

With ``bn_recalibrate`` the naive engine, per (layer, sparsity), prunes the layer, re-estimates every
BatchNorm's statistics on the first ``bn_batches`` batches of the whole eval set, and evaluates. A BatchNorm
upstream of the pruned layer sees only dense values, so its re-estimated statistics are those of the dense
model recalibrated on the same batches (``R``, computed once per scan), and everything upstream of the cut is
the same in every cell:

- the eval frontier: the dense values the layer's downstream part reads, every BatchNorm at ``R`` in eval
  mode (not the normal fast engine's frontier, which uses the model's own statistics);
- the calibration frontier: the same values on each calibration batch with the BatchNorms in training mode
  (batch statistics), as the recalibration passes compute them.

Both are advanced layer by layer like the normal frontier. Per distinct pruned mask only the downstream part
runs: its BatchNorms are reset and re-estimated on the calibration frontiers in order, then it runs on the
eval frontiers. A layer with no BatchNorm downstream needs no re-estimation: its masks run together on the
eval frontier, as in the normal fast engine. A mask that removes nothing still runs (it measures the
recalibrated dense model, not the dense one); sparsity 0 is the dense model, as in the naive engine.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import fx, nn

from analysis.core import batchnorm
from analysis.core.layers import Layer
from analysis.core.metrics import Sums, sums_from_logits, sums_per_variant
from analysis.sensitivity import fxgraph
from analysis.sensitivity.context import LayerResult, ScanContext, kept_fraction
from analysis.sensitivity.device import arithmetic
from analysis.sensitivity.fast import (
    FastState,
    advance,
    distinct_masks,
    frontier_bytes,
    pruned_weights,
    run_with_weight,
    variant_logits,
)
from analysis.sensitivity.naive import run_layer_naive

Stats = dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]


@dataclass
class RecalState:
    """What the recalibrating fast engine keeps between layers, apart from the normal engine's frontier: the
    recalibrated dense statistics ``R``, the calibration frontier per calibration batch, and the eval frontier
    (at ``R``) per chunk of ``chunk`` samples of the current shard. No variants share a batch here (each has
    its own statistics), so chunks are a whole batch. Both are keyed by sample range, like the normal frontier."""

    chunk: int
    stats: Stats | None = None
    calib: dict[tuple[int, int], dict] = field(default_factory=dict)
    frontier: dict[tuple[int, int], dict] = field(default_factory=dict)


def unsupported(gm: fx.GraphModule, model: nn.Module) -> str | None:
    """Why the traced ``model``'s BatchNorms cannot be followed node by node (``None`` when they can): every
    BatchNorm must run as a module node of its own, not inside another leaf module or as buffers read by
    functions (``F.batch_norm``)."""
    names = {n for n, _ in batchnorm.batchnorms(model)}
    for node in gm.graph.nodes:
        if node.op == "call_module" and node.target not in names:
            if any(n.startswith(node.target + ".") for n in names):
                return f"module {node.target} runs a BatchNorm inside it"
        elif node.op == "get_attr" and node.target.rpartition(".")[0] in names:
            return f"the graph reads {node.target} of a BatchNorm directly (a functional batch norm)"
    return None


def run_layer(ctx: ScanContext, state: FastState, layer: Layer, shard: tuple[int, int] | None = None,
              sparsities: tuple[float, ...] | None = None) -> LayerResult:
    """``run_layer_naive``'s numbers with ``bn_recalibrate``, running per mask only the layer's downstream part."""
    gm, recal = state.gm, state.bn
    if layer.name not in state.cuts:
        state.cuts[layer.name] = fxgraph.split(gm, layer.param_names)
    cut = state.cuts[layer.name]
    bns = {id(m): m for _, m in batchnorm.batchnorms(ctx.model)}
    down_bn = [n for n in cut.downstream if n.op == "call_module" and id(gm.get_submodule(n.target)) in bns]
    down_ids = {id(gm.get_submodule(n.target)) for n in down_bn}
    shared = any(n.op == "call_module" and n not in set(cut.downstream) and id(gm.get_submodule(n.target)) in down_ids
                 for n in gm.graph.nodes)
    if not cut.reaches_output or shared:
        # The output with every BatchNorm recalibrated is not a dense value kept here, and a BatchNorm called both
        # upstream and downstream mixes dense and pruned statistics: rare cases, measured the naive way.
        return run_layer_naive(ctx, layer, shard, sparsities)
    start_t = time.perf_counter()
    lo, hi = shard or (0, len(ctx.x))
    sparsities = ctx.config.sparsities if sparsities is None else tuple(sparsities)
    layer_masks = ctx.masks_for(layer, sparsities)
    variants, slot = distinct_masks(layer_masks, [s == 0.0 for s in sparsities])
    weights = pruned_weights(ctx, layer, variants)
    modules = [m for _, m in batchnorm.batchnorms(ctx.model)]
    labelled = ctx.y is not None
    totals = [Sums(labelled=labelled) for _ in variants]
    chunk = recal.chunk
    with batchnorm.preserved(ctx.model), _modes_kept(modules), arithmetic(ctx.config.precision, ctx.device):
        if recal.stats is None:
            recal.stats = _recalibrated_stats(ctx)
        _advance_calibration(ctx, gm, cut, recal, modules)
        _load(ctx.model, recal.stats)
        spans = [(start, min(start + chunk, hi)) for start in range(lo, hi, chunk)]
        fronts = [advance(gm, cut.frontier, recal.frontier, span, ctx.x[span[0]:span[1]].to(ctx.device))
                  for span in spans]
        if weights and not down_bn:
            for (start, stop), front in zip(spans, fronts):
                logits = variant_logits(ctx, gm, cut, front, layer, weights)
                parts = sums_per_variant(logits, ctx.dense_logits[start:stop], ctx.labels(start, stop))
                totals = [t + p for t, p in zip(totals, parts)]
        for v, weight in enumerate(weights if down_bn else []):
            _reestimate(gm, cut, down_bn, list(recal.calib.values()), layer, weight)
            for (start, stop), front in zip(spans, fronts):
                logits = run_with_weight(gm, cut.downstream, front, layer, weight)
                part = sums_from_logits(logits, ctx.dense_logits[start:stop], ctx.labels(start, stop))
                totals[v] = totals[v] + part
    state.peak_cache_bytes = max(state.peak_cache_bytes,
                                 frontier_bytes([*recal.calib.values(), *recal.frontier.values()]))
    dense_sums = sums_from_logits(ctx.dense_logits[lo:hi], ctx.dense_logits[lo:hi], ctx.labels(lo, hi))
    rows = []
    for sparsity, mask, v in zip(sparsities, layer_masks, slot):
        sums = dense_sums if v is None else totals[v]
        rows.append({"sparsity": sparsity, "actual_sparsity": 1.0 - kept_fraction(mask), **sums.to_dict()})
    return LayerResult(layer.name, (lo, hi), rows, time.perf_counter() - start_t)


def _recalibrated_stats(ctx: ScanContext) -> Stats:
    """The statistics of the dense model recalibrated as the naive engine does (the caller restores them)."""
    batchnorm.recalibrate(ctx.model, ctx.recalibration_inputs(), ctx.config.bn_batches, ctx.config.batch_size,
                          ctx.device)
    return {n: (m.running_mean.clone(), m.running_var.clone(), m.num_batches_tracked.clone())
            for n, m in batchnorm.batchnorms(ctx.model)}


def _load(model: nn.Module, stats: Stats) -> None:
    with torch.no_grad():
        for name, m in batchnorm.batchnorms(model):
            mean, var, count = stats[name]
            m.running_mean.copy_(mean)
            m.running_var.copy_(var)
            m.num_batches_tracked.copy_(count)


@contextmanager
def _modes_kept(modules: list[nn.Module]) -> Iterator[None]:
    """Put every BatchNorm's training flag and momentum back when the block ends (statistics: ``preserved``)."""
    saved = [(m, m.training, m.momentum) for m in modules]
    try:
        yield
    finally:
        for m, training, momentum in saved:
            m.train(training)
            m.momentum = momentum


def _advance_calibration(ctx: ScanContext, gm: fx.GraphModule, cut: fxgraph.Split, recal: RecalState,
                         modules: list[nn.Module]) -> None:
    """The cut's frontier on each calibration batch (the batches ``batchnorm.recalibrate`` runs), BatchNorms in
    training mode: they normalise with the batch's statistics, as in the recalibration passes."""
    size, inputs = ctx.config.batch_size, ctx.recalibration_inputs()
    starts = list(range(0, len(inputs), size))[: ctx.config.bn_batches]
    for m in modules:
        m.train()
    for start in starts:
        span = (start, min(start + size, len(inputs)))
        advance(gm, cut.frontier, recal.calib, span, inputs[span[0]:span[1]].to(ctx.device), inference=False)
    for m in modules:
        m.eval()


def _reestimate(gm: fx.GraphModule, cut: fxgraph.Split, down_bn: list[fx.Node], calib: list[dict], layer: Layer,
                weight: dict[str, torch.Tensor]) -> None:
    """Reset the downstream BatchNorms and re-estimate them (cumulative average) on the calibration frontiers
    with ``layer``'s weight replaced by ``weight``; they are left in eval mode. Only the nodes that feed a
    downstream BatchNorm run."""
    needed = set(down_bn)
    inside = set(cut.downstream)
    for node in reversed(cut.downstream):
        if node in needed:
            needed.update(a for a in node.all_input_nodes if a in inside)
    nodes = [n for n in cut.downstream if n in needed]
    modules = list({id(m): m for m in (gm.get_submodule(n.target) for n in down_bn)}.values())
    for m in modules:
        m.reset_running_stats()
        m.momentum = None
        m.train()
    with torch.no_grad():
        for front in calib:
            env, params = fxgraph.with_params(gm, front, weight)
            fxgraph.run(gm, nodes, env, keep=set(), params=params)
    for m in modules:
        m.eval()
