"""The engines by name: a function ``(context, layer, shard=None, sparsities=None) -> LayerResult`` each, and how a
scan ran (``engine_report``).

``naive`` is the reference; ``fast`` gives the same numbers while running only each layer's downstream part
(``fast.py``), with BatchNorm recalibration through ``bnscan.py``."""

from __future__ import annotations

import resource
from collections.abc import Callable

import torch
from torch import nn

from analysis.core import batchnorm
from analysis.core.layers import Layer
from analysis.sensitivity import bnscan, fxgraph
from analysis.sensitivity.context import LayerResult, ScanContext
from analysis.sensitivity.fast import FastState, chunk_size, run_plain
from analysis.sensitivity.naive import run_layer_naive
from analysis.workload.onnx import OnnxModel


def fast_state(ctx: ScanContext) -> FastState:
    """The context's fast-engine state, tracing the model on first use (``gm`` is ``None`` if it cannot).

    With ``bn_recalibrate`` on a model with BatchNorm, ``bn`` holds the recalibrating engine's own frontiers
    (``bnscan``); without BatchNorm recalibration changes nothing and the normal path runs."""
    if ctx.fast is None:
        gm, bn = None, None
        try:
            gm = fxgraph.trace(ctx.model, ctx.x[:2].to(ctx.device))
        except fxgraph.Untraceable as exc:
            if not _runs_outside_torch(ctx.model):
                ctx.notices.append(f"the fast engine cannot scan this model, using the naive engine: {exc}")
        if gm is not None and ctx.config.bn_recalibrate and batchnorm.has_batchnorm(ctx.model):
            reason = bnscan.unsupported(gm, ctx.model)
            if reason:
                ctx.notices.append(f"the fast engine cannot follow this model's BatchNorms through "
                                   f"recalibration, using the naive engine: {reason}")
                gm = None
            else:
                bn = bnscan.RecalState(chunk=ctx.config.chunk_size or ctx.config.batch_size)
        ctx.fast = FastState(gm, chunk_size(ctx.config, ctx.sample_bytes), bn=bn)
    return ctx.fast


def _runs_outside_torch(model: nn.Module) -> bool:
    """Whether ``model`` is an ONNX graph run by ONNX Runtime: there is no PyTorch graph for the fast engine to
    reuse, and saying that torch.fx cannot trace it is no news to the user."""
    return isinstance(model, OnnxModel)


def run_layer_fast(ctx: ScanContext, layer: Layer, shard: tuple[int, int] | None = None,
                   sparsities: tuple[float, ...] | None = None) -> LayerResult:
    """The naive engine's numbers without its repeated work (``fast.run_plain``). With ``bn_recalibrate`` (and
    BatchNorm in the model) ``bnscan.run_layer`` measures instead: the prefix reused, every mask's downstream
    BatchNorms re-estimated on their own. A model torch.fx cannot trace runs on the naive engine."""
    state = fast_state(ctx)
    if state.gm is None:
        return run_layer_naive(ctx, layer, shard, sparsities)
    if state.bn is not None:
        return bnscan.run_layer(ctx, state, layer, shard, sparsities)
    return run_plain(ctx, state, layer, shard, sparsities)


EngineFn = Callable[..., LayerResult]
"""``(context, layer, shard=None, sparsities=None) -> LayerResult``; sparsities default to the config's."""


ENGINES: dict[str, EngineFn] = {"fast": run_layer_fast, "naive": run_layer_naive}


def engine_report(ctx: ScanContext) -> dict:
    """How the scan ran: the engine asked for and the one used, notices, and peak memory."""
    state = ctx.fast
    used = "naive" if ctx.config.engine == "naive" or (state is not None and state.gm is None) else ctx.config.engine
    report = {"engine": ctx.config.engine, "used": used, "precision": ctx.config.precision, "notices": ctx.notices}
    if state is not None and state.gm is not None:
        report["traced_by"] = getattr(state.gm, "traced_by", "torch.fx")
        report["chunk_size"] = state.chunk if state.bn is None else state.bn.chunk
        if state.bn is not None:
            report["bn_recalibrate"] = "prefix reused: per mask only the downstream BatchNorms are re-estimated"
        report["peak_cache_mb"] = round(state.peak_cache_bytes / 2**20, 2)
    if ctx.device.type == "cuda":
        report["peak_device_mb"] = round(torch.cuda.max_memory_allocated(ctx.device) / 2**20, 1)
    report["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    return report
