"""Granularities: what one unit of pruning is. One small class per kind, registered once; the CLI's choices, the
dashboard's options and every count (units, removed units, unit size, the mask itself) come from it.

- ``unstructured``: single weights; sparsity is the fraction of the layer's weights removed.
- ``channel``: whole output channels (rows of a Linear, filters of a convolution); sparsity is the fraction of
  output channels removed. Structured: the channels can be cut out of the network for real.
- ``N:M`` (e.g. ``2:4``): N of every M consecutive weights along the input dimension are kept, so the sparsity is
  fixed (1 - N/M); sparse tensor cores run it fast.

Sparsity is a number in [0, 1): 1.0 would remove the whole layer. Ties are broken by position, so the same
scores always give the same mask.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch


def check_sparsity(sparsity: float, what: str = "sparsity") -> float:
    """Sparsity must be a number in [0, 1): 1.0 would remove the whole layer."""
    try:
        value = float(sparsity)
    except (TypeError, ValueError):
        raise ValueError(f"{what} {sparsity!r} is not a number") from None
    if math.isnan(value) or not 0.0 <= value < 1.0:
        raise ValueError(f"{what} {sparsity!r} is outside [0, 1): it is the fraction of weights removed")
    return value


@dataclass(frozen=True)
class Granularity:
    """What one unit of pruning is; ``kind`` names the class (``unstructured``, ``channel``, ``nm``)."""

    kind: ClassVar[str]
    structured: ClassVar[bool] = False  # removes whole output channels (which can be cut out for real)
    has_pattern: ClassVar[bool] = False  # a pattern the pruned weight must keep (``pattern_holds``)

    def __str__(self) -> str:
        return self.kind

    @property
    def fixed_sparsity(self) -> float | None:
        """The one sparsity this granularity can prune a layer to (``None``: any)."""
        return None

    def supports(self, shape: tuple[int, ...]) -> str | None:
        """``None`` if a weight of this shape can take the granularity, else the reason it cannot."""
        return None

    def check_weight(self, shape: tuple[int, ...]) -> None:
        """A weight whose masks cannot be made at all (not merely not pruned) is a ``ValueError``."""

    def units(self, shape: tuple[int, ...]) -> int:
        """How many units of pruning a weight of this shape has."""
        return math.prod(shape)

    def unit_size(self, shape: tuple[int, ...]) -> int:
        """Weights in one unit."""
        return 1

    def removed_units(self, shape: tuple[int, ...], sparsity: float) -> int:
        """How many units a mask at ``sparsity`` removes."""
        return round(sparsity * self.units(shape)) if sparsity > 0.0 else 0

    def grid(self, sparsities: list[float], default: bool) -> list[float]:
        """The sparsities a scan of this granularity measures, from the sorted ones asked for (``default``: the
        user asked for none in particular)."""
        return sparsities

    def check_layer_sparsity(self, sparsity: float, layer: str) -> None:
        """A schedule's sparsity for ``layer`` that this granularity cannot make is a ``ValueError``."""

    def pattern_holds(self, weight: torch.Tensor) -> bool:
        """Whether a pruned weight (read back from a file) still has this granularity's pattern (``has_pattern``)."""
        return True

    def order(self, scores: torch.Tensor, channel_scores: torch.Tensor) -> torch.Tensor:
        """The sort that decides every mask of a layer (``channel_scores``: the criterion's per-channel sums)."""
        return torch.argsort(scores.reshape(-1), stable=True)

    def keep(self, order: torch.Tensor, sparsity: float, shape: tuple[int, ...]) -> torch.Tensor:
        """The keep-mask (``True`` = kept) at ``sparsity`` from the layer's ``order``."""
        keep = torch.ones(math.prod(shape), dtype=torch.bool)
        k = round(sparsity * math.prod(shape))
        if k > 0:
            keep[order[:k]] = False
        return keep.view(shape)

    def per_row(self) -> "Granularity":
        """This granularity with weights compared within each output row (the ``activation`` criterion, as
        Wanda does); only unstructured pruning has a choice, the others compare what they compare."""
        return self


@dataclass(frozen=True)
class Unstructured(Granularity):
    kind: ClassVar[str] = "unstructured"

    def per_row(self) -> "Granularity":
        return PerRow()


