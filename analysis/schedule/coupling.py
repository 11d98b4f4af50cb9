"""Which channels go together: the coupled groups of a model, the one model of what a structured schedule does.

Removing an output channel of a convolution for real also removes it everywhere it flows: the BatchNorm after it,
the input channels of the layers that read it, the other branch of a residual add, the slice of a concatenation,
the depthwise convolution that works channel by channel. Layers tied like that lose the same channels: a *coupled
group*. Torch-Pruning's ``DependencyGraph`` finds the groups; this module turns them into ``CoupledGroup`` records
that every face shares: the Schedule page draws one slider per group, allocation allocates per group, the totals
count what each group removes, and Measure, ``evaluate``, ``calibrate`` and the export remove exactly that.

A group is a set of *positions*: the channels of its first layer, or for attention the heads of an
``nn.MultiheadAttention`` (its packed query/key/value rows and the output projection's matching columns). Where a
grouped convolution reads or writes the channels they form ``blocks`` equal blocks, and every block loses the same
positions (a grouped convolution needs the same number of channels in every group). A group loses
``round(s * positions per block)`` positions per block at sparsity ``s``, always keeping one; which ones is decided
by the criterion's channel scores of the group's layers, each layer's scores normalised to sum 1 and summed over
the layers (and over the blocks).

Some groups are kept whole, and say why: channels that are the model's outputs (the classifier's classes),
an attention's embedding width (every head reads it; the heads are pruned instead), channels a ``GroupNorm`` or an
LSTM reads. A layer in no group (a weight used by a functional call, an attention projection's embedding width)
is not pruned by channel.

Resolution: a schedule names a sparsity per layer. A group takes the smallest sparsity the schedule gives any of
its layers (a layer it does not name counts as 0), so no layer loses more than its schedule allows; a kept group
and an ungrouped layer take 0. ``Coupling.resolve`` does that once for every face and says, one note per group,
where the result differs from what was asked.

When the dependency graph cannot trace the model (TorchScript, a model run in ONNX Runtime, code it does not
understand), ``Coupling.per_layer`` stands in: every layer is its own group and only its rows go (the masked
export zeroes them); the model cannot be shrunk and ``shrinkable`` says why.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from analysis.core import criteria
from analysis.core.granularity import Channel, supports
from analysis.core.layers import Layer, gradients_on
from analysis.schedule.attention import supports_heads

ROOT_TYPES = (nn.modules.conv._ConvNd, nn.Linear)
OUTPUTS = "its channels are the model's outputs (the classes)"
ATTENTION_WIDTH = "the attention's embedding width: every head reads it (its heads can be pruned instead)"
NOT_IN_GRAPH = "not a Conv/Linear module that Torch-Pruning's dependency graph can shrink"
_KEPT_TYPES = {"OUTPUT": OUTPUTS, "MHA": ATTENTION_WIDTH, "GN": "a GroupNorm normalises these channels in groups",
               "LSTM": "an LSTM reads these channels"}


class ShrinkError(ValueError):
    """A model or schedule that the dependency graph cannot shrink; the masked export still works."""


@dataclass
class Share:
    """One layer's part in a group: its rows (``out``) or its input columns (``in``); ``removed[k]`` is how many
    entries of that dimension go when ``k`` positions per block go; ``positions`` (rows only) is the position of
    each row in its block."""

    layer: str
    role: str
    removed: np.ndarray
    positions: np.ndarray | None = None


@dataclass
class CoupledGroup:
    """Layers whose output rows go together (``layers``), the layers whose input columns go with them
    (``consumers``), the positions (``channels``, or heads) in ``blocks`` equal blocks, and why the group is
    ``kept`` whole ("" when it can be pruned). ``order`` ranks the positions of a block, least important first."""

    key: str
    layers: list[str]
    consumers: list[str]
    channels: int
    blocks: int = 1
    unit: str = "channel"
    kept: str = ""
    order: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    shares: list[Share] = field(default_factory=list)

    @property
    def per_block(self) -> int:
        return self.channels // self.blocks

    @property
    def prunable(self) -> bool:
        return not self.kept and self.per_block > 1

    @property
    def label(self) -> str:
        """The group named by its layers (the first three, then how many more)."""
        shown = ", ".join(self.layers[:3])
        return shown + (f" (+{len(self.layers) - 3} more)" if len(self.layers) > 3 else "")

    @property
    def size(self) -> str:
        """What one step of the group's slider removes, in words."""
        if self.unit == "head":
            return f"{self.channels} heads"
        if self.blocks > 1:
            return f"{self.channels} channels in {self.blocks} blocks of {self.per_block}"
        return f"{self.channels} channels"

    def units_at(self, sparsity: float) -> int:
        """Positions each block loses at ``sparsity`` (at least one position stays)."""
        if sparsity <= 0.0 or not self.prunable:
            return 0
        return min(round(sparsity * self.per_block), self.per_block - 1)

    def sparsity_at(self, units: int) -> float:
        return units / self.per_block

    def removed_positions(self, units: int) -> list[int]:
        """The group's positions (root channel or head indices) that go when ``units`` per block go."""
        picked = np.asarray(self.order[:units], dtype=np.int64)
        return sorted(int(p) for b in range(self.blocks) for p in picked + b * self.per_block)


