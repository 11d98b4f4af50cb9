"""Remove pruned output channels for real, following the dependencies between layers.

A channel-pruned model full of zero rows is no smaller and no faster. Removing a channel for real also
removes it from every place it flows to: the BatchNorm after the convolution, the input channels of the
layers that read it, the other branch of a residual add, the slice of a concatenation, the depthwise
convolution that works channel by channel. That bookkeeping is Torch-Pruning's ``DependencyGraph``; this
module only decides which channels go and keeps the result honest.

Coupling. Layers joined by a residual add or a depthwise convolution must lose the same channels (a
*coupled group*). A group loses ``round(s * C)`` channels where ``s`` is the smallest sparsity the schedule
gives any of its layers (a layer the schedule does not name counts as 0), so no layer loses more than its
schedule allows; the channels are chosen by the criterion's channel scores summed over the group, each
layer's scores normalised to sum 1. A group whose channels are the model's outputs (the classifier) is kept
whole. ``ChannelGroup`` records what was asked and what was done, so the exported schedule is the real one.

The masked reference. Zeroing a convolution's output channel does not make the channel zero downstream
(the BatchNorm bias after it, or an activation with f(0) != 0, lets a constant through), so a model with
zero weight rows is *not* equal to the model with those channels removed. ``ShrinkPlan.masked`` therefore
zeroes every parameter entry the shrink removes (the convolution rows and biases, the BatchNorm scales and
shifts, the consumers' input columns): that model has the original architecture and computes the same
function as the shrunk one, up to float summation order. It is the reference the shrunk model is checked
against.

How the removed entries are found: every parameter and buffer of a scratch copy is overwritten with its own
flat indices (float64, exact up to 2**53) and Torch-Pruning prunes that copy; the indices that survive are
exactly the entries kept. No pruning rule is written here twice.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from analysis.core import criteria
from analysis.core.granularity import parse_granularity
from analysis.core.layers import Layer, gradients_on
from analysis.schedule.schedule import Schedule


class ShrinkError(ValueError):
    """A model or schedule that the dependency graph cannot shrink; masked export still works."""


@dataclass
class ChannelGroup:
    """Layers whose output channels are removed together, what the schedule asked and what was removed."""

    layers: list[str]
    channels: int
    requested: dict[str, float]
    removed: int
    note: str = ""

    @property
    def sparsity(self) -> float:
        return self.removed / self.channels if self.channels else 0.0

    @property
    def adjusted(self) -> bool:
        """True when some layer of the group loses a different fraction than the schedule asked."""
        return any(abs(s - self.sparsity) > 0.5 / self.channels for s in self.requested.values())

    def to_dict(self) -> dict:
        return {**asdict(self), "sparsity": self.sparsity}


@dataclass
class ShrinkPlan:
    """Which entries of every tensor survive, and the shrunk architecture (values filled by ``apply``)."""

    skeleton: nn.Module
    kept: dict[str, torch.Tensor]
    groups: list[ChannelGroup]
    out_channels: dict[str, tuple[int, int]] = field(default_factory=dict)
    removed_channels: dict[str, list[int]] = field(default_factory=dict)

    def effective_sparsities(self) -> dict[str, float]:
        """Fraction of output channels removed, for every layer that loses any."""
        return {n: 1.0 - after / before for n, (before, after) in self.out_channels.items() if after < before}

    def masked(self, model: nn.Module) -> nn.Module:
        """A copy of ``model`` (same architecture) with every entry the shrink removes set to zero."""
        reference = copy.deepcopy(model)
        with torch.no_grad():
            for name, p in reference.named_parameters():
                keep = self.kept.get(name)
                if keep is not None and keep.numel() < p.numel():
                    flat_keep = torch.zeros(p.numel(), dtype=torch.bool)
                    flat_keep[keep] = True
                    p.masked_fill_(~flat_keep.view(p.shape).to(p.device), 0)
        return reference

    def apply(self, reference: nn.Module) -> nn.Module:
        """The shrunk model, holding the kept entries of ``reference`` (e.g. after BatchNorm recalibration)."""
        small = copy.deepcopy(self.skeleton)
        values = dict(reference.named_parameters()) | dict(reference.named_buffers())
        targets = dict(small.named_parameters()) | dict(small.named_buffers())
        with torch.no_grad():
            for name, keep in self.kept.items():
                source = values[name].detach().cpu()
                targets[name].data = source.reshape(-1)[keep].view(targets[name].shape).clone()
        return small.eval()


def _module_of(model: nn.Module, layer: Layer) -> nn.Module | None:
    """The Conv/Linear module that owns ``layer``'s weight, or None (attention projections, scripted code)."""
    if not layer.param_name.endswith(".weight"):
        return None
    try:
        module = model.get_submodule(layer.name)
    except (AttributeError, RuntimeError):
        return None
    return module if isinstance(module, (nn.modules.conv._ConvNd, nn.Linear)) else None


