"""Masks from importance scores, and applying them to a model without copying it.

A mask is a boolean tensor of the weight's shape, ``True`` where the weight is kept. What a unit of pruning is
(a weight, an output channel, an N:M block) is the granularity's business (``core.granularity``); how the
weights are ranked is the criterion's (``core.criteria``).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from analysis.core.criteria import CalibrationStats, channel_scores, get_criterion, importance
from analysis.core.granularity import CoupledLayer, Granularity, check_sparsity, parse_granularity
from analysis.core.layers import Layer
from analysis.core.modules import parameter


def make_mask(scores: torch.Tensor, sparsity: float, granularity: str | Granularity,
              criterion: str = "magnitude") -> torch.Tensor:
    """Keep-mask for one layer: removes the lowest-scoring ``round(sparsity * count)`` weights or channels."""
    return make_masks(scores, [sparsity], granularity, criterion)[0]


def make_masks(scores: torch.Tensor, sparsities: list[float], granularity: str | Granularity,
               criterion: str = "magnitude") -> list[torch.Tensor]:
    """Masks for several sparsities of one layer, sorting the scores once."""
    maker = MaskMaker(scores, granularity, criterion)
    return [maker(s) for s in sparsities]


class MaskMaker:
    """Keep-masks of one layer at any sparsity, the scores sorted once (on the first call).

    Adaptive scans ask for a layer's masks a few sparsities at a time; sorting a large layer's scores for
    each of those calls cost more than the evaluations.
    """

    def __init__(self, scores: torch.Tensor, granularity: str | Granularity, criterion: str = "magnitude") -> None:
        self.gran = parse_granularity(granularity)
        if get_criterion(criterion).per_row:
            self.gran = self.gran.per_row()
        self.shape = tuple(scores.shape)
        self.scores, self.criterion = scores, criterion
        self.gran.check_weight(self.shape)
        self._order: torch.Tensor | None = None

    def order(self) -> torch.Tensor:
        """The sort that decides every mask: of the weights, the channels, or the weights within each N:M block."""
        if self._order is None:
            whole = self.gran.structured or self.gran.coupled
            per_channel = channel_scores(self.scores, self.criterion) if whole else self.scores
            self._order = self.gran.order(self.scores, per_channel)
        return self._order

    def __call__(self, sparsity: float) -> torch.Tensor:
        s = check_sparsity(sparsity)
        if s == 0.0:
            return torch.ones(self.shape, dtype=torch.bool)
        return self.gran.keep(self.order(), s, self.shape)


def maker_for(layer: Layer, model: nn.Module, criterion: str, granularity: str | Granularity,
              stats: CalibrationStats | None = None, seed: int = 0) -> MaskMaker:
    """The mask maker of one layer of ``model``: its weight scored by ``criterion``, or for a coupled layer (heads,
    neurons) its units' summed scores. Its masks go through ``layer.masks`` to become parameter masks."""
    if isinstance(layer, CoupledLayer):
        return MaskMaker(layer.unit_scores(model, criterion, stats, seed), granularity, criterion)
    return MaskMaker(importance(layer, layer.weight(model), criterion, stats, seed), granularity, criterion)


@contextmanager
def applied(model: nn.Module, masks: dict[str, torch.Tensor]) -> Iterator[None]:
    """Zero the masked weights of ``model`` in place for the duration of the block, then restore them exactly.

    ``masks`` maps parameter names to keep-masks. Only the touched weights are saved (a clone each), never the
    whole model, and they come back bit for bit, also when the block raises.
    """
    saved: list[tuple[torch.Tensor, torch.Tensor]] = []
    try:
        with torch.no_grad():
            for name, mask in masks.items():
                weight = parameter(model, name)
                saved.append((weight, weight.detach().clone()))
                weight.masked_fill_(~mask.to(weight.device), 0)
        yield
    finally:
        with torch.no_grad():
            for weight, original in saved:
                weight.copy_(original)


def bake(model: nn.Module, masks: dict[str, torch.Tensor]) -> None:
    """Zero the masked weights of ``model`` in place for good (unlike ``applied``): a pruned copy to export or
    fine-tune."""
    params = dict(model.named_parameters())  # not get_parameter: TorchScript modules lack it
    with torch.no_grad():
        for name, mask in masks.items():
            weight = params[name]
            weight.masked_fill_(~mask.to(weight.device), 0)
