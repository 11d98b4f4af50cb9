"""Masks from importance scores, for each granularity, and applying them without copying the model.

A mask is a boolean tensor of the weight's shape, ``True`` where the weight is kept. Sparsity is the
fraction removed, in [0, 1): of the weights (``unstructured``), of the output channels (``channel``), or fixed
by the pattern (``N:M`` keeps N of every M consecutive weights along the input dimension; 2:4 is 50%).
Ties are broken by position, so the same scores always give the same mask.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

GRANULARITIES = ("unstructured", "channel", "2:4")


@dataclass(frozen=True)
class Granularity:
    """``kind`` is ``unstructured``, ``channel`` or ``nm``; ``n`` of every ``m`` weights kept for ``nm``."""

    kind: str
    n: int = 0
    m: int = 0

    def __str__(self) -> str:
        return f"{self.n}:{self.m}" if self.kind == "nm" else self.kind

    @property
    def nm_sparsity(self) -> float:
        return 1.0 - self.n / self.m


def parse_granularity(text: str | Granularity) -> Granularity:
    """``unstructured``, ``channel``, or an ``N:M`` pattern such as ``2:4``."""
    if isinstance(text, Granularity):
        return text
    if text in ("unstructured", "channel"):
        return Granularity(text)
    if isinstance(text, str) and ":" in text:
        n, _, m = text.partition(":")
        if n.isdigit() and m.isdigit() and 0 < int(n) < int(m):
            return Granularity("nm", int(n), int(m))
    raise ValueError(f"unknown granularity {text!r}; choose unstructured, channel or N:M such as 2:4")


def check_sparsity(sparsity: float, what: str = "sparsity") -> float:
    """Sparsity must be a number in [0, 1): 1.0 would remove the whole layer."""
    try:
        value = float(sparsity)
    except (TypeError, ValueError):
        raise ValueError(f"{what} {sparsity!r} is not a number") from None
    if math.isnan(value) or not 0.0 <= value < 1.0:
        raise ValueError(f"{what} {sparsity!r} is outside [0, 1): it is the fraction of weights removed")
    return value


def nm_groups(weight_shape: tuple[int, ...]) -> tuple[int, int]:
    """(rows, row length) of the N:M view: output channels by (kernel positions x input channels)."""
    rows = weight_shape[0]
    return rows, math.prod(weight_shape[1:])


def _to_nm_view(t: torch.Tensor) -> torch.Tensor:
    """Convolution weights (O, I, kh, kw) are grouped along I at each kernel position, as sparse kernels do."""
    if t.dim() > 2:
        t = t.movedim(1, -1)
    return t.reshape(t.shape[0], -1)


def _from_nm_view(t: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    if len(shape) > 2:
        moved = (shape[0], *shape[2:], shape[1])
        return t.reshape(moved).movedim(-1, 1)
    return t.reshape(shape)


def supports(granularity: Granularity, weight_shape: tuple[int, ...]) -> str | None:
    """``None`` if a weight of this shape can take the granularity, else the reason it cannot."""
    if granularity.kind == "nm":
        in_dim = weight_shape[1]
        if in_dim % granularity.m:
            return f"its input dimension {in_dim} is not a multiple of {granularity.m}"
    if granularity.kind == "channel" and weight_shape[0] < 2:
        return "it has a single output channel"
    return None


def channel_scores(scores: torch.Tensor, criterion: str) -> torch.Tensor:
    """Per-output-channel importance: the sum of the element scores (L2 takes the root of the sum of squares)."""
    summed = scores.reshape(scores.shape[0], -1).sum(dim=1)
    return summed.sqrt() if criterion == "l2" else summed


def _remove_lowest(scores: torch.Tensor, k: int) -> torch.Tensor:
    keep = torch.ones(scores.numel(), dtype=torch.bool)
    if k > 0:
        order = torch.argsort(scores.reshape(-1), stable=True)
        keep[order[:k]] = False
    return keep.view(scores.shape)


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
        self.shape = tuple(scores.shape)
        self.scores, self.criterion = scores, criterion
        if self.gran.kind == "nm":
            reason = supports(self.gran, self.shape)
            if reason:
                raise ValueError(f"a weight of shape {list(self.shape)} cannot take {self.gran}: {reason}")
        self._order: torch.Tensor | None = None

    def order(self) -> torch.Tensor:
        """The sort that decides every mask: of the weights, the channels, or the weights within each N:M block."""
        if self._order is None:
            if self.gran.kind == "nm":
                self._order = torch.argsort(_to_nm_view(self.scores).reshape(-1, self.gran.m), dim=1, stable=True)
            elif self.gran.kind == "channel":
                self._order = torch.argsort(channel_scores(self.scores, self.criterion), stable=True)
            else:
                self._order = torch.argsort(self.scores.reshape(-1), stable=True)
        return self._order

    def __call__(self, sparsity: float) -> torch.Tensor:
        s = check_sparsity(sparsity)
        shape, gran = self.shape, self.gran
        if gran.kind == "nm":
            if s == 0.0:
                return torch.ones(shape, dtype=torch.bool)
            if not math.isclose(s, gran.nm_sparsity):
                raise ValueError(f"granularity {gran} prunes exactly {gran.nm_sparsity:g}; sparsity {s:g} is not possible")
            order = self.order()
            keep = torch.ones(order.shape, dtype=torch.bool)
            keep.scatter_(1, order[:, : gran.m - gran.n], False)
            return _from_nm_view(keep.reshape(shape[0], -1), shape)
        if gran.kind == "channel":
            keep = torch.ones(shape[0], dtype=torch.bool)
            keep[self.order()[: round(s * shape[0])]] = False
            return keep.view(-1, *([1] * (len(shape) - 1))).expand(shape).clone()
        keep = torch.ones(self.scores.numel(), dtype=torch.bool)
        k = round(s * self.scores.numel())
        if k > 0:
            keep[self.order()[:k]] = False
        return keep.view(shape)


def is_nm(weight: torch.Tensor, n: int, m: int) -> bool:
    """True when every group of ``m`` consecutive weights (N:M view) has at most ``n`` non-zeros."""
    blocks = _to_nm_view(weight.detach()).reshape(-1, m)
    return bool(((blocks != 0).sum(dim=1) <= n).all())


def parameter(model: nn.Module, name: str) -> torch.Tensor:
    """The parameter ``name`` of ``model``; also for TorchScript modules, which lack ``get_parameter``."""
    if isinstance(model, torch.jit.ScriptModule):
        return dict(model.named_parameters())[name]
    return model.get_parameter(name)


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
