"""What a schedule removes in all: global weight sparsity, parameters kept and FLOPs kept.

Counts cover the prunable weights (the convolution and matrix-multiplication weights that ``find_layers``
returns), not biases or BatchNorm parameters. FLOPs are those of the same layers on one sample (the FLOP counter
of ``find_layers``).

- ``global_sparsity``: the fraction of those weights the schedule removes (its rows, for channel pruning).
- ``params_kept`` / ``flops_kept``: what is left once the pruned structure is cut out of the network. For
  unstructured and N:M schedules that is the non-zero weights (sparse FLOPs scale with the density). For channel
  pruning it is what the shrunk model keeps: the schedule is first resolved to the model's coupled groups
  (``coupling.Coupling.resolve``, the same resolution Measure and the export use), and removing a group's channels
  removes the rows of its layers and the input columns of the layers that read them. So these counts equal those
  of the exported model: the non-zero layer weights of a masked ONNX file, the layer weights of a shrunk one, and
  ``find_layers``' FLOPs of the shrunk PyTorch model (tests/test_coupling.py ties them).

``Accountant`` is built once per model (layers, coupled groups, channel ranking) and then answers
``totals(schedule)`` in well under a millisecond, so allocation can call it in a search loop and the
dashboard on every slider move.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from torch import nn

from analysis.core import criteria
from analysis.core.granularity import Granularity, parse_granularity
from analysis.core.layers import Layer
from analysis.schedule.coupling import Coupling, Resolved


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

    ``coupling`` (``Coupling.build``) says which layers lose channels together and which input columns go with
    them; without one, a channel schedule removes only the rows of each layer it names.
    """

    def __init__(self, layers: list[Layer], coupling: Coupling | None = None) -> None:
        if not layers:
            raise ValueError("no layers to count")
        self.layers = list(layers)
        self.by_name = {l.name: l for l in self.layers}
        self.coupling = coupling or Coupling.per_layer(self.layers, None, "the model itself was not traced")
        self.weights = sum(l.params for l in self.layers)
        self.flops = sum(l.flops for l in self.layers)

    @classmethod
    def from_model(cls, model: nn.Module, example: torch.Tensor, layers: list[Layer], criterion: str = "magnitude",
                   granularity: str = "unstructured", stats: criteria.CalibrationStats | None = None,
                   seed: int = 0) -> "Accountant":
        """Find the coupled groups and rank their channels by ``criterion`` (only channel pruning needs them)."""
        if not parse_granularity(granularity).structured:
            return cls(layers)
        return cls(layers, Coupling.build(model, example, layers, criterion, stats, seed))

    def resolve(self, schedule: "Mapping[str, float] | object") -> Resolved:
        """A channel schedule as the model takes it (``Coupling.resolve``)."""
        return self.coupling.resolve(getattr(schedule, "sparsities", schedule))

    def totals(self, schedule: "Mapping[str, float] | object", granularity: str | None = None,
               per_layer: bool = False) -> Totals:
        """Totals of a ``Schedule`` (or a plain ``{layer: sparsity}`` with ``granularity``)."""
        sparsities = getattr(schedule, "sparsities", schedule)
        gran = parse_granularity(granularity or getattr(schedule, "granularity", "unstructured"))
        unknown = [n for n in sparsities if n not in self.by_name]
        if unknown:
            raise ValueError(f"schedule names layer {unknown[0]!r}, which the model does not have")
        if gran.structured:
            return self._structured(sparsities, per_layer)
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

    def _structured(self, sparsities: Mapping[str, float], per_layer: bool) -> Totals:
        out_removed, in_removed = self.coupling.removed_entries(self.resolve(sparsities).units)
        removed = kept_total = flops_kept = 0
        rows = {}
        for layer in self.layers:
            r, c = out_removed.get(layer.name, 0), in_removed.get(layer.name, 0)
            removed += r * (layer.params // layer.shape[0])
            kept = kept_weights(layer, r, c)
            kept_total += kept
            f = layer.flops * kept // layer.params
            flops_kept += f
            if per_layer:
                rows[layer.name] = {"weights_removed": r * (layer.params // layer.shape[0]), "params_kept": kept,
                                    "flops_kept": f, "channels_removed": r, "inputs_removed": c}
        return Totals(self.weights, removed, kept_total, self.flops, flops_kept, rows)


def kept_weights(layer: Layer, rows: int, columns: int) -> int:
    """Weights of ``layer`` left when it loses ``rows`` output channels and ``columns`` input channels.

    A convolution's weight is (out, in / groups, kernel...): a grouped convolution loses its input channels evenly
    from its groups; a depthwise one (one input channel per group) loses its inputs with its outputs.
    """
    out = layer.shape[0]
    row = layer.params // out
    if layer.groups > 1 and layer.groups == out and layer.shape[1] == 1:
        return (out - rows) * row
    inputs = layer.shape[1] * layer.groups
    return (out - rows) * ((inputs - columns) // layer.groups) * (row // layer.shape[1])


def totals(schedule: object, layers: list[Layer], coupling: Coupling | None = None) -> Totals:
    """One-off totals of ``schedule`` over ``layers`` (build an ``Accountant`` to count many schedules)."""
    return Accountant(layers, coupling).totals(schedule, per_layer=True)
