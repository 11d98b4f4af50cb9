"""Remove a resolved schedule's channels and heads for real, and the masked reference the result is checked against.

``plan(model, coupling, resolved)`` prunes a scratch copy of the model with Torch-Pruning (each coupled group loses
the positions ``Coupling.resolve`` decided) and replaces each ``nn.MultiheadAttention`` that loses heads by a
``HeadsAttention``. Which entries of every tensor survive is read off the pruned copy itself: before pruning, each
of its tensors is overwritten with its own flat indices (integers whose bits are stored as floats: a tag is only
moved, never computed on, so 4 bytes an entry hold any index below 2.1e9),
so what comes out is exactly the entries kept, whatever rule removed them. No pruning rule is written here twice.
The kept entries of a tensor are always a selection of rows, columns, ... so ``ShrinkPlan.kept`` stores one index
list per dimension (a few bytes, not a copy of the model).

``ShrinkPlan.build(values)`` fills the shrunk architecture with the kept entries of ``values`` (the model, or its
masked reference after BatchNorm recalibration). ``ShrinkPlan.masked(model)`` is the original architecture with
every entry the shrink removes set to zero and every ``LayerNorm`` that loses entries normalising over the kept
ones only (a LayerNorm mixes its channels: zeros alone would still count in its mean and variance). The masked
reference and the shrunk model compute the same function up to float summation order; the export checks that.
"""

from __future__ import annotations

import copy
import gc
import math
import types
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from analysis.schedule.attention import keep_heads
from analysis.schedule.coupling import Coupling, Resolved, ShrinkError, trace

_INT32_TAGS = 0x7F800000  # int32 bit patterns below this are finite float32s: tags in 4 bytes an entry below, 8 above
_TAG_BITS = {torch.float32: torch.int32, torch.float64: torch.int64}


@dataclass
class ShrinkPlan:
    """The shrunk architecture (values filled by ``build``), the entries each tensor keeps along each dimension, and
    the removed entries of each LayerNorm's normalised dimension."""

    skeleton: nn.Module | None
    kept: dict[str, tuple[torch.Tensor, ...]]
    shapes: dict[str, tuple[int, ...]]
    norms: dict[str, list[int]] = field(default_factory=dict)

    def build(self, values: nn.Module) -> nn.Module:
        """The shrunk model holding the kept entries of ``values`` (same architecture as the plan's model). The plan
        gives its skeleton away: call it once."""
        if self.skeleton is None:
            raise RuntimeError("this plan's shrunk model was already built")
        small, self.skeleton = self.skeleton, None
        source = _tensors(values)
        with torch.no_grad():
            for name, target in _tensors(small).items():
                if target.is_floating_point() or name in self.kept:
                    target.data = _select(source[name].detach().cpu(), self.kept.get(name)).clone()
        return small.eval()

    def masked(self, model: nn.Module) -> nn.Module:
        """A copy of ``model`` (same architecture) computing what the shrunk model computes (module docstring)."""
        reference = copy.deepcopy(model).eval()
        tensors = _tensors(reference)
        with torch.no_grad():
            for name, dims in self.kept.items():
                tensors[name].masked_fill_(~_keep_mask(dims, self.shapes[name]).to(tensors[name].device), 0)
        for name, removed in self.norms.items():
            norm = reference.get_submodule(name)
            keep = torch.ones(norm.normalized_shape[-1], dtype=torch.bool)
            keep[removed] = False
            norm.forward = types.MethodType(_masked_forward(type(norm).forward, keep), norm)
        return reference

    def out_channels(self, layers: list) -> dict[str, tuple[int, int]]:  # noqa: ANN001 - analysis Layers
        """Rows of each layer's weight before and after, for the layers that lose rows."""
        out = {}
        for layer in layers:
            dims = self.kept.get(layer.param_name)
            if dims is not None and len(dims[0]) < layer.shape[0]:
                out[layer.name] = (layer.shape[0], len(dims[0]))
        return out