@dataclass
class Resolved:
    """A schedule as the model can take it: positions removed per group (``units``), the resulting sparsity of
    every layer that loses rows, and one note per group where that differs from what was asked."""

    units: dict[str, int]
    sparsities: dict[str, float]
    notes: list[str]


@dataclass
class Coupling:
    """The coupled groups of one model (built once, then every question is a table look-up).

    ``alone`` names the layers in no group and why; ``shrinkable`` is "" when the channels can be removed for real,
    else the reason (the groups are then the layers themselves). ``example`` is the input the graph was traced on.

    Example::

        >>> from analysis import Coupling, find_layers, load_workload
        >>> w = load_workload("sample:digits-resnet", "sample:digits", count=8)
        >>> coupling = Coupling.build(w.model, w.data.x[:1], find_layers(w.model, w.data.x[:1]))
        >>> [g.layers for g in coupling.groups if len(g.layers) > 1]
        [['layer2.downsample.0', 'layer2.conv2'], ['stem.0', 'layer1.conv2']]
        >>> coupling.by_layer["fc"].kept
        "its channels are the model's outputs (the classes)"
    """

    layers: list[Layer]
    groups: list[CoupledGroup]
    alone: dict[str, str] = field(default_factory=dict)
    shrinkable: str = ""
    example: torch.Tensor | None = None

    def __post_init__(self) -> None:
        self.by_key = {g.key: g for g in self.groups}
        self.by_layer = {name: g for g in self.groups for name in g.layers}

    @classmethod
    def build(cls, model: nn.Module, example: torch.Tensor, layers: list[Layer], criterion: str = "magnitude",
              stats: criteria.CalibrationStats | None = None, seed: int = 0) -> "Coupling":
        """Trace ``model`` once on ``example`` (one sample) and rank each group's positions by ``criterion``."""
        scores = _Scores(model, criterion, stats, seed)
        if isinstance(model, torch.jit.ScriptModule) or not isinstance(model, nn.Module):
            return cls.per_layer(layers, scores, "a TorchScript model or one run in ONNX Runtime cannot be shrunk: "
                                 "Torch-Pruning's dependency graph rewrites Python modules; export it without "
                                 "--shrink, or load the model from its Python code")
        try:
            graph = trace(model, example)
        except ShrinkError as exc:
            return cls.per_layer(layers, scores, str(exc))
        names = {m: n for n, m in model.named_modules()}
        by_name = {l.name: l for l in layers}
        groups = [g for tp_group in graph.get_all_groups(root_module_types=ROOT_TYPES)
                  if (g := _group(tp_group, graph, names, by_name, scores)) is not None]
        groups += _head_groups(model, by_name, scores)
        grouped = {n for g in groups for n in g.layers}
        alone = {l.name: _why_alone(l, model) for l in layers if l.name not in grouped}
        return cls(list(layers), groups, alone, "", example.detach()[:1].cpu())

    @classmethod
    def per_layer(cls, layers: list[Layer], scores: "_Scores | None", reason: str) -> "Coupling":
        """Every layer its own group, only its rows counted (the model cannot be shrunk: ``reason``; without
        ``scores`` the channels are not ranked, which counting does not need)."""
        groups = []
        for layer in layers:
            if supports(Channel(), layer.shape) is not None:
                continue
            order = np.argsort(scores.of(layer), kind="stable") if scores else np.arange(layer.shape[0])
            rows = np.arange(layer.shape[0] + 1, dtype=np.int64)
            groups.append(CoupledGroup(layer.name, [layer.name], [], layer.shape[0], order=order,
                                       shares=[Share(layer.name, "out", rows, np.arange(layer.shape[0]))]))
        return cls(list(layers), groups, {}, reason)

    # ------------------------------------------------------------------------------------------ resolution

    def resolve(self, sparsities: Mapping[str, float]) -> Resolved:
        """Positions each group loses under ``sparsities`` (``{layer: s}``), each layer's resulting sparsity, and
        notes where that differs from what was asked (see the module docstring)."""
        units, result, notes = {}, {}, []
        for group in self.groups:
            asked = {n: float(sparsities.get(n, 0.0)) for n in group.layers}
            if max(asked.values(), default=0.0) <= 0.0:
                continue
            k = group.units_at(min(asked.values()))
            units[group.key] = k
            got = group.sparsity_at(k)
            if k:
                result.update(dict.fromkeys(group.layers, got))
            note = _note(group, asked, got)
            if note:
                notes.append(note)
        for name, s in sparsities.items():
            if float(s) > 0.0 and name in self.alone:
                notes.append(f"{name}: not pruned by channel: {self.alone[name]} (asked {float(s):g})")
        ordered = {l.name: result[l.name] for l in self.layers if l.name in result}
        return Resolved(units, ordered, notes)

    def removed_entries(self, units: Mapping[str, int]) -> tuple[dict[str, int], dict[str, int]]:
        """Rows and input columns each layer loses when each group loses ``units[key]`` positions per block."""
        rows: dict[str, int] = {}
        cols: dict[str, int] = {}
        for key, k in units.items():
            if k:
                for share in self.by_key[key].shares:
                    target = rows if share.role == "out" else cols
                    target[share.layer] = target.get(share.layer, 0) + int(share.removed[k])
        return rows, cols


