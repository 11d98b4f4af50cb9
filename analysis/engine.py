"""The scan machinery: what a scan needs prepared once, and the engines that measure one layer.

A scan is a grid of (layer, sparsity) cells. The unit of work is one layer over one shard of the eval set:
it can be run by any process from the model, the data and the configuration alone, and its metric sums add
up exactly over shards. An engine is a function ``(context, layer, shard) -> LayerResult``.

``naive`` is the reference: for every sparsity it prunes the layer in place, runs the whole model over the
shard, and restores the weight. Faster engines must give the same numbers.
"""

from __future__ import annotations

import math
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import torch
from torch import nn

from analysis import batchnorm, criteria, masks
from analysis.layers import Layer, find_layers, select_layers
from analysis.metrics import Sums, evaluate, predict, sums_from_logits
from analysis.sources import Workload

DEFAULT_SPARSITIES = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


@dataclass(frozen=True)
class ScanConfig:
    """Everything that decides a scan's numbers (plus the device and engine, which must not change them)."""

    criterion: str = "magnitude"
    granularity: str = "unstructured"
    sparsities: tuple[float, ...] = DEFAULT_SPARSITIES
    layers: tuple[str, ...] | None = None
    batch_size: int = 128
    device: str = "cpu"
    engine: str = "naive"
    seed: int = 0
    calib_samples: int = 256
    bn_recalibrate: bool = False
    bn_batches: int = 8

    def validated(self) -> "ScanConfig":
        """A checked copy: known criterion, granularity and engine, sparsities in [0, 1), sorted, 0 first."""
        criteria.check_criterion(self.criterion)
        gran = masks.parse_granularity(self.granularity)
        if self.engine not in ENGINES:
            raise ValueError(f"unknown engine {self.engine!r}; choose one of {', '.join(ENGINES)}")
        if self.batch_size <= 0:
            raise ValueError(f"batch size must be positive, got {self.batch_size}")
        if self.bn_batches <= 0:
            raise ValueError(f"BatchNorm recalibration needs at least one batch, got bn_batches={self.bn_batches}")
        if not self.sparsities:
            raise ValueError("no sparsities to scan")
        values = sorted({masks.check_sparsity(s) for s in self.sparsities})
        if gran.kind == "nm":
            allowed = {0.0, gran.nm_sparsity}
            if tuple(values) == DEFAULT_SPARSITIES:
                values = [gran.nm_sparsity]
            bad = [s for s in values if not any(math.isclose(s, a) for a in allowed)]
            if bad:
                raise ValueError(f"granularity {gran} prunes exactly {gran.nm_sparsity:g} of each layer; "
                                 f"sparsity {bad[0]:g} is not possible with it")
            values = [gran.nm_sparsity if math.isclose(s, gran.nm_sparsity) else s for s in values]
        if values[0] != 0.0:
            values = [0.0, *values]
        check_device(self.device)
        return replace(self, granularity=str(gran), sparsities=tuple(values))


def check_device(device: str) -> torch.device:
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ValueError(f"unknown device {device!r}; use cpu or cuda") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for, but this machine has no usable CUDA GPU")
    return dev


@dataclass
class LayerResult:
    """One finished unit: the metric sums of one layer at every sparsity, over one shard."""

    layer: str
    shard: tuple[int, int]
    rows: list[dict]
    seconds: float

    def to_dict(self) -> dict:
        return {"layer": self.layer, "shard": list(self.shard), "rows": self.rows, "seconds": self.seconds}

    @classmethod
    def from_dict(cls, d: dict) -> "LayerResult":
        return cls(d["layer"], tuple(d["shard"]), d["rows"], d["seconds"])


def combine_shards(parts: list[LayerResult]) -> LayerResult:
    """One layer's results over adjacent shards of the eval set, summed into the result over their union.

    Counts add exactly; the float64 sums may differ from a one-shard run in the last bits only (another
    order of addition). The shards must belong to one layer, share the sparsities, and tile a range
    without gaps or overlaps; ``seconds`` is the total compute time.
    """
    if not parts:
        raise ValueError("no shard results to combine")
    parts = sorted(parts, key=lambda r: r.shard)
    layer = parts[0].layer
    for prev, part in zip(parts, parts[1:]):
        if part.layer != layer:
            raise ValueError(f"cannot combine results of layers {layer!r} and {part.layer!r}")
        if part.shard[0] != prev.shard[1]:
            raise ValueError(f"shards {list(prev.shard)} and {list(part.shard)} of layer {layer} do not tile "
                             "the eval set (a gap or an overlap)")
    sparsities = [row["sparsity"] for row in parts[0].rows]
    rows = [dict(row) for row in parts[0].rows]
    for part in parts[1:]:
        if [row["sparsity"] for row in part.rows] != sparsities:
            raise ValueError(f"shard {list(part.shard)} of layer {layer} has other sparsities than "
                             f"shard {list(parts[0].shard)}")
        for total, row in zip(rows, part.rows):
            total.update((Sums.from_dict(total) + Sums.from_dict(row)).to_dict())
    return LayerResult(layer, (parts[0].shard[0], parts[-1].shard[1]), rows, sum(p.seconds for p in parts))


