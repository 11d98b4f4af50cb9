"""The steps every strategy is made of, each the engine's own: allocate a schedule at a target (``schedule_for``),
apply it to a model (``Schedule.masks`` then ``bake``, as ``measure_schedule`` applies a schedule), train with the
masks fixed (``finetune``), measure (``evaluate``), re-initialise, rewind.

A ``Trace`` is a strategy's curve as it is made: one row per measurement (the metrics on the eval set and the
sparsity counted from the weights themselves), with the training steps spent so far.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from analysis.core import criteria
from analysis.core.granularity import parse_granularity
from analysis.core.layers import Layer
from analysis.core.masks import bake
from analysis.core.metrics import evaluate
from analysis.core.modules import copy_model
from analysis.lab.context import LabContext, LabError
from analysis.schedule.allocate import ScheduleSetting, Target, schedule_for
from analysis.schedule.coupling import OUTPUTS
from analysis.schedule.finetune import finetune
from analysis.schedule.schedule import Schedule
from analysis.schedule.totals import Accountant
from analysis.workload.models import load_state

Masks = dict[str, torch.Tensor]


@dataclass
class Trace:
    """A strategy's curve so far: rows of ``phase, step, event, sparsity`` and the metrics."""

    phase: str
    step: int = 0
    segments: int = 0
    rows: list[dict] = field(default_factory=list)

    def record(self, lab: LabContext, model: nn.Module, event: str = "", pruning: bool = False) -> dict:
        """Measure ``model`` now and add the row (the model's train/eval mode is kept); ``pruning``: the row right
        after a pruning step."""
        row = {"phase": self.phase, "step": self.step, "event": event, "pruning": pruning, **measure(lab, model)}
        self.rows.append(row)
        return row


def measure(lab: LabContext, model: nn.Module) -> dict:
    """The metrics of ``model`` on the eval set (against the dense outputs) and its global sparsity."""
    was = model.training
    model.eval()
    sums = evaluate(model, lab.workload.data.x, lab.workload.data.y, lab.dense_logits, lab.config.eval_batch_size,
                    lab.device)
    model.train(was)
    return {"sparsity": zero_fraction(model, lab.layers), **sums.metrics()}


def zero_fraction(model: nn.Module, layers: list[Layer]) -> float:
    """The fraction of the prunable weights that are exactly zero: the sparsity the model really has."""
    weights = [l.weight(model).detach() for l in layers]
    return sum(int((w == 0).sum()) for w in weights) / max(sum(w.numel() for w in weights), 1)


def train(lab: LabContext, trace: Trace, model: nn.Module, masks: Masks, steps: int, event: str = "") -> None:
    """``steps`` SGD steps on the training data with ``masks`` fixed, a curve point every ``lab.eval_every`` steps.

    Each call is one segment with a seed of its own (the data order and any dropout), so a run repeats exactly."""
    if steps <= 0:
        return
    if lab.train is None:
        raise LabError("training needs training data (--train-data)")
    c, every = lab.config, lab.eval_every

    def on_step(p) -> None:  # noqa: ANN001 - a FinetuneProgress
        trace.step += 1
        lab.tick()
        if p.step % every == 0 or p.step == p.steps:
            trace.record(lab, model, event)

    seed = c.seed + 7919 * trace.segments
    trace.segments += 1
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        finetune(model, masks, lab.train.x, lab.train.y, steps, lr=c.lr, batch_size=c.batch_size,
                 momentum=c.momentum, soft_targets=lab.soft_targets, seed=seed, device=lab.device, progress=on_step)


# ------------------------------------------------------------------------------------------------- pruning


def scan_key(criterion: str, granularity: str) -> str:
    """The name of the one-shot scan a (criterion, granularity) pair reads: its unit and its profile."""
    return f"sensitivity/{criterion}/{parse_granularity(granularity)}"


def output_layers(accountant: Accountant) -> tuple[str, ...]:
    """Layers whose output channels are the model's outputs (the classifier): the coupling keeps their group whole."""
    return tuple(name for g in accountant.coupling.groups if g.kept == OUTPUTS for name in g.layers)