def _channel_scores(layer: Layer, model: nn.Module, criterion: str, stats: criteria.CalibrationStats | None,
                    seed: int) -> torch.Tensor:
    scores = criteria.importance(layer, layer.weight(model), criterion, stats, seed)
    return criteria.channel_scores(scores, criterion).double()


def _build_graph(model: nn.Module, example: torch.Tensor):  # noqa: ANN202 - a torch_pruning.DependencyGraph
    import torch_pruning as tp

    try:
        with gradients_on(model):
            return tp.DependencyGraph().build_dependency(model, example_inputs=example, verbose=False)
    except Exception as exc:  # noqa: BLE001 - any tracing failure means the graph cannot handle this model
        raise ShrinkError(f"Torch-Pruning's dependency graph cannot trace this model ({type(exc).__name__}: "
                          f"{' '.join(str(exc).split())[:200]}); export without --shrink") from None


def plan(model: nn.Module, layers: list[Layer], schedule: Schedule, example: torch.Tensor,
         stats: criteria.CalibrationStats | None = None, seed: int = 0) -> ShrinkPlan:
    """Decide the channels every coupled group loses and prune a scratch copy; ``model`` is not changed.

    ``schedule`` must have channel granularity; ``layers`` are ``model``'s layers (``find_layers``).
    """
    if not parse_granularity(schedule.granularity).structured:
        raise ShrinkError(f"only channel granularity can be shrunk, the schedule has {schedule.granularity}; "
                          "export it masked (without --shrink)")
    schedule.validate(layers)
    if isinstance(model, torch.jit.ScriptModule):
        raise ShrinkError("a TorchScript model cannot be shrunk: Torch-Pruning's dependency graph rewrites Python "
                          "modules; export it without --shrink, or load the model from its Python code")
    work = copy.deepcopy(model).cpu().eval()
    example = example.cpu()
    graph = _build_graph(work, example)
    by_module = {}
    for layer in layers:
        module = _module_of(work, layer)
        if module is not None and module in graph.module2node:
            by_module[module] = layer

    decided = []
    grouped: set[str] = set()
    for group in graph.get_all_groups(root_module_types=(nn.modules.conv._ConvNd, nn.Linear)):
        members, consumed = [], False
        for item in group:
            module, handler = item.dep.target.module, item.dep.handler
            is_out = graph.is_out_channel_pruning_fn(handler)
            if isinstance(module, (nn.modules.conv._ConvNd, nn.Linear)):
                if is_out and module in by_module:
                    members.append((by_module[module], item.idxs, item.root_idxs))
                if graph.is_in_channel_pruning_fn(handler) and not is_out:
                    consumed = True
        if not members:
            continue
        root = group[0].dep.target.module
        channels = graph.get_out_channels(root)
        requested = {layer.name: schedule.sparsities.get(layer.name, 0.0) for layer, _, _ in members}
        grouped.update(requested)
        chosen, note = _choose(members, channels, requested, consumed, work, schedule, stats, seed)
        if chosen:
            _check_grouped(group, graph, work)
        decided.append((group, ChannelGroup([l.name for l, _, _ in members], channels, requested, len(chosen), note),
                        chosen))

    missing = [n for n, s in schedule.sparsities.items() if s > 0 and n not in grouped]
    if missing:
        raise ShrinkError(f"layer {missing[0]} is not a Conv/Linear module that Torch-Pruning's dependency graph "
                          "can shrink (scripted code, an attention projection or a functional call); export "
                          "without --shrink, or leave it out of the schedule")

    before = {layer.name: _module_of(work, layer).weight.shape[0] for layer in by_module.values()}
    kept = _prune_with_tags(work, [(g, chosen) for g, _, chosen in decided if chosen])
    after = {layer.name: _module_of(work, layer).weight.shape[0] for layer in by_module.values()}
    removed = {l: [] for l in before}
    for group, info, chosen in decided:
        for layer, idxs, root_idxs in _members(group, by_module, graph):
            position = {r: i for r, i in zip(root_idxs, idxs)}
            removed[layer.name] = sorted(int(position[c]) for c in chosen if c in position)
    return ShrinkPlan(work, kept, [info for _, info, _ in decided],
                      {n: (before[n], after[n]) for n in before},
                      {n: idx for n, idx in removed.items() if idx})


