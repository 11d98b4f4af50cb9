"""Granularities: what one unit of pruning is. One small class per kind, registered once; the CLI's choices, the
dashboard's options and every count (units, removed units, unit size, the mask itself) come from it.

- ``unstructured``: single weights; sparsity is the fraction of the layer's weights removed.
- ``channel``: whole output channels (rows of a Linear, filters of a convolution); sparsity is the fraction of
  output channels removed. Structured: the channels can be cut out of the network for real.
- ``N:M`` (e.g. ``2:4``): N of every M consecutive weights along the input dimension are kept, so the sparsity is
  fixed (1 - N/M); sparse tensor cores run it fast.
- ``heads``: whole attention heads of a transformer block: a head's query, key and value rows and its columns of
  the output projection go together (one coupled layer per block's attention; with grouped-query attention a unit
  is a key/value head and the query heads that share it). Sparsity is the fraction of heads removed.
- ``neurons``: whole MLP neurons: a neuron's rows of the up (and gate) projection and its column of the down
  projection go together (one coupled layer per block's MLP). Sparsity is the fraction of neurons removed.

The coupling rule of ``heads`` and ``neurons`` lives here (``Heads.couple``, ``Neurons.couple``, ``Coupled``): the
scan, the schedules and the export read the coupled layers they make.

Sparsity is a number in [0, 1): 1.0 would remove the whole layer. Ties are broken by position, so the same
scores always give the same mask.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import nn

from analysis.core.blocks import ATTENTION, INTERLEAVED_QKV, MLP, block_of, role_of, split_name
from analysis.core.criteria import CalibrationStats, importance
from analysis.core.layers import Layer, layers_for


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
    coupled: ClassVar[bool] = False  # a unit spans several weights of a block (``couple`` makes the layers)

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

    def couple(self, layers: list[Layer], model: nn.Module) -> tuple[list[Layer], dict[str, str]]:
        """The layers a scan of this granularity measures, and the ones it cannot take with the reason: the found
        layers themselves, except for coupled granularities (one layer per block's attention or MLP)."""
        return layers, {}


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


# ---------------------------------------------------------------------------------- heads and neurons


@dataclass
class Part:
    """One weight of a coupled layer: the axis of its (out, in) weight a unit takes (0: rows, 1: columns) and the
    indices along it that each unit owns, (units, k)."""

    layer: Layer
    axis: int
    index: torch.Tensor


@dataclass
class CoupledLayer(Layer):
    """Several weights of one block pruned together unit by unit (attention heads, MLP neurons). ``shape`` is
    (units, weights per unit); masks are (units, parts) keep-masks, one row per unit (as a channel mask is)."""

    parts: list[Part] = field(default_factory=list)

    def masks(self, mask: torch.Tensor) -> dict[str, torch.Tensor]:
        kept = mask.reshape(mask.shape[0], -1)[:, 0].cpu()
        out = {}
        for part in self.parts:
            keep = torch.ones(part.layer.shape, dtype=torch.bool)
            gone = part.index[~kept].flatten()
            if part.axis == 0:
                keep[gone] = False
            else:
                keep[:, gone] = False
            out.update(part.layer.masks(keep))
        return out

    def unit_scores(self, model: nn.Module, criterion: str, stats: CalibrationStats | None,
                    seed: int) -> torch.Tensor:
        """(units, parts): the criterion's element scores of each part summed over each unit's weights."""
        columns = []
        for part in self.parts:
            scores = importance(part.layer, part.layer.weight(model), criterion, stats, seed)
            along = scores.sum(dim=1 - part.axis)
            columns.append(along[part.index].sum(dim=1))
        return torch.stack(columns, dim=1)

    @property
    def param_names(self) -> tuple[str, ...]:
        return tuple(part.layer.param_name for part in self.parts)


@dataclass(frozen=True)
class Coupled(Granularity):
    """Units that span several weights of a block: ranked by the criterion's per-unit sums (``channel`` style),
    counted in units of (units, weights per unit) coupled layers."""

    coupled: ClassVar[bool] = True
    roles: ClassVar[frozenset[str]]
    group: ClassVar[str]  # the coupled layer's name inside its block when the parts share no longer prefix

    def units(self, shape: tuple[int, ...]) -> int:
        return shape[0]

    def unit_size(self, shape: tuple[int, ...]) -> int:
        return math.prod(shape[1:])

    def supports(self, shape: tuple[int, ...]) -> str | None:
        return f"it has a single {self.kind[:-1]}" if shape[0] < 2 else None

    def order(self, scores: torch.Tensor, channel_scores: torch.Tensor) -> torch.Tensor:
        return torch.argsort(channel_scores, stable=True)

    def keep(self, order: torch.Tensor, sparsity: float, shape: tuple[int, ...]) -> torch.Tensor:
        return Channel.keep(self, order, sparsity, shape)

    def couple(self, layers: list[Layer], model: nn.Module) -> tuple[list[Layer], dict[str, str]]:
        blocks: dict[str, dict[str, Layer]] = {}
        for layer in layers:
            role = role_of(layer.name)
            if role in self.roles and len(layer.shape) == 2:
                blocks.setdefault(block_of(layer.name), {})[role] = layer
        coupled, skipped = [], {}
        for block, parts in blocks.items():
            made = self.parts(parts, model)
            if isinstance(made, str):
                skipped.update({l.name: made for l in parts.values()})
            else:
                coupled.append(_coupled_layer(block, self.group, made, self.kind))
        taken = {p.layer.name for c in coupled for p in c.parts}
        skipped.update({l.name: f"not part of a transformer block's {self.group} Prunescope can couple into "
                                f"{self.kind}" for l in layers if l.name not in taken and l.name not in skipped})
        return coupled, skipped

    def parts(self, found: dict[str, Layer], model: nn.Module) -> list[Part] | str:
        """The parts of one block's coupled layer, or the reason it cannot be made."""
        raise NotImplementedError


@dataclass(frozen=True)
class Heads(Coupled):
    kind: ClassVar[str] = "heads"
    roles: ClassVar[frozenset[str]] = ATTENTION
    group: ClassVar[str] = "attention"

    def parts(self, found: dict[str, Layer], model: nn.Module) -> list[Part] | str:
        if "o" not in found or not ({"q", "k", "v"} <= set(found) or "qkv" in found):
            return "its attention has no complete set of query, key, value and output projections"
        if "qkv" in found and split_name(found["qkv"].name)[1] in INTERLEAVED_QKV:
            return "its fused query/key/value projection interleaves the heads"
        shape = attention_heads(model, found)
        if shape is None:
            return "the model does not say how many attention heads it has"
        heads, kv, dim = shape
        per = heads // kv
        q, kv_rows = torch.arange(heads * dim).view(kv, per * dim), torch.arange(kv * dim).view(kv, dim)
        if "qkv" in found:
            index = torch.cat([q, heads * dim + kv_rows, heads * dim + kv * dim + kv_rows], dim=1)
            parts = [Part(found["qkv"], 0, index)]
        else:
            parts = [Part(found["q"], 0, q), Part(found["k"], 0, kv_rows), Part(found["v"], 0, kv_rows)]
        parts.append(Part(found["o"], 1, q))
        wrong = [p.layer.name for p in parts if p.layer.shape[p.axis] != p.index.numel()]
        return f"{wrong[0]} does not have {heads} heads of {dim}" if wrong else parts


@dataclass(frozen=True)
class Neurons(Coupled):
    kind: ClassVar[str] = "neurons"
    roles: ClassVar[frozenset[str]] = MLP
    group: ClassVar[str] = "mlp"

    def parts(self, found: dict[str, Layer], model: nn.Module) -> list[Part] | str:
        if "up" not in found or "down" not in found:
            return "its MLP has no up and down projections"
        width = found["up"].shape[0]
        index = torch.arange(width).view(width, 1)
        parts = [Part(found[r], 0, index) for r in ("gate", "up") if r in found] + [Part(found["down"], 1, index)]
        wrong = [p.layer.name for p in parts if p.layer.shape[p.axis] != width]
        return f"{wrong[0]} does not have the up projection's {width} neurons" if wrong else parts


def attention_heads(model: nn.Module, found: dict[str, Layer]) -> tuple[int, int, int] | None:
    """(query heads, key/value heads, head size) of one block's attention: from the model (a Hugging Face model
    says, ``attention_heads()``), or from the ``nn.MultiheadAttention`` that owns a fused projection."""
    if callable(getattr(model, "attention_heads", None)):
        return model.attention_heads()
    fused = found.get("qkv")
    owner = fused.name.rpartition(".")[0] if fused is not None else ""
    module = model.get_submodule(owner) if owner else None
    if isinstance(module, nn.MultiheadAttention):
        return module.num_heads, module.num_heads, module.embed_dim // module.num_heads
    return None


def _coupled_layer(block: str, group: str, parts: list[Part], kind: str) -> CoupledLayer:
    """The coupled layer of ``parts``: named after what they share (``model.layers.0.self_attn``), else
    ``BLOCK.GROUP``; its shape is (units, weights per unit)."""
    names = [p.layer.name.split(".") for p in parts]
    common = []
    for pieces in zip(*names):
        if len(set(pieces)) > 1:
            break
        common.append(pieces[0])
    name = ".".join(common) if len(".".join(common)) > len(block) else f"{block}.{group}"
    units = parts[0].index.shape[0]
    params = sum(p.layer.params for p in parts)
    first = parts[0].layer
    return CoupledLayer(name=name, param_name=first.param_name, kind=f"attention {kind}" if group == "attention"
                        else f"MLP {kind}", shape=(units, params // units), params=params,
                        flops=sum(p.layer.flops for p in parts), order=first.order, parts=parts)


GRANULARITIES: dict[str, type[Granularity]] = {"unstructured": Unstructured, "channel": Channel, "heads": Heads,
                                               "neurons": Neurons}
CHOICES = ("unstructured", "channel", "2:4", "heads", "neurons")  # what the pages offer; any N:M parses


def parse_granularity(text: str | Granularity) -> Granularity:
    """``unstructured``, ``channel``, ``heads``, ``neurons``, or an ``N:M`` pattern such as ``2:4``."""
    if isinstance(text, Granularity):
        return text
    if text in GRANULARITIES:
        return GRANULARITIES[text]()
    if isinstance(text, str) and ":" in text:
        n, _, m = text.partition(":")
        if n.isdigit() and m.isdigit() and 0 < int(n) < int(m):
            return NM(int(n), int(m))
    raise ValueError(f"unknown granularity {text!r}; choose unstructured, channel, heads, neurons or N:M such as 2:4")


def schedule_layers(model: nn.Module, example: torch.Tensor, granularity: str | Granularity,
                    names: "list[str] | set[str] | dict" = ()) -> list[Layer]:
    """The layers a schedule of ``granularity`` over ``names`` prunes and counts: the model's layers (with the
    embeddings it names, ``layers_for``), coupled into heads or neurons where the granularity says so."""
    return parse_granularity(granularity).couple(layers_for(model, example, names), model)[0]


def supports(granularity: Granularity, weight_shape: tuple[int, ...]) -> str | None:
    """``None`` if a weight of this shape can take the granularity, else the reason it cannot."""
    return granularity.supports(tuple(weight_shape))
