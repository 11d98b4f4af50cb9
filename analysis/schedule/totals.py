"""What a schedule removes in all: global weight sparsity, parameters kept and FLOPs kept.

Counts cover the prunable weights (the convolution and matrix-multiplication weights that ``find_layers``
returns), not biases or BatchNorm parameters. FLOPs are those of the same layers on one sample.

- ``global_sparsity``: the fraction of those weights the masks set to zero.
- ``params_kept`` / ``flops_kept``: what is left once the pruned structure is cut out of the network. For
  unstructured and N:M masks that is simply the non-zero weights (sparse FLOPs scale with the density). For
  channel pruning, removing output channel ``c`` of a layer also removes the weights of the next layer(s)
  that read channel ``c`` (found by ``graph.trace_channels``); a channel fed by a residual sum goes only
  when every addend's channel is removed. So for channel pruning ``params_kept < 1 - global_sparsity``.

``Accountant`` is built once per model (layers, channel graph, channel ranking) and then answers
``totals(schedule)`` in well under a millisecond, so allocation can call it in a search loop and the
dashboard on every slider move.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from analysis.core import criteria
from analysis.core.granularity import Granularity, parse_granularity, supports
from analysis.core.layers import Layer
from analysis.schedule.channels import ChannelGraph, trace_channels


@dataclass
class Totals:
    """Counts over the prunable weights; ``fractions()`` gives the numbers ``evaluate`` prints."""

    weights: int
    weights_removed: int
    params_kept: int
    flops: int
    flops_kept: int
    per_layer: dict[str, dict] = field(default_factory=dict)

    @property
    def global_sparsity(self) -> float:
        return self.weights_removed / max(self.weights, 1)

    @property
    def params_kept_fraction(self) -> float:
        return self.params_kept / max(self.weights, 1)

    @property
    def flops_kept_fraction(self) -> float:
        return self.flops_kept / max(self.flops, 1)

    def fractions(self) -> dict[str, float]:
        return {"global_sparsity": self.global_sparsity, "params_kept": self.params_kept_fraction,
                "flops_kept": self.flops_kept_fraction}

    def to_dict(self) -> dict:
        return {**self.fractions(), "weights": self.weights, "weights_removed": self.weights_removed,
                "params_kept_count": self.params_kept, "flops": self.flops, "flops_kept_count": self.flops_kept}


def removed_units(layer: Layer, sparsity: float, granularity: Granularity) -> int:
    """How many units (weights, or output channels) a mask of ``layer`` at ``sparsity`` removes."""
    return granularity.removed_units(layer.shape, sparsity)


def unit_size(layer: Layer, granularity: Granularity) -> int:
    """Weights in one unit of pruning: one weight, or one output channel."""
    return granularity.unit_size(layer.shape)


class Accountant:
    """Totals of any schedule for one model: built once, then fast.

    ``graph`` (from ``trace_channels``) lets channel pruning also remove the next layers' input channels;
    ``channel_order`` (layer name -> output channels from least to most important) says which channels a
    channel mask removes, which matters where a residual sum joins several layers. Without an order the
    first channels are assumed to go; without a graph no input channels are removed.
    """

    def __init__(self, layers: list[Layer], graph: ChannelGraph | None = None,
                 channel_order: Mapping[str, np.ndarray] | None = None) -> None:
        if not layers:
            raise ValueError("no layers to count")
        self.layers = list(layers)
        self.by_name = {l.name: l for l in self.layers}
        self.graph = graph
        self._compiled = graph.compiled() if graph is not None else {}
        self.channel_order = {k: np.asarray(v) for k, v in (channel_order or {}).items()}
        self.weights = sum(l.params for l in self.layers)
        self.flops = sum(l.flops for l in self.layers)

    @classmethod
    def from_model(cls, model: nn.Module, example: torch.Tensor, layers: list[Layer], criterion: str = "magnitude",
                   granularity: str = "unstructured", stats: criteria.CalibrationStats | None = None,
                   seed: int = 0) -> "Accountant":
        """Trace the channel graph and rank channels by ``criterion`` (only needed for channel pruning)."""
        gran = parse_granularity(granularity)
        if not gran.structured:
            return cls(layers)
        order = {}
        for layer in layers:
            if supports(gran, layer.shape) is None:
                scores = criteria.importance(layer, layer.weight(model), criterion, stats, seed)
                order[layer.name] = torch.argsort(criteria.channel_scores(scores, criterion), stable=True).numpy()
        return cls(layers, trace_channels(model, example, layers), order)

    def totals(self, schedule: "Mapping[str, float] | object", granularity: str | None = None,
               per_layer: bool = False) -> Totals:
        """Totals of a ``Schedule`` (or a plain ``{layer: sparsity}`` with ``granularity``)."""
        sparsities = getattr(schedule, "sparsities", schedule)
        gran = parse_granularity(granularity or getattr(schedule, "granularity", "unstructured"))
        unknown = [n for n in sparsities if n not in self.by_name]
        if unknown:
            raise ValueError(f"schedule names layer {unknown[0]!r}, which the model does not have")
        if gran.structured and self.graph is not None:
            return self._structured(sparsities, gran, per_layer)
        removed = kept = flops_kept = 0
        rows = {}
        for layer in self.layers:
            units = removed_units(layer, float(sparsities.get(layer.name, 0.0)), gran)
            r = units * unit_size(layer, gran)
            removed += r
            kept += layer.params - r
            f = layer.flops * (layer.params - r) // layer.params
            flops_kept += f
            if per_layer:
                rows[layer.name] = {"weights_removed": r, "params_kept": layer.params - r, "flops_kept": f}
        return Totals(self.weights, removed, kept, self.flops, flops_kept, rows)

    def _structured(self, sparsities: Mapping[str, float], gran: Granularity, per_layer: bool) -> Totals:
        dead: dict[str, np.ndarray] = {}
        removed = kept_total = flops_kept = 0
        rows = {}
        for layer in self.layers:
            out_c = layer.shape[0]
            k = removed_units(layer, float(sparsities.get(layer.name, 0.0)), gran)
            out_removed = np.zeros(out_c, dtype=bool)
            if k:
                out_removed[self.channel_order.get(layer.name, np.arange(out_c))[:k]] = True
            per_out = layer.params // out_c
            removed += k * per_out
            groups = max(layer.groups, 1)
            in_per_group = layer.shape[1]
            spatial = per_out // in_per_group
            compiled = self._compiled.get(layer.name)
            if compiled is not None and compiled.size == in_per_group * groups:
                in_removed = compiled.removed(dead)
            else:
                in_removed = np.zeros(in_per_group * groups, dtype=bool)
            in_kept_g = (~in_removed).reshape(groups, in_per_group).sum(axis=1)
            out_kept_g = (~out_removed).reshape(groups, out_c // groups).sum(axis=1)
            kept = int((in_kept_g * out_kept_g).sum()) * spatial
            # An output channel whose inputs are all gone produces a constant: it is removed too.
            starved = np.repeat(in_kept_g == 0, out_c // groups)
            dead[layer.name] = out_removed | starved
            kept_total += kept
            f = layer.flops * kept // layer.params
            flops_kept += f
            if per_layer:
                rows[layer.name] = {"weights_removed": k * per_out, "params_kept": kept, "flops_kept": f,
                                    "channels_removed": int(dead[layer.name].sum()),
                                    "inputs_removed": int(in_removed.sum())}
        return Totals(self.weights, removed, kept_total, self.flops, flops_kept, rows)


def totals(schedule: object, layers: list[Layer], graph: ChannelGraph | None = None,
           channel_order: Mapping[str, np.ndarray] | None = None) -> Totals:
    """One-off totals of ``schedule`` over ``layers`` (build an ``Accountant`` to count many schedules)."""
    return Accountant(layers, graph, channel_order).totals(schedule, per_layer=True)
