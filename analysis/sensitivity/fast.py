"""The fast engine: the naive engine's numbers, running per sparsity only the part of the model downstream of
the layer (the graph analysis lives in ``fxgraph.py``; with BatchNorm recalibration, ``bnscan.py``)."""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field

import torch
from torch import fx
from torch.utils._pytree import tree_flatten, tree_unflatten

from analysis.core.layers import Layer
from analysis.core.metrics import OUTPUT_BATCH_BYTES, Sums, class_scores, sums_from_logits, sums_per_variant
from analysis.sensitivity import fxgraph
from analysis.sensitivity.config import ScanConfig
from analysis.sensitivity.context import LayerResult, ScanContext, kept_fraction
from analysis.sensitivity.device import arithmetic


@dataclass
class FastState:
    """What the fast engine keeps between layers: the traced graph, each layer's cut, and the dense frontier of
    every eval chunk (the values the last layer that ran on the chunk read downstream), from which the next
    frontier is computed without running the prefix again. Chunks are keyed by their sample range, so a
    sequential scan, which runs a layer on some shards only, keeps every chunk's newest frontier."""

    gm: fx.GraphModule | None
    chunk: int
    frontier: dict[tuple[int, int], dict] = field(default_factory=dict)
    cuts: dict[str, fxgraph.Split] = field(default_factory=dict)
    peak_cache_bytes: int = 0
    bn: object | None = None  # bnscan.RecalState: the recalibrating engine's frontiers


MIN_CHUNK = 32