def plan(model: nn.Module, coupling: Coupling, resolved: Resolved) -> ShrinkPlan:
    """Prune a scratch copy of ``model`` as ``resolved`` says (``model`` is not changed)."""
    if coupling.shrinkable:
        raise ShrinkError(coupling.shrinkable)
    scratch = _hollow_copy(model)
    shapes, norms = _prune_tagged(scratch, coupling, resolved)
    gc.collect()  # Torch-Pruning's graph is cyclic: it and the full-size tags it holds are freed only by a collection
    kept = _kept(scratch, shapes)
    _untag(scratch)
    return ShrinkPlan(scratch, kept, shapes, {n: sorted(set(i)) for n, i in norms.items()})


def _prune_tagged(scratch: nn.Module, coupling: Coupling, resolved: Resolved) -> tuple[dict, dict[str, list[int]]]:
    """Tag ``scratch`` (``_tag``) and prune it in place as ``resolved`` says; return the original shapes and the
    entries each LayerNorm loses."""
    graph = trace(scratch, coupling.example)
    shapes = _tag(scratch)
    names = {m: n for n, m in scratch.named_modules()}
    norms: dict[str, list[int]] = {}
    for key, k in resolved.units.items():
        group = coupling.by_key[key]
        if k and group.unit == "head":
            _drop_heads(scratch, key.removesuffix(".in_proj"), group.removed_positions(k))
        elif k:
            module = scratch.get_submodule(key)
            pruner = graph.get_pruner_of_module(module)
            tp_group = graph.get_pruning_group(module, pruner.prune_out_channels, group.removed_positions(k))
            for item in tp_group:
                if isinstance(item.dep.target.module, nn.LayerNorm):
                    norms.setdefault(names[item.dep.target.module], []).extend(int(i) for i in item.idxs)
            tp_group.prune(record_history=False)
    return shapes, norms


def _hollow_copy(model: nn.Module) -> nn.Module:
    """A CPU copy of ``model`` whose floating tensors are allocated but not filled (``_tag`` overwrites them; the
    graph is traced from shapes, not values): memory never written is not taken, so the scratch does not hold a
    second copy of a big model's weights."""
    memo: dict[int, torch.Tensor] = {}
    for t in _tensors(model).values():
        if t.is_floating_point():
            empty = torch.empty(t.shape, dtype=t.dtype)
            memo[id(t)] = nn.Parameter(empty, t.requires_grad) if isinstance(t, nn.Parameter) else empty
    return copy.deepcopy(model, memo).cpu().eval()


def _tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    return dict(model.named_parameters()) | dict(model.named_buffers())


def _tag(model: nn.Module) -> dict[str, tuple[int, ...]]:
    """Overwrite every floating tensor of ``model`` with its flat indices, the integers' bits viewed as floats (a
    float32 would hold indices exactly only up to 2**24: a big linear layer's weight has more); return the original
    shapes."""
    shapes = {}
    for name, t in _tensors(model).items():
        if t.is_floating_point():
            shapes[name] = tuple(t.shape)
            floats = torch.float32 if t.numel() < _INT32_TAGS else torch.float64
            t.data = torch.arange(t.numel(), dtype=_TAG_BITS[floats]).view(floats).view(t.shape)
    return shapes


def _untag(model: nn.Module) -> None:
    """Give the tags' memory back once the kept indices are read: each floating tensor becomes allocated but
    unwritten storage of its shape (``build`` fills it from the values; a big model's tags would otherwise sit beside
    its masked reference)."""
    for t in _tensors(model).values():
        if t.is_floating_point():
            t.data = torch.empty(t.shape, dtype=t.dtype)


def _kept(model: nn.Module, shapes: dict[str, tuple[int, ...]]) -> dict[str, tuple[torch.Tensor, ...]]:
    """For each tagged tensor that lost entries, the indices kept along each of its dimensions."""
    kept = {}
    for name, t in _tensors(model).items():
        if name in shapes and tuple(t.shape) != shapes[name]:
            kept[name] = _per_dim(name, t.detach().view(_TAG_BITS[t.dtype]).long(), shapes[name])
    return kept