@dataclass(frozen=True)
class PerRow(Unstructured):
    """Unstructured, with the weights ranked within each output row (Wanda's comparison group): every row loses
    ``round(sparsity * weights)`` spread as evenly as the count allows (the first rows one more), so the layer's
    count is exactly the unstructured one."""

    def order(self, scores: torch.Tensor, channel_scores: torch.Tensor) -> torch.Tensor:
        return torch.argsort(scores.reshape(scores.shape[0], -1), dim=1, stable=True)

    def keep(self, order: torch.Tensor, sparsity: float, shape: tuple[int, ...]) -> torch.Tensor:
        rows, width = order.shape
        k = round(sparsity * rows * width)
        per_row = torch.full((rows,), k // rows, dtype=torch.long)
        per_row[: k % rows] += 1
        pruned = torch.arange(width).view(1, -1) < per_row.view(-1, 1)
        keep = torch.ones(rows, width, dtype=torch.bool)
        keep.scatter_(1, order, ~pruned)
        return keep.view(shape)


@dataclass(frozen=True)
class Channel(Granularity):
    kind: ClassVar[str] = "channel"
    structured: ClassVar[bool] = True

    def supports(self, shape: tuple[int, ...]) -> str | None:
        return "it has a single output channel" if shape[0] < 2 else None

    def units(self, shape: tuple[int, ...]) -> int:
        return shape[0]

    def unit_size(self, shape: tuple[int, ...]) -> int:
        return math.prod(shape) // shape[0]

    def order(self, scores: torch.Tensor, channel_scores: torch.Tensor) -> torch.Tensor:
        return torch.argsort(channel_scores, stable=True)

    def keep(self, order: torch.Tensor, sparsity: float, shape: tuple[int, ...]) -> torch.Tensor:
        keep = torch.ones(shape[0], dtype=torch.bool)
        keep[order[: round(sparsity * shape[0])]] = False
        return keep.view(-1, *([1] * (len(shape) - 1))).expand(shape).clone()


@dataclass(frozen=True)
class NM(Granularity):
    """N of every M consecutive weights kept along the input dimension (at each kernel position of a conv)."""

    n: int = 2
    m: int = 4
    kind: ClassVar[str] = "nm"
    has_pattern: ClassVar[bool] = True

    def __str__(self) -> str:
        return f"{self.n}:{self.m}"

    @property
    def nm_sparsity(self) -> float:
        return 1.0 - self.n / self.m

    @property
    def fixed_sparsity(self) -> float | None:
        return self.nm_sparsity

    def supports(self, shape: tuple[int, ...]) -> str | None:
        return f"its input dimension {shape[1]} is not a multiple of {self.m}" if shape[1] % self.m else None

    def check_weight(self, shape: tuple[int, ...]) -> None:
        reason = self.supports(shape)
        if reason:
            raise ValueError(f"a weight of shape {list(shape)} cannot take {self}: {reason}")

    def removed_units(self, shape: tuple[int, ...], sparsity: float) -> int:
        return math.prod(shape) * (self.m - self.n) // self.m if sparsity > 0.0 else 0

    def grid(self, sparsities: list[float], default: bool) -> list[float]:
        if default:
            return [self.nm_sparsity]
        bad = [s for s in sparsities if not (s == 0.0 or math.isclose(s, self.nm_sparsity))]
        if bad:
            raise ValueError(f"granularity {self} prunes exactly {self.nm_sparsity:g} of each layer; sparsity "
                             f"{bad[0]:g} is not possible with it")
        return [self.nm_sparsity if math.isclose(s, self.nm_sparsity) else s for s in sparsities]

    def check_layer_sparsity(self, sparsity: float, layer: str) -> None:
        if sparsity > 0.0 and not math.isclose(sparsity, self.nm_sparsity):
            raise ValueError(f"layer {layer}: granularity {self} prunes exactly {self.nm_sparsity:g}, not {sparsity:g}")

    def pattern_holds(self, weight: torch.Tensor) -> bool:
        return is_nm(weight, self.n, self.m)

    def order(self, scores: torch.Tensor, channel_scores: torch.Tensor) -> torch.Tensor:
        return torch.argsort(to_nm_view(scores).reshape(-1, self.m), dim=1, stable=True)

    def keep(self, order: torch.Tensor, sparsity: float, shape: tuple[int, ...]) -> torch.Tensor:
        if sparsity == 0.0:
            return torch.ones(shape, dtype=torch.bool)
        if not math.isclose(sparsity, self.nm_sparsity):
            raise ValueError(f"granularity {self} prunes exactly {self.nm_sparsity:g}; sparsity {sparsity:g} is not "
                             "possible")
        keep = torch.ones(order.shape, dtype=torch.bool)
        keep.scatter_(1, order[:, : self.m - self.n], False)
        return from_nm_view(keep.reshape(shape[0], -1), shape)


def to_nm_view(t: torch.Tensor) -> torch.Tensor:
    """Convolution weights (O, I, kh, kw) are grouped along I at each kernel position, as sparse kernels do."""
    if t.dim() > 2:
        t = t.movedim(1, -1)
    return t.reshape(t.shape[0], -1)


def is_nm(weight: torch.Tensor, n: int, m: int) -> bool:
    """True when every group of ``m`` consecutive weights (N:M view) has at most ``n`` non-zeros."""
    blocks = to_nm_view(weight.detach()).reshape(-1, m)
    return bool(((blocks != 0).sum(dim=1) <= n).all())


def from_nm_view(t: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    if len(shape) > 2:
        moved = (shape[0], *shape[2:], shape[1])
        return t.reshape(moved).movedim(-1, 1)
    return t.reshape(shape)


GRANULARITIES: dict[str, type[Granularity]] = {"unstructured": Unstructured, "channel": Channel}
CHOICES = ("unstructured", "channel", "2:4")  # what the pages offer; any N:M parses


def parse_granularity(text: str | Granularity) -> Granularity:
    """``unstructured``, ``channel``, or an ``N:M`` pattern such as ``2:4``."""
    if isinstance(text, Granularity):
        return text
    if text in GRANULARITIES:
        return GRANULARITIES[text]()
    if isinstance(text, str) and ":" in text:
        n, _, m = text.partition(":")
        if n.isdigit() and m.isdigit() and 0 < int(n) < int(m):
            return NM(int(n), int(m))
    raise ValueError(f"unknown granularity {text!r}; choose unstructured, channel or N:M such as 2:4")


def supports(granularity: Granularity, weight_shape: tuple[int, ...]) -> str | None:
    """``None`` if a weight of this shape can take the granularity, else the reason it cannot."""
    return granularity.supports(tuple(weight_shape))