def allocate_at(lab: LabContext, model: nn.Module, criterion: str, granularity: str, target: Target,
                stats: criteria.CalibrationStats | None = None) -> Schedule:
    """The schedule the lab's allocation makes for ``target`` on ``model`` as it is now: its weights ranked by
    ``criterion`` (``global`` and ``lamp`` read these scores), its channel graph, the scan of the pair."""
    c = lab.config
    accountant = Accountant.from_model(model, lab.example, lab.layers, criterion, granularity, stats, c.seed)
    scores = {l.name: criteria.importance(l, l.weight(model), criterion, stats, c.seed) for l in lab.layers}
    setting = ScheduleSetting(lab.profiles[scan_key(criterion, granularity)], lab.layers, accountant, scores)
    return schedule_for(setting, c.allocation, target)


def apply_schedule(lab: LabContext, model: nn.Module, schedule: Schedule, keep: Masks | None = None,
                   stats: criteria.CalibrationStats | None = None) -> Masks:
    """Prune ``model`` in place by ``schedule``; with ``keep`` (earlier masks), what was pruned stays pruned."""
    masks = schedule.masks(model, lab.layers, stats, lab.config.seed)
    if keep:
        masks = {**keep, **{n: m & keep[n] if n in keep else m for n, m in masks.items()}}
    bake(model, masks)
    return masks


def partial_target(target: Target, fraction: float, accountant: Accountant, geometric: bool) -> Target:
    """The target ``fraction`` of the way from dense: ``geometric`` removes the same share of what is left at each
    step (iterative pruning), else the same amount (the gradual schedule's polynomial reads it linearly)."""
    if fraction >= 1.0:
        return target
    if target.kind == "sparsity":
        value = 1 - (1 - target.value) ** fraction if geometric else target.value * fraction
        return Target("sparsity", value)
    total = accountant.weights if target.kind == "params" else accountant.flops
    kept = total * (target.value / total) ** fraction if geometric else total - (total - target.value) * fraction
    return Target(target.kind, kept)


def mask_schedule(masks: Masks, layers: list[Layer], granularity: str, criterion: str) -> Schedule:
    """The schedule a set of masks is: each layer's removed fraction of weights (or channels), for an export that
    ranks the zeroed weights first and so makes these very masks again."""
    gran = parse_granularity(granularity)
    sparsities = {}
    for layer in layers:
        mask = masks.get(layer.param_name)
        if mask is None or bool(mask.all()):
            continue
        if gran.structured:
            removed = float((~mask.reshape(mask.shape[0], -1).any(dim=1)).float().mean())
        else:
            removed = gran.fixed_sparsity or float((~mask).float().mean())
        sparsities[layer.name] = removed
    return Schedule(sparsities, criterion, str(gran))


# ---------------------------------------------------------------------------------------- starting points


def reinitialised(lab: LabContext) -> nn.Module:
    """A copy of the model with fresh, seeded initial weights (``reset_parameters`` of every module); a layer
    that keeps its trained weight is a ``LabError``."""
    model = lab.dense_copy()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(lab.config.seed)
        for module in model.modules():
            if callable(getattr(module, "reset_parameters", None)):
                module.reset_parameters()
    dense = dict(lab.workload.model.named_parameters())
    kept = [l.name for l in lab.layers if torch.equal(l.weight(model).detach().cpu(), dense[l.param_name].cpu())]
    if kept:
        raise LabError(f"pruning at initialization needs a re-initialised model, but layer {kept[0]} kept its "
                       "trained weights (its module has no reset_parameters: TorchScript or a custom parameter)")
    return model


def rewind_point(lab: LabContext, trace: Trace) -> tuple[dict[str, torch.Tensor], str]:
    """The weights IMP rewinds to, and where they came from: the user's checkpoint, or the dense weights after
    ``rewind_epochs`` of re-training (its steps count as pruning-phase training)."""
    model = lab.dense_copy()
    if lab.rewind is not None:
        load_state(model, lab.rewind, "the rewinding checkpoint")
        return _state(model), "the given checkpoint"
    steps = lab.steps(lab.config.rewind_epochs)
    train(lab, trace, model, {}, steps, "re-training for the rewinding point")
    return _state(model), f"the dense weights after {steps} steps of re-training (no checkpoint given)"


def rewind(model: nn.Module, state: dict[str, torch.Tensor], masks: Masks) -> None:
    """Put ``model`` back to ``state`` (weights and BatchNorm statistics) with ``masks`` applied."""
    model.load_state_dict(state)
    bake(model, masks)


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def restored(lab: LabContext, state: dict[str, torch.Tensor]) -> nn.Module:
    """A copy of the model holding ``state`` (a unit's stored model)."""
    model = copy_model(lab.workload.model)
    model.load_state_dict(state)
    return model.to(lab.device).eval()