def _per_dim(name: str, flat: torch.Tensor, shape: tuple[int, ...]) -> tuple[torch.Tensor, ...]:
    """The kept flat indices ``flat`` (in the pruned shape) as one index list per dimension of ``shape``: read along
    each dimension at position 0 of the others, then checked on up to a million entries."""
    strides = [math.prod(shape[d + 1:]) for d in range(len(shape))]
    first = flat.reshape(-1)[0]
    dims = tuple((flat.movedim(d, 0).reshape(flat.shape[d], -1)[:, 0] - first) // strides[d]
                 + (first // strides[d]) % shape[d] for d in range(len(shape)))
    probe = torch.randint(flat.numel(), (min(flat.numel(), 2**20),), generator=torch.Generator().manual_seed(0))
    at = torch.unravel_index(probe, flat.shape)
    rebuilt = sum(dims[d][at[d]] * strides[d] for d in range(len(shape)))
    if not torch.equal(rebuilt, flat.reshape(-1)[probe]):
        raise ShrinkError(f"Torch-Pruning changed {name} in a way that is not a selection of its rows and columns")
    return dims


def _select(t: torch.Tensor, dims: tuple[torch.Tensor, ...] | None) -> torch.Tensor:
    """The entries of ``t`` that ``dims`` keep (all of ``t`` when ``None``)."""
    for d, ix in enumerate(dims or ()):
        if len(ix) < t.shape[d]:
            t = t.index_select(d, ix)
        elif not torch.equal(ix, torch.arange(t.shape[d])):
            t = t.index_select(d, ix)
    return t


def _keep_mask(dims: tuple[torch.Tensor, ...], shape: tuple[int, ...]) -> torch.Tensor:
    """A boolean tensor of ``shape``: True on the entries ``dims`` keep."""
    mask = torch.ones((), dtype=torch.bool)
    for d, ix in enumerate(dims):
        axis = torch.zeros(shape[d], dtype=torch.bool)
        axis[ix] = True
        mask = mask & axis.view([-1 if e == d else 1 for e in range(len(shape))])
    return mask.expand(shape)


def _drop_heads(model: nn.Module, name: str, removed: list[int]) -> None:
    """Replace the attention ``name`` by a ``HeadsAttention`` without the ``removed`` heads."""
    mha = model.get_submodule(name)
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child,
            keep_heads(mha, [h for h in range(mha.num_heads) if h not in set(removed)]))


class _KeptLayerNorm(TorchFunctionMode):
    """Inside one LayerNorm's forward: ``F.layer_norm`` over the kept entries of the last dimension only."""

    def __init__(self, keep: torch.Tensor) -> None:
        super().__init__()
        self.keep = keep

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        kwargs = kwargs or {}
        if func is not F.layer_norm:
            return func(*args, **kwargs)
        x, _, weight, bias, eps = (list(args) + [None] * 5)[:5]
        eps = kwargs.get("eps", eps if eps is not None else 1e-5)
        weight, bias = kwargs.get("weight", weight), kwargs.get("bias", bias)
        keep = self.keep.to(x.device, x.dtype)
        count = keep.sum()
        mean = (x * keep).sum(-1, keepdim=True) / count
        var = (((x - mean) * keep) ** 2).sum(-1, keepdim=True) / count
        y = (x - mean) / torch.sqrt(var + eps) * keep
        return y * (weight if weight is not None else 1) + (bias if bias is not None else 0)


def _masked_forward(forward, keep: torch.Tensor):  # noqa: ANN001, ANN202 - a module's unbound forward
    """``forward`` with its ``F.layer_norm`` normalising over the kept entries only."""

    def run(self: nn.Module, *args: object, **kwargs: object) -> torch.Tensor:
        with _KeptLayerNorm(keep):
            return forward(self, *args, **kwargs)

    return run