@dataclass
class ScanContext:
    """What every unit of a scan shares: the model, the data, the dense outputs and the layers' scores."""

    model: nn.Module
    x: torch.Tensor
    y: torch.Tensor | None
    dense_logits: torch.Tensor
    layers: list[Layer]
    skipped: dict[str, str]
    config: ScanConfig
    stats: criteria.CalibrationStats
    device: torch.device
    _masks: dict[str, list[torch.Tensor]] = field(default_factory=dict)

    def masks_for(self, layer: Layer) -> list[torch.Tensor]:
        """Keep-masks of ``layer`` at each of the config's sparsities (computed once, then reused)."""
        if layer.name not in self._masks:
            weight = layer.weight(self.model)
            scores = criteria.importance(layer, weight, self.config.criterion, self.stats, self.config.seed)
            self._masks[layer.name] = masks.make_masks(scores, list(self.config.sparsities), self.config.granularity,
                                                       self.config.criterion)
        return self._masks[layer.name]

    def baseline(self) -> Sums:
        return sums_from_logits(self.dense_logits, self.dense_logits, self.y)


def prepare(workload: Workload, config: ScanConfig) -> ScanContext:
    """Validate the config against the model, find its layers, and compute the dense outputs and scores."""
    config = config.validated()
    device = check_device(config.device)
    model = workload.model.to(device).eval()
    x, y = workload.data.x, workload.data.y
    all_layers = find_layers(model, x[:1].to(device))
    if not all_layers:
        raise ValueError(f"{workload.model_spec} has no prunable layers (Conv, Linear or attention projections)")
    chosen = select_layers(all_layers, list(config.layers) if config.layers else None)
    gran = masks.parse_granularity(config.granularity)
    skipped = {l.name: reason for l in chosen if (reason := masks.supports(gran, l.shape))}
    if config.layers and skipped:
        name, reason = next(iter(skipped.items()))
        raise ValueError(f"layer {name} cannot take granularity {gran}: {reason}")
    layers = [l for l in chosen if l.name not in skipped]
    calib = min(len(x), config.calib_samples)
    stats = criteria.collect_stats(model, layers, x[:calib], None if y is None else y[:calib], config.criterion,
                                   config.batch_size, device)
    dense = predict(model, x, config.batch_size, device)
    return ScanContext(model, x, y, dense, layers, skipped, config, stats, device)


def kept_fraction(mask: torch.Tensor) -> float:
    return float(mask.float().mean())


def run_layer_naive(ctx: ScanContext, layer: Layer, shard: tuple[int, int] | None = None) -> LayerResult:
    """Prune ``layer`` alone at each sparsity, run the whole model over the shard, restore.

    With ``bn_recalibrate`` the BatchNorm statistics are re-estimated on the first ``bn_batches`` batches of
    the eval inputs (the whole set, not the shard, so shards add up) before measuring, and put back after.
    """
    start_t = time.perf_counter()
    lo, hi = shard or (0, len(ctx.x))
    x, y, dense = ctx.x[lo:hi], None if ctx.y is None else ctx.y[lo:hi], ctx.dense_logits[lo:hi]
    rows = []
    for sparsity, mask in zip(ctx.config.sparsities, ctx.masks_for(layer)):
        if sparsity == 0.0:
            sums = sums_from_logits(dense, dense, y)
        else:
            with masks.applied(ctx.model, {layer.param_name: mask}), batchnorm.preserved(ctx.model):
                if ctx.config.bn_recalibrate:
                    batchnorm.recalibrate(ctx.model, ctx.x, ctx.config.bn_batches, ctx.config.batch_size, ctx.device)
                sums = evaluate(ctx.model, x, y, dense, ctx.config.batch_size, ctx.device)
        rows.append({"sparsity": sparsity, "actual_sparsity": 1.0 - kept_fraction(mask), **sums.to_dict()})
    return LayerResult(layer.name, (lo, hi), rows, time.perf_counter() - start_t)


EngineFn = Callable[[ScanContext, Layer, "tuple[int, int] | None"], LayerResult]
ENGINES: dict[str, EngineFn] = {"naive": run_layer_naive}


def environment() -> dict[str, str]:
    """Versions and machine facts recorded with every result."""
    import analysis

    return {
        "prunescope": analysis.__version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "threads": str(torch.get_num_threads()),
    }
