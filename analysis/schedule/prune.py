"""A schedule applied to a model: the one place that decides what Measure, ``evaluate``, ``calibrate`` and the
export prune, so that a measured schedule is the exported one.

- Unstructured and N:M schedules: a copy of the model with the masks baked into its weights.
- Channel schedules are first resolved to the model's coupled groups (``Accountant.resolve``). Where the model can
  be shrunk, ``prune(..., shrink=True)`` removes the channels and heads for real (``shrink.plan``), and
  ``shrink=False`` gives the masked reference: the same architecture computing the same function. Where it cannot
  be shrunk (``Coupling.shrinkable`` says why), each layer's rows are masked, as the masked export writes them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from analysis.core import criteria
from analysis.core.granularity import parse_granularity
from analysis.core.layers import Layer
from analysis.core.masks import bake
from analysis.core.modules import copy_model
from analysis.schedule.schedule import Schedule
from analysis.schedule.shrink import ShrinkPlan, plan
from analysis.schedule.totals import Accountant


@dataclass
class Pruned:
    """The pruned copy (``model``), the masks fine-tuning must keep (``keep``; none for a channel schedule's shrunk
    model or masked reference), the schedule as applied, how it was resolved (``notes``) and, for a channel schedule
    of a model that can be shrunk, the shrink plan."""

    model: nn.Module
    keep: dict[str, torch.Tensor]
    schedule: Schedule
    notes: list[str] = field(default_factory=list)
    shrunk: bool = False
    plan: ShrinkPlan | None = None


def resolve_schedule(schedule: Schedule, accountant: Accountant) -> tuple[Schedule, list[str]]:
    """``schedule`` as the model takes it, and how it was resolved: a channel schedule's per-layer sparsities after
    ``Coupling.resolve`` (the request kept in ``meta['requested']`` when it differs); other schedules as they are.

    Example::

        >>> from analysis import Accountant, Schedule, find_layers, load_workload, resolve_schedule
        >>> w = load_workload("sample:digits-resnet", "sample:digits", count=8)
        >>> layers = find_layers(w.model, w.data.x[:1])
        >>> accountant = Accountant.from_model(w.model, w.data.x[:1], layers, "l1", "channel")
        >>> applied, notes = resolve_schedule(Schedule({"stem.0": 0.5, "layer1.conv2": 0.25}, "l1", "channel"),
        ...                                   accountant)
        >>> applied.sparsities
        {'stem.0': 0.25, 'layer1.conv2': 0.25}
        >>> notes[0].split(":")[0]
        'stem.0, layer1.conv2'
    """
    if not parse_granularity(schedule.granularity).structured:
        return schedule, []
    resolved = accountant.resolve(schedule)
    meta = dict(schedule.meta)
    if resolved.sparsities != schedule.sparsities:
        meta["requested"] = dict(schedule.sparsities)
    return Schedule(resolved.sparsities, schedule.criterion, schedule.granularity, meta), resolved.notes


def prune(model: nn.Module, layers: list[Layer], schedule: Schedule, accountant: Accountant,
          stats: criteria.CalibrationStats | None = None, seed: int = 0, *, shrink: bool = True) -> Pruned:
    """A pruned copy of ``model`` (``model`` is not changed); see the module docstring for what each schedule does.

    ``accountant`` is the model's (``Accountant.from_model`` with the schedule's criterion and granularity), so
    channels are chosen and counted as the totals count them.
    """
    applied, notes = resolve_schedule(schedule, accountant)
    coupling = accountant.coupling
    if parse_granularity(schedule.granularity).structured and not coupling.shrinkable:
        shrink_plan = plan(model, coupling, accountant.resolve(applied))
        if shrink:
            return Pruned(shrink_plan.build(model), {}, applied, notes, True, shrink_plan)
        return Pruned(shrink_plan.masked(model), {}, applied, notes, False, shrink_plan)
    keep = applied.masks(model, layers, stats, seed)
    work = copy_model(model)
    bake(work, keep)
    return Pruned(work.eval(), keep, applied, notes)