def _members(group, by_module: dict, graph) -> list[tuple[Layer, list[int], list[int]]]:  # noqa: ANN001
    out = []
    for item in group:
        module = item.dep.target.module
        if module in by_module and graph.is_out_channel_pruning_fn(item.dep.handler):
            out.append((by_module[module], item.idxs, item.root_idxs))
    return out


def _choose(members: list, channels: int, requested: dict[str, float], consumed: bool, model: nn.Module,
            schedule: Schedule, stats: criteria.CalibrationStats | None, seed: int) -> tuple[list[int], str]:
    """Root channel indices the group loses, and a note for the user when the schedule could not be kept."""
    names = [layer.name for layer, _, _ in members]
    target = min(requested.values())
    if max(requested.values()) == 0.0:
        return [], ""
    if not consumed:
        return [], "kept whole: these channels are the model's outputs"
    k = min(round(target * channels), channels - 1)
    if len(members) > 1 and min(requested.values()) < max(requested.values()):
        limiting = [n for n in names if requested[n] == target]
        note = f"coupled: all lose the same channels, limited by {', '.join(limiting)} at {target:g}"
    else:
        note = "coupled: all lose the same channels" if len(members) > 1 else ""
    if k == 0:
        return [], note
    total = torch.zeros(channels, dtype=torch.float64)
    for layer, idxs, root_idxs in members:
        scores = _channel_scores(layer, model, schedule.criterion, stats, seed)
        if len(members) > 1:
            scores = scores / scores.sum().clamp_min(1e-300)
        total[torch.as_tensor(root_idxs)] += scores[torch.as_tensor(idxs)]
    order = torch.argsort(total, stable=True)
    return sorted(int(i) for i in order[:k]), note


def _check_grouped(group, graph, model: nn.Module) -> None:  # noqa: ANN001
    names = {m: n for n, m in model.named_modules()}
    for item in group:
        module = item.dep.target.module
        if isinstance(module, nn.modules.conv._ConvNd) and 1 < module.groups < module.in_channels:
            raise ShrinkError(f"layer {names.get(module, module)} is a grouped convolution ({module.groups} groups); "
                              "removing its input channels would break the grouping. Export without --shrink, or "
                              "leave the layers that feed it out of the schedule")


def _prune_with_tags(work: nn.Module, pruning: list) -> dict[str, torch.Tensor]:
    """Prune ``work`` in place; return, for each floating tensor, the flat indices of the entries it kept."""
    tensors = dict(work.named_parameters()) | dict(work.named_buffers())
    tagged = {n: t for n, t in tensors.items() if t.is_floating_point()}
    for t in tagged.values():
        t.data = torch.arange(t.numel(), dtype=torch.float64).view(t.shape)
    for group, chosen in pruning:
        group.prune(idxs=chosen)
    now = dict(work.named_parameters()) | dict(work.named_buffers())
    return {n: now[n].detach().reshape(-1).long() for n in tagged}