# ---------------------------------------------------------------------------------------------- the graph


def trace(model: nn.Module, example: torch.Tensor):  # noqa: ANN201 - a torch_pruning.DependencyGraph
    """Torch-Pruning's dependency graph of ``model`` on ``example``; a ``ShrinkError`` when it cannot trace it."""
    import torch_pruning as tp

    try:
        with gradients_on(model):
            return tp.DependencyGraph().build_dependency(model, example_inputs=example[:1], verbose=False)
    except Exception as exc:  # noqa: BLE001 - any tracing failure means the graph cannot handle this model
        raise ShrinkError(f"Torch-Pruning's dependency graph cannot trace this model ({type(exc).__name__}: "
                          f"{' '.join(str(exc).split())[:200]}); export without --shrink") from None


class _Scores:
    """Each layer's channel scores under the criterion, computed once."""

    def __init__(self, model: nn.Module, criterion: str, stats: criteria.CalibrationStats | None, seed: int) -> None:
        self.model, self.criterion, self.stats, self.seed = model, criterion, stats, seed
        self._cache: dict[str, np.ndarray] = {}

    def of(self, layer: Layer) -> np.ndarray:
        if layer.name not in self._cache:
            scores = criteria.importance(layer, layer.weight(self.model), self.criterion, self.stats, self.seed)
            self._cache[layer.name] = criteria.channel_scores(scores, self.criterion).double().numpy()
        return self._cache[layer.name]


def _group(tp_group, graph, names: dict, by_name: dict[str, Layer], scores: _Scores) -> CoupledGroup | None:  # noqa: ANN001
    """One Torch-Pruning group as a ``CoupledGroup`` (None when none of our layers loses rows in it)."""
    out, into, kept, blocks = [], [], "", 1
    for item in tp_group:
        module, handler = item.dep.target.module, item.dep.handler
        kept = kept or _KEPT_TYPES.get(item.dep.target.type.name, "")
        if not isinstance(module, ROOT_TYPES) or names.get(module) not in by_name:
            continue
        blocks = max(blocks, _blocks(module))
        entry = (by_name[names[module]], np.asarray(item.idxs, dtype=np.int64), np.asarray(item.root_idxs))
        if graph.is_out_channel_pruning_fn(handler):
            if all(entry[0] is not o[0] for o in out):
                out.append(entry)
        elif graph.is_in_channel_pruning_fn(handler):
            into.append(entry)
    if not out:
        return None
    channels = graph.get_out_channels(tp_group[0].dep.target.module)
    if not into:
        kept = kept or OUTPUTS
    if channels % blocks:
        kept = kept or f"{channels} channels do not split into the {blocks} groups of a grouped convolution"
    root_scores = np.zeros(channels)
    for layer, idxs, roots in out:
        s = scores.of(layer)[idxs]
        root_scores[roots] += s / max(s.sum(), 1e-300) if len(out) > 1 else s
    key = names[tp_group[0].dep.target.module]
    return _finish(CoupledGroup(key, [l.name for l, _, _ in out], [l.name for l, _, _ in into], channels, blocks,
                                kept=kept), root_scores, [(l, "out", i, r) for l, i, r in out]
                   + [(l, "in", i, r) for l, i, r in into])