def chunk_size(config: ScanConfig, sample_bytes: int = 0) -> int:
    """Eval samples per chunk: the S pruned variants of a chunk run as one batch of about ``batch_size``, but
    never fewer than ``MIN_CHUNK`` samples: below that, the per-chunk work (the layer run once per mask, the
    graph walked once per chunk) dominates. On resnet18 (3x64x64, 9 sparsities, 2 CPU threads) chunks of 15
    gave 1.8x over the naive engine and chunks of 32 gave 2.2x. Outputs of ``sample_bytes`` a sample (a language
    model's scores over its vocabulary at every position) bound it further: all variants of a chunk together
    stay within ``OUTPUT_BATCH_BYTES``."""
    if config.chunk_size:
        return config.chunk_size
    pruned = sum(1 for s in config.sparsities if s > 0)
    chunk = max(MIN_CHUNK, -(-config.batch_size // max(1, pruned)))
    return min(chunk, max(1, OUTPUT_BATCH_BYTES // max(1, sample_bytes * (pruned + 1))))


def run_plain(ctx: ScanContext, state: FastState, layer: Layer, shard: tuple[int, int] | None = None,
              sparsities: tuple[float, ...] | None = None) -> LayerResult:
    """The naive engine's numbers without its repeated work, on a traced model (``state.gm``).

    Per eval chunk: advance the dense frontier (the values the layer's downstream part reads) from the last
    layer's frontier; run the layer once per distinct pruned mask on its dense input; then run the downstream
    part once for all masks together, the masks folded into the batch (``variant_logits``). Masks that
    remove nothing give the dense sums without running anything.
    """
    start_t = time.perf_counter()
    lo, hi = shard or (0, len(ctx.x))
    if layer.name not in state.cuts:
        state.cuts[layer.name] = fxgraph.split(state.gm, layer.param_names)
    cut = state.cuts[layer.name]
    sparsities = ctx.config.sparsities if sparsities is None else tuple(sparsities)
    layer_masks = ctx.masks_for(layer, sparsities)
    variants, slot = distinct_masks(layer_masks, [bool(m.all()) for m in layer_masks])
    labelled, kept = ctx.y is not None, ctx.dense_logits is not None
    totals = [Sums(labelled=labelled) for _ in variants]
    dense_sums = Sums(labelled=labelled)
    # Dense outputs too large to keep come from one more variant, the layer's own weight, run with the others.
    weights = pruned_weights(ctx, layer, variants) + ([] if kept or not variants else [dense_weights(ctx, layer)])
    with arithmetic(ctx.config.precision, ctx.device):
        for start in range(lo, hi, state.chunk):
            stop = min(start + state.chunk, hi)
            front = advance(state.gm, cut.frontier, state.frontier, (start, stop), ctx.x[start:stop].to(ctx.device))
            y = ctx.labels(start, stop)
            if not variants or not cut.reaches_output:
                dense = None if kept else ctx.dense(start, stop)
            else:
                logits = variant_logits(ctx, state.gm, cut, front, layer, weights, stop - start)
                dense = ctx.dense(start, stop) if kept else logits[-1]
                logits = logits if kept else logits[:-1]
                totals = [t + part for t, part in zip(totals, sums_per_variant(logits, dense, y, ctx.task))]
            if not kept:
                dense_sums = dense_sums + sums_from_logits(dense, dense, y, ctx.task)
    state.peak_cache_bytes = max(state.peak_cache_bytes, frontier_bytes(list(state.frontier.values())))
    if kept:
        dense_sums = sums_from_logits(ctx.dense_logits[lo:hi], ctx.dense_logits[lo:hi], ctx.labels(lo, hi), ctx.task)
    rows = []
    for sparsity, mask, v in zip(sparsities, layer_masks, slot):
        sums = dense_sums if v is None or not cut.reaches_output else totals[v]
        rows.append({"sparsity": sparsity, "actual_sparsity": 1.0 - kept_fraction(mask), **sums.to_dict()})
    return LayerResult(layer.name, (lo, hi), rows, time.perf_counter() - start_t)


def advance(gm: fx.GraphModule, targets: list[fx.Node], cache: dict[tuple[int, int], dict], span: tuple[int, int],
            x: torch.Tensor, inference: bool = True) -> dict:
    """The dense values of ``targets`` on the chunk ``span`` (inputs ``x``), from what ``cache`` holds for it (an
    earlier layer's frontier), kept in ``cache`` for the next layer. ``inference=False`` runs under ``no_grad``
    instead of inference mode (BatchNorms in training mode update their statistics)."""
    with torch.inference_mode() if inference else torch.no_grad():
        cache[span] = fxgraph.evaluate(gm, targets, cache.get(span, {}), (x,))
    return cache[span]


def distinct_masks(layer_masks: list[torch.Tensor], dense: list[bool]) -> tuple[list[torch.Tensor], list[int | None]]:
    """The masks to run, each once, and for every input mask its index among them (``None`` where ``dense``
    says the cell is the dense model's and needs no run). Two sparsities that round to one mask share a run."""
    variants: list[torch.Tensor] = []
    slot: list[int | None] = []
    for mask, is_dense in zip(layer_masks, dense):
        if is_dense:
            slot.append(None)
            continue
        same = next((i for i, v in enumerate(variants) if torch.equal(v, mask)), None)
        if same is None:
            variants.append(mask)
            same = len(variants) - 1
        slot.append(same)
    return variants, slot


def pruned_weights(ctx: ScanContext, layer: Layer, variants: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
    """``layer``'s weights (by parameter name) with each mask applied (new tensors; the model keeps its own)."""
    dense = dense_weights(ctx, layer)
    return [{n: dense[n].masked_fill(~m.to(dense[n].device), 0) for n, m in layer.masks(mask).items()}
            for mask in variants]


def dense_weights(ctx: ScanContext, layer: Layer) -> dict[str, torch.Tensor]:
    """``layer``'s weights as the model holds them, by parameter name."""
    params = dict(ctx.model.named_parameters())
    return {n: params[n].detach() for n in layer.param_names}


def variant_logits(ctx: ScanContext, gm: fx.GraphModule, cut: fxgraph.Split, front: dict, layer: Layer,
                    weights: list[dict[str, torch.Tensor]], batch: int | None = None) -> torch.Tensor:
    """Logits (variants, chunk, classes) of the models with ``layer``'s weights replaced by each of ``weights``
    (its pruned variants, by parameter name), from the dense frontier of one chunk.

    The layer runs once per mask; the part after it runs once for all masks, their outputs stacked into one
    batch: folded into the batch dimension where that is provably the same computation (``_fold``, about 20%
    faster on mobilenet_v3_small), else under ``torch.func.vmap``. ``batch`` is the chunk's sample count (else
    read off the roots' outputs).
    """
    if not cut.roots_read_dense:
        return torch.stack([run_with_weight(gm, cut.downstream, front, layer, w) for w in weights])
    per_variant = [run_with_weight(gm, cut.roots, front, layer, w, keep=cut.roots) for w in weights]
    flat = [tree_flatten(outs) for outs in per_variant]
    spec = flat[0][1]
    columns = list(zip(*(f for f, _ in flat)))
    roots = set(cut.roots)
    rest = [n for n in cut.downstream if n not in roots]
    folded = _fold(gm, cut, rest, front, columns, spec, batch)
    if folded is not None:
        return folded
    if ctx.config.precision == "bf16":
        # bf16 autocast and vmap do not mix (batch-norm batching rules reject the mixed dtypes): one run per mask.
        return torch.stack([run_with_weight(gm, cut.downstream, front, layer, w) for w in weights])
    stacked = [torch.stack(col) if isinstance(col[0], torch.Tensor) else col[0] for col in columns]
    in_dims = [0 if isinstance(v, torch.Tensor) else None for v in stacked]
    output = cut.downstream[-1]

    def run_rest(leaves: list) -> torch.Tensor:
        env = dict(front)
        env.update(zip(cut.roots, tree_unflatten(leaves, spec)))
        fxgraph.run(gm, rest, env, keep={output})
        return class_scores(env[output])

    with torch.inference_mode(), warnings.catch_warnings():
        # Ops without a batching rule (e.g. the fused attention of nn.MultiheadAttention) run once per variant:
        # slower, still exact; the warning says nothing the user can act on.
        warnings.filterwarnings("ignore", message="There is a performance drop")
        return torch.func.vmap(run_rest, in_dims=(in_dims,))(stacked)


def _fold(gm: fx.GraphModule, cut: fxgraph.Split, rest: list[fx.Node], front: dict, columns: list[tuple],
          spec: object, batch: int | None = None) -> torch.Tensor | None:
    """The downstream part run once on the variants concatenated along the batch dimension, or ``None`` when
    that might not be the same computation as running them one by one.

    Folding is safe when every value the part reads that depends on the input is a tensor whose first
    dimension is the chunk's batch (those are repeated once per variant) and every root output is such a
    tensor too. A batch size read from a dense value (``n = x.shape[0]`` before the layer), or a value laid
    out with the batch elsewhere, would be wrong for the folded batch: those cuts use ``vmap``. A root output
    whose rows are the samples' positions in sample order (``fxgraph.rows_by_sample``: a transformers ``Conv1D``
    reads ``x.view(-1, features)``) is folded as well, and so is the batch size the program reads
    (``fxgraph.is_batch_size``), multiplied by the variants.
    """
    if not rest:
        return None
    n_variants = len(columns[0])
    if batch is None:
        batch = next((col[0].shape[0] for col in columns if isinstance(col[0], torch.Tensor) and col[0].dim()), None)
    if batch is None:
        return None
    by_sample = [fxgraph.rows_by_sample(gm, root) for root in cut.roots] if len(columns) == len(cut.roots) else []
    data = fxgraph.input_dependent(gm)
    read = {a for n in rest for a in n.all_input_nodes}  # values only the roots read need no folding
    env: dict = {}
    for node in (n for n in cut.frontier if n in read):
        value = front[node]
        if node not in data:
            env[node] = value
        elif isinstance(value, torch.Tensor) and value.dim() and value.shape[0] == batch:
            env[node] = value.unsqueeze(0).expand(n_variants, *value.shape).reshape(-1, *value.shape[1:])
        elif fxgraph.is_batch_size(node) and value == batch:
            env[node] = value * n_variants  # the folded batch's size, as a traced program reads it
        else:
            return None
    leaves = []
    for i, col in enumerate(columns):
        rows = col[0].shape[0] if isinstance(col[0], torch.Tensor) and col[0].dim() else None
        if col[0] is None:
            leaves.append(None)
        elif rows == batch or (rows and rows % batch == 0 and i < len(by_sample) and by_sample[i]):
            leaves.append(torch.cat(col))
        else:
            return None
    env.update(zip(cut.roots, tree_unflatten(leaves, spec)))
    output = cut.downstream[-1]
    with torch.inference_mode():
        fxgraph.run(gm, rest, env, keep={output})
        logits = class_scores(env[output])
    if logits.dim() < 1 or logits.shape[0] != n_variants * batch:
        return None
    return logits.reshape(n_variants, batch, *logits.shape[1:])


def run_with_weight(gm: fx.GraphModule, nodes: list, front: dict, layer: Layer, weight: dict[str, torch.Tensor],
                    keep: list | None = None) -> object:
    """Run ``nodes`` with ``layer``'s weights replaced by ``weight`` (by parameter name): the logits, or the values
    of ``keep``."""
    env, params = fxgraph.with_params(gm, front, weight)
    with torch.inference_mode():
        fxgraph.run(gm, nodes, env, keep=set(keep or nodes[-1:]), params=params)
    return [env[n] for n in keep] if keep else class_scores(env[nodes[-1]])


def frontier_bytes(frontiers: list[dict]) -> int:
    """Bytes held by cached dense values (each tensor once; parameters, which the model holds anyway, not counted)."""
    seen = {}
    for chunk in frontiers:
        for node, value in chunk.items():
            if node.op != "get_attr":
                for t in tree_flatten(value)[0]:
                    if isinstance(t, torch.Tensor):
                        seen[id(t)] = t.nbytes
    return sum(seen.values())
