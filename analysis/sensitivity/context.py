"""What a scan needs prepared once (``ScanContext``: the model, the data, the dense outputs, the layers' scores)
and its unit of work's result (``LayerResult``: one layer's metric sums over one shard, summable over shards)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import torch
from torch import nn

from analysis.core import criteria, masks
from analysis.core.granularity import parse_granularity, supports
from analysis.core.layers import Layer, find_layers, select_layers
from analysis.core.metric_table import CLASSIFICATION, check_metric, default_metric
from analysis.core.metrics import Sums, batch_for, class_scores, dense_pass
from analysis.sensitivity.config import ScanConfig
from analysis.sensitivity.device import arithmetic, check_device
from analysis.workload.workload import Workload


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
    """What every unit of a scan shares: the model, the data, the dense outputs and the layers' scores.

    ``dense_logits`` are the dense model's outputs on ``x``, or ``None`` when they are too large to keep (a
    language model's next-token scores): ``dense`` then computes a span's outputs when an engine asks."""

    model: nn.Module
    x: torch.Tensor
    y: torch.Tensor | None
    dense_logits: torch.Tensor | None
    layers: list[Layer]
    skipped: dict[str, str]
    config: ScanConfig
    stats: criteria.CalibrationStats
    device: torch.device
    notices: list[str] = field(default_factory=list)
    bn_x: torch.Tensor | None = None  # the eval inputs in their own order, where a sequential scan reordered ``x``
    _maker: "tuple[str, masks.MaskMaker] | None" = None
    _masks: dict[tuple[str, float], torch.Tensor] = field(default_factory=dict)
    fast: object | None = None  # the fast engine's state (``engines.fast_state``), made on first use
    task: str = CLASSIFICATION
    base: Sums | None = None  # the dense model's sums against itself over the whole eval set
    num_classes: int = 0
    sample_bytes: int = 0  # one sample's outputs, float32

    def masks_for(self, layer: Layer, sparsities: "tuple[float, ...] | None" = None) -> list[torch.Tensor]:
        """Keep-masks of ``layer`` at ``sparsities`` (default: the config's).

        Scores, their sort and the masks are kept for the layer asked for last only (a scan asks layer after
        layer; an adaptive scan asks one layer several times): a whole model's worth would cost more memory
        than the model itself.
        """
        wanted = list(self.config.sparsities if sparsities is None else sparsities)
        if self._maker is None or self._maker[0] != layer.name:
            maker = masks.maker_for(layer, self.model, self.config.criterion, self.config.granularity, self.stats,
                                    self.config.seed)
            self._maker, self._masks = (layer.name, maker), {}
        maker = self._maker[1]
        for s in wanted:
            if (layer.name, s) not in self._masks:
                self._masks[(layer.name, s)] = maker(s)
        return [self._masks[(layer.name, s)] for s in wanted]

    def labels(self, start: int, stop: int) -> torch.Tensor | None:
        """The labels of samples ``start:stop`` (``None`` without labels), to go with ``x[start:stop]``."""
        return None if self.y is None else self.y[start:stop]

    def dense(self, start: int, stop: int) -> torch.Tensor:
        """The dense outputs of samples ``start:stop``: the kept ones, else computed now (so an engine asks while
        the model is dense: never inside ``masks.applied``)."""
        if self.dense_logits is not None:
            return self.dense_logits[start:stop]
        with torch.inference_mode():
            return class_scores(self.model(self.x[start:stop].to(self.device))).float()

    def baseline(self) -> Sums:
        return self.base

    def recalibration_inputs(self) -> torch.Tensor:
        """The inputs BatchNorm recalibration reads: the eval set in its own order, so that a sequential scan
        (whose ``x`` is reordered) recalibrates on the batches a full scan does."""
        return self.x if self.bn_x is None else self.bn_x


def prepare(workload: Workload, config: ScanConfig) -> ScanContext:
    """Validate the config against the model, find its layers, and compute the dense outputs and scores.

    Example::

        >>> from analysis import ScanConfig, load_workload, prepare
        >>> ctx = prepare(load_workload("sample:digits-mlp", "sample:digits"), ScanConfig(sparsities=(0.5,)))
        >>> [layer.name for layer in ctx.layers], ctx.config.sparsities
        (['fc1', 'fc2', 'fc3'], (0.0, 0.5))
    """
    config = config.validated()
    device = check_device(config.device)
    model = workload.model.to(device).eval()
    x, y = workload.data.x, workload.data.y
    unsupported: dict[str, str] = {}
    all_layers = find_layers(model, x[:1].to(device), unsupported, config.include_embeddings or bool(config.layers))
    if not all_layers:
        raise ValueError(f"{workload.model_spec} has no prunable layers (Conv, Linear or attention projections)"
                         + (f"; {', '.join(unsupported)}: {next(iter(unsupported.values()))}" if unsupported else ""))
    gran = parse_granularity(config.granularity)
    all_layers, uncoupled = gran.couple(all_layers, model)
    if gran.coupled and not all_layers:
        raise ValueError(f"{workload.model_spec} has no transformer blocks whose {gran.group} can be pruned by "
                         f"{gran}" + (f" ({next(iter(uncoupled.values()))})" if uncoupled else ""))
    unsupported.update(uncoupled)
    chosen = select_layers(all_layers, list(config.layers) if config.layers else None, unsupported)
    skipped = {l.name: reason for l in chosen if (reason := supports(gran, l.shape))}
    if config.layers and skipped:
        name, reason = next(iter(skipped.items()))
        raise ValueError(f"layer {name} cannot take granularity {gran}: {reason}")
    layers = [l for l in chosen if l.name not in skipped]
    if not config.layers:
        skipped.update(unsupported)
    sample_bytes = 4 * math.prod(workload.output_shape or (workload.num_classes,))
    notices = []
    if batch_for(sample_bytes, config.batch_size) < config.batch_size:
        batch = batch_for(sample_bytes, config.batch_size)
        notices.append(f"batches of {batch} samples instead of {config.batch_size}: one sample's outputs take "
                       f"{sample_bytes / 2**20:.1f} MB")
        config = replace(config, batch_size=batch)
    with arithmetic("exact", device):
        stats = criteria.calibration_stats(model, layers, workload.data, config.criterion, config.calib_samples,
                                           config.batch_size, device)
        dense, base = dense_pass(model, x, y, config.batch_size, device, workload.data.task)
    ctx = ScanContext(model, x, y, dense, layers, skipped, config, stats, device, notices, task=workload.data.task,
                      base=base, num_classes=workload.num_classes, sample_bytes=sample_bytes)
    return sequenced(ctx) if config.sequential else ctx


def sequenced(ctx: ScanContext) -> ScanContext:
    """``ctx`` with the eval set (inputs, labels, dense outputs) in the fixed order a sequential scan consumes it:
    a permutation seeded by the config's seed, independent of the model, so every prefix is a random sample of
    the set (its order on disk may be sorted by class). Scores and masks were made before, on the set as given."""
    order = torch.randperm(len(ctx.x), generator=torch.Generator().manual_seed(ctx.config.seed))
    return replace(ctx, x=ctx.x[order], y=None if ctx.y is None else ctx.y[order], bn_x=ctx.x,
                   dense_logits=None if ctx.dense_logits is None else ctx.dense_logits[order])


def kept_fraction(mask: torch.Tensor) -> float:
    return float(mask.float().mean())


def decision_metric(ctx: ScanContext) -> str:
    """The metric that drives an adaptive scan: the configured one, else the task's default (accuracy with
    labels, else agreement)."""
    labelled = ctx.y is not None
    return check_metric(ctx.config.adaptive_metric or default_metric(labelled, ctx.task), labelled, ctx.task)


def whole_set(ctx: ScanContext, layer: Layer, shard: tuple[int, int] | None) -> None:
    """Refuse a shard other than the whole eval set: an adaptive layer decides on all of it, so it is one unit."""
    if shard is not None and tuple(shard) != (0, len(ctx.x)):
        raise ValueError(f"an adaptive scan decides on the whole eval set; layer {layer.name} cannot run on the "
                         f"shard {list(shard)} alone")


def dense_row(ctx: ScanContext, layer: Layer) -> dict:
    """The dense cell of ``layer`` (sparsity 0) over the whole eval set, as an engine's row (flagged measured)."""
    mask = ctx.masks_for(layer, (0.0,))[0]
    return {"sparsity": 0.0, "actual_sparsity": 1.0 - kept_fraction(mask), **ctx.baseline().to_dict(),
            "measured": True}