def _blocks(module: nn.Module) -> int:
    """The groups of a grouped (not depthwise) convolution: its channels split into that many equal blocks."""
    groups = getattr(module, "groups", 1)
    return groups if 1 < groups != module.out_channels else 1


def _finish(group: CoupledGroup, root_scores: np.ndarray,
            shares: list[tuple[Layer, str, np.ndarray, np.ndarray]]) -> CoupledGroup:
    """Rank the positions of a block and tabulate how many entries each share loses per position removed.

    ``shares`` are ``(layer, role, local indices, root positions)``: which of the layer's rows or columns carry
    which of the group's positions."""
    per_block = group.per_block
    if group.blocks > 1 and not group.kept:
        position_scores = root_scores.reshape(group.blocks, per_block).sum(axis=0)
    else:
        position_scores = root_scores[:per_block]
    group.order = np.argsort(position_scores, kind="stable")
    for layer, role, local, roots in shares:
        roots = np.asarray(roots, dtype=np.int64)
        per_root = np.bincount(roots, minlength=group.channels)
        per_position = per_root[: per_block * group.blocks].reshape(group.blocks, per_block).sum(axis=0)
        positions = None
        if role == "out":
            positions = np.full(layer.shape[0], -1, dtype=np.int64)
            positions[np.asarray(local, dtype=np.int64)] = roots % per_block
        group.shares.append(Share(layer.name, role, np.concatenate([[0], np.cumsum(per_position[group.order])]),
                                  positions))
    return group


def _head_groups(model: nn.Module, by_name: dict[str, Layer], scores: _Scores) -> list[CoupledGroup]:
    """One group per ``nn.MultiheadAttention`` whose heads can go: its query/key/value rows and output columns."""
    groups = []
    for name, module in model.named_modules():
        in_proj, out_proj = by_name.get(f"{name}.in_proj"), by_name.get(f"{name}.out_proj")
        if in_proj is None or out_proj is None or not supports_heads(module) or module.num_heads < 2:
            continue
        heads, dim = module.num_heads, module.head_dim
        head_scores = scores.of(in_proj).reshape(3, heads, dim).sum(axis=(0, 2))
        roots = np.repeat(np.arange(heads), dim)
        rows, cols = np.arange(3 * heads * dim), np.arange(heads * dim)
        groups.append(_finish(CoupledGroup(in_proj.name, [in_proj.name], [out_proj.name], heads, unit="head"),
                              head_scores, [(in_proj, "out", rows, np.tile(roots, 3)),
                                            (out_proj, "in", cols, roots)]))
    return groups


def _why_alone(layer: Layer, model: nn.Module) -> str:
    """Why a layer is in no group."""
    parent = layer.name.rpartition(".")[0]
    try:
        owner = model.get_submodule(parent) if parent else None
    except AttributeError:
        owner = None
    return ATTENTION_WIDTH if isinstance(owner, nn.MultiheadAttention) else NOT_IN_GRAPH


def _note(group: CoupledGroup, asked: dict[str, float], got: float) -> str:
    """What resolution did to a group, when that is not what was asked ("" when it is)."""
    values = set(asked.values())
    asked_text = f"{values.pop():g}" if len(values) == 1 else ", ".join(
        f"{n} {s:g}" for n, s in list(asked.items())[:4]) + (", ..." if len(asked) > 4 else "")
    if group.kept:
        return f"{group.label}: kept whole: {group.kept} (asked {asked_text})"
    if max(asked.values()) - min(asked.values()) > 0.5 / group.channels:
        limiting = [n for n, s in asked.items() if s == min(asked.values())]
        return (f"{group.label}: coupled, so all lose the same {group.unit}s: {got:.4g}, the smallest asked "
                f"(limited by {', '.join(limiting)}; asked {asked_text})")
    if abs(got - min(asked.values())) > 0.5 / group.channels + 1e-12:
        return f"{group.label}: {got:.4g}, the nearest whole number of {group.unit}s ({group.size}; asked {asked_text})"
    return ""
