"""Which layer's output channels each layer reads: the channel graph that structured pruning needs.

Removing output channel ``c`` of a convolution also removes the input channel (or the flattened input
features) that carries it into the next layer(s), through BatchNorm, activations, pooling, flattening,
residual additions and concatenation. This module finds those links by watching one forward pass at the
ATen level (like ``layers.find_layers``), following each tensor's channels from the layer that produced them:

- ``trace_channels(model, example, layers)`` -> ``ChannelGraph``: for every layer, for every input channel
  (or feature), the set of ``(producer layer, output channel)`` pairs that feed it.

An input channel fed by several producers (a residual sum) can only go when all of them are removed. An
input channel whose origin is lost (the model's input, or an operation this trace does not know, such as
LayerNorm or attention) is never counted as removable: the graph errs on the side of keeping.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from analysis.core.dispatch import EagerDispatchMode, storage_key
from analysis.core.layers import Layer, gradients_on
from analysis.core.ops import (
    ARITHMETIC,
    CAT,
    CHANNELWISE,
    CONV_OPS,
    MATMUL_OPS,
    POOLING,
    RESHAPES,
    input_operand,
    is_transposed_conv,
    op_name,
    weight_operand,
)

Sources = tuple  # of (producer layer name, output channel) pairs; None marks an input of unknown origin


@dataclass
class ChannelGraph:
    """For each layer that reads channels, the sources of each of its input channels (or features).

    ``inputs[layer]`` is a list with one entry per input channel: a tuple of ``(producer, channel)`` pairs,
    or ``None`` when the origin is unknown (never removable).
    """

    inputs: dict[str, list[Sources | None]] = field(default_factory=dict)

    def consumers(self, producer: str) -> list[str]:
        """Layers that read at least one output channel of ``producer``."""
        return [name for name, srcs in self.inputs.items()
                if any(s and any(p == producer for p, _ in s) for s in srcs)]

    def compiled(self) -> dict[str, "_Compiled"]:
        """Per consumer: flat arrays of (input index, producer, channel) links, for fast counting."""
        out = {}
        for name, srcs in self.inputs.items():
            idx, prod, ch, known = [], [], [], np.zeros(len(srcs), dtype=bool)
            for i, s in enumerate(srcs):
                if not s:
                    continue
                known[i] = True
                for p, c in s:
                    idx.append(i)
                    prod.append(p)
                    ch.append(c)
            counts = np.bincount(np.asarray(idx, dtype=np.int64), minlength=len(srcs))
            by_producer = {}
            prod_arr = np.asarray(prod, dtype=object)
            idx_arr, ch_arr = np.asarray(idx, dtype=np.int64), np.asarray(ch, dtype=np.int64)
            for p in dict.fromkeys(prod):
                sel = prod_arr == p
                by_producer[p] = (idx_arr[sel], ch_arr[sel])
            out[name] = _Compiled(len(srcs), known, counts, by_producer)
        return out


@dataclass
class _Compiled:
    size: int
    known: np.ndarray
    counts: np.ndarray
    by_producer: dict[str, tuple[np.ndarray, np.ndarray]]

    def removed(self, dead: dict[str, np.ndarray]) -> np.ndarray:
        """Boolean per input channel: every source is a removed (dead) producer channel."""
        hits = np.zeros(self.size, dtype=np.int64)
        for p, (idx, ch) in self.by_producer.items():
            d = dead.get(p)
            if d is not None:
                np.add.at(hits, idx, d[ch].astype(np.int64))
        return self.known & (hits == self.counts)


class _ChannelTracer(EagerDispatchMode):
    """Follows each tensor's channel dimension from the layer that produced it to the layers that read it."""

    def __init__(self, watched: dict[int, str]) -> None:
        super().__init__()
        self.watched = watched
        self.tracked: dict[int, tuple[torch.Tensor, int, list]] = {}
        self.inputs: dict[str, list] = {}

    def _get(self, t: object) -> tuple[int, list] | None:
        if not isinstance(t, torch.Tensor):
            return None
        entry = self.tracked.get(id(t))
        return None if entry is None or entry[0] is not t else (entry[1], entry[2])

    def _set(self, t: torch.Tensor, dim: int, srcs: list) -> None:
        self.tracked[id(t)] = (t, dim, srcs)

    def _forget(self, t: object) -> None:
        if isinstance(t, torch.Tensor):
            self.tracked.pop(id(t), None)

    def _consume(self, layer: str, x: torch.Tensor, dim: int) -> None:
        """Record where the ``dim`` channels of ``x`` come from, as input of ``layer``."""
        got = self._get(x)
        size = x.shape[dim]
        if got is None or got[0] != dim % x.dim():
            srcs = [None] * size
        else:
            srcs = got[1]
        prev = self.inputs.get(layer)
        if prev is not None and prev != srcs:  # the same weight used twice on different inputs: keep only the common
            srcs = [a if a == b else None for a, b in zip(prev, srcs)]
        self.inputs[layer] = list(srcs)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, C901
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        op = op_name(func)
        first = out[0] if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor) else out
        if not isinstance(first, torch.Tensor):
            return out
        if op in CONV_OPS:
            layer = self.watched.get(storage_key(args[1]))
            if layer is not None and not is_transposed_conv(op, args):
                self._consume(layer, args[0], 1)
                self._set(first, 1, [((layer, c),) for c in range(first.shape[1])])
            else:
                self._forget(first)
        elif op in MATMUL_OPS:
            a, b = input_operand(op, args), weight_operand(op, args)
            layer = self.watched.get(storage_key(b)) if isinstance(b, torch.Tensor) else None
            if layer is not None and a.dim() >= 2:
                self._consume(layer, a, a.dim() - 1)
                self._set(first, first.dim() - 1, [((layer, c),) for c in range(first.shape[-1])])
            else:
                self._forget(first)
        elif op in CHANNELWISE or op in POOLING:
            got = self._get(args[0]) if args else None
            if got is not None and first.dim() > got[0] and first.shape[got[0]] == args[0].shape[got[0]]:
                self._set(first, got[0], got[1])
            else:
                self._forget(first)
        elif op in ARITHMETIC:
            self._elementwise(first, args)
        elif op in RESHAPES:
            self._view(first, args[0])
        elif op == CAT:
            self._cat(first, args[0], args[1] if len(args) > 1 else kwargs.get("dim", 0))
        else:
            self._forget(first)
        return out

    def _elementwise(self, out: torch.Tensor, args: tuple) -> None:
        """Sum or product of tensors: an output channel has the union of its operands' sources."""
        merged: list | None = None
        dim = None
        for a in args:
            if not isinstance(a, torch.Tensor) or a.dim() == 0:
                continue
            got = self._get(a)
            if got is None:
                # A broadcast operand (a bias, a scale) does not mix channels; a full one of unknown origin does.
                aligned = a.dim() == out.dim() and a.shape == out.shape
                if aligned:
                    merged, dim = None, -1
                    break
                continue
            d, srcs = got
            if a.dim() != out.dim() or a.shape[d] != out.shape[d]:
                merged, dim = None, -1
                break
            if merged is None:
                merged, dim = list(srcs), d
            elif d != dim:
                merged, dim = None, -1
                break
            else:
                merged = [None if (x is None or y is None) else tuple(dict.fromkeys(x + y)) for x, y in zip(merged, srcs)]
        if merged is None:
            self._forget(out)
        else:
            self._set(out, dim, merged)

    def _view(self, out: torch.Tensor, x: torch.Tensor) -> None:
        got = self._get(x)
        if got is None:
            self._forget(out)
            return
        d, srcs = got
        if d == x.dim() - 1 and out.dim() >= 1 and out.shape[-1] == x.shape[-1]:
            self._set(out, out.dim() - 1, srcs)
        elif d == 1 and out.dim() >= 2 and tuple(out.shape[:2]) == tuple(x.shape[:2]):
            self._set(out, 1, srcs)
        elif d == 1 and out.dim() == 2 and out.shape[0] == x.shape[0] and out.shape[1] == math.prod(x.shape[1:]):
            per = math.prod(x.shape[2:])
            self._set(out, 1, [srcs[f // per] for f in range(out.shape[1])])
        else:
            self._forget(out)

    def _cat(self, out: torch.Tensor, tensors: list, dim: int) -> None:
        dim = dim % out.dim()
        merged = []
        for t in tensors:
            got = self._get(t)
            if got is not None and got[0] == dim:
                merged.extend(got[1])
            else:
                merged.extend([None] * t.shape[dim])
        self._set(out, dim, merged)


def trace_channels(model: nn.Module, example: torch.Tensor, layers: list[Layer]) -> ChannelGraph:
    """The channel graph of ``model`` for ``layers``, from one forward pass of ``example`` (one sample is enough)."""
    params = dict(model.named_parameters())
    by_param = {l.param_name: l.name for l in layers}
    watched = {storage_key(p): by_param[n] for n, p in params.items() if n in by_param}
    tracer = _ChannelTracer(watched)
    with gradients_on(model), tracer:
        model(example)
    return ChannelGraph({name: srcs for name, srcs in tracer.inputs.items()})
