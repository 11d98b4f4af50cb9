"""Pruning strategies: one small class per strategy, registered once by name; the CLI's choices, the dashboard's
options and the lab's columns come from the registry.

Every strategy turns the dense model into a pruned model at the lab's target, with the allocation the user
picked (``uniform``, ``global``, ``lamp``, ``erk`` or ``sensitivity``: the per-layer sparsities), and ends with the
*final mask*: what it returns is measured right away (the initial drop), then fine-tuned with that mask fixed (the
recovery curve). Training a strategy does before its final mask (IMP's rounds, the gradual schedule) is its
pruning phase; its steps are counted.

- ``unstructured``: one-shot magnitude pruning of single weights (Han et al. 2015).
- ``structured``: one-shot channel pruning by L1 norm (Li et al. 2017), masks made the way a schedule's masks are
  made for measurement and export; the classifier's output channels are kept.
- ``2:4``: two of every four weights along the input dimension (N:M), every layer that takes it: the sparsity is
  fixed at one half, whatever the target.
- ``imp``: iterative magnitude pruning (Frankle & Carbin 2019): ``rounds`` pruning steps, each removing the same
  share of what is left, ``round_epochs`` of training between two of them.
- ``imp-rewind``: IMP whose surviving weights go back to an early point after every pruning step (Frankle et al.
  2020): the user's checkpoint, or the dense weights after ``rewind_epochs`` of re-training when none is given.
- ``gradual``: gradual magnitude pruning during training (Zhu & Gupta 2017): ``gradual_steps`` pruning steps over
  ``gradual_epochs``, sparsity ``s_t = S (1 - (1 - t/n)**3)``.
- ``snip``: pruning at initialisation (Lee et al. 2019): a re-initialised copy, connection sensitivity ``|w * dL/dw|``
  (the ``taylor`` criterion) on training batches, then trained from scratch with the mask fixed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from torch import nn

from analysis.core import criteria
from analysis.core.data import EvalData
from analysis.core.granularity import parse_granularity, supports
from analysis.lab.context import LabContext, LabError
from analysis.lab.steps import (
    Masks,
    Trace,
    allocate_at,
    apply_schedule,
    partial_target,
    reinitialised,
    rewind,
    rewind_point,
    scan_key,
    train,
)
from analysis.schedule.schedule import Schedule
from analysis.schedule.totals import Accountant


@dataclass
class Pruned:
    """What a strategy's pruning phase ends with: the model at the target, its final mask, notes for the user."""

    model: nn.Module
    masks: Masks
    notes: list[str] = field(default_factory=list)


class Strategy:
    """One way to reach the target. ``family`` is the article's column it belongs to (``None``: none);
    ``trains``: it needs training data to prune at all; ``from_scratch``: it trains a re-initialised network."""

    name: ClassVar[str]
    title: ClassVar[str]
    summary: ClassVar[str]
    family: ClassVar[str | None] = "unstructured"
    criterion: ClassVar[str] = "magnitude"
    granularity: ClassVar[str] = "unstructured"
    trains: ClassVar[bool] = False
    from_scratch: ClassVar[bool] = False

    @property
    def scan(self) -> str:
        """The one-shot scan this strategy reads (its allocation, its per-layer spread)."""
        return scan_key(self.criterion, self.granularity)

    @property
    def structured(self) -> bool:
        return parse_granularity(self.granularity).structured

    def pruning_steps(self, lab: LabContext) -> int:
        """Training steps before the final mask."""
        return 0

    def prune(self, lab: LabContext, trace: Trace) -> Pruned:
        """The model at the target with its final mask; measurements go on ``trace``."""
        raise NotImplementedError


STRATEGY_CLASSES: dict[str, type[Strategy]] = {}


def register(cls: type[Strategy]) -> type[Strategy]:
    """Add a strategy class to the registry under its ``name`` (a decorator)."""
    STRATEGY_CLASSES[cls.name] = cls
    return cls


def one_shot(lab: LabContext, trace: Trace, criterion: str, granularity: str) -> Pruned:
    """The dense model pruned at once to the target."""
    model = lab.dense_copy()
    masks = apply_schedule(lab, model, allocate_at(lab, model, criterion, granularity, lab.config.target))
    trace.record(lab, model, "pruned", pruning=True)
    return Pruned(model, masks)


@register
class Unstructured(Strategy):
    name, title = "unstructured", "One-shot unstructured"
    summary = "magnitude, single weights, pruned at once"

    def prune(self, lab: LabContext, trace: Trace) -> Pruned:
        return one_shot(lab, trace, self.criterion, self.granularity)


@register
class Structured(Strategy):
    name, title, family = "structured", "One-shot structured", "structured"
    summary = "whole output channels by L1 norm, pruned at once (the classifier's outputs kept)"
    criterion, granularity = "l1", "channel"

    def prune(self, lab: LabContext, trace: Trace) -> Pruned:
        return one_shot(lab, trace, self.criterion, self.granularity)


@register
class NM(Strategy):
    name, title, family = "2:4", "2:4 (N:M)", None
    summary = "two of every four weights kept along the input dimension, every layer that takes it"
    granularity = "2:4"

    def prune(self, lab: LabContext, trace: Trace) -> Pruned:
        gran = parse_granularity(self.granularity)
        sparsities = {l.name: gran.fixed_sparsity for l in lab.layers if supports(gran, l.shape) is None}
        if not sparsities:
            raise LabError(f"no layer of {lab.workload.model_spec} takes {gran}: their input dimensions are not "
                           f"multiples of {gran.m}")
        model = lab.dense_copy()
        masks = apply_schedule(lab, model, Schedule(sparsities, self.criterion, str(gran)))
        row = trace.record(lab, model, "pruned", pruning=True)
        return Pruned(model, masks, [f"{gran} prunes exactly {gran.fixed_sparsity:g} of each layer that takes it: "
                                     f"global sparsity {row['sparsity']:.4f} whatever the target "
                                     f"({lab.config.target})"])


@register
class IMP(Strategy):
    name, title, trains = "imp", "IMP", True
    summary = "iterative magnitude pruning: rounds of pruning and training, the same share of what is left each time"
    rewinds: ClassVar[bool] = False

    def pruning_steps(self, lab: LabContext) -> int:
        return (lab.config.rounds - 1) * lab.steps(lab.config.round_epochs)

    def prune(self, lab: LabContext, trace: Trace) -> Pruned:
        c, model, keep, notes = lab.config, lab.dense_copy(), None, []
        if self.rewinds:
            state, source = rewind_point(lab, trace)
            notes.append(f"rewinding point: {source}")
        accountant = Accountant(lab.layers)
        for r in range(1, c.rounds + 1):
            target = partial_target(c.target, r / c.rounds, accountant, geometric=True)
            keep = apply_schedule(lab, model, allocate_at(lab, model, self.criterion, self.granularity, target), keep)
            if self.rewinds:
                rewind(model, state, keep)
            trace.record(lab, model, f"round {r} of {c.rounds}: {target}" + (", rewound" if self.rewinds else ""),
                         pruning=True)
            if r < c.rounds:
                train(lab, trace, model, keep, lab.steps(c.round_epochs), f"round {r} training")
        return Pruned(model, keep, notes)


@register
class IMPRewind(IMP):
    name, title = "imp-rewind", "IMP + rewinding"
    summary = "IMP whose surviving weights go back to an early point after every pruning step"
    rewinds = True

    def pruning_steps(self, lab: LabContext) -> int:
        rewinding = 0 if lab.rewind is not None else lab.steps(lab.config.rewind_epochs)
        return super().pruning_steps(lab) + rewinding


@register
class Gradual(Strategy):
    name, title, trains = "gradual", "Gradual (GMP)", True
    summary = "gradual magnitude pruning while training, a polynomial sparsity schedule"

    def interval(self, lab: LabContext) -> int:
        """Training steps between two pruning steps."""
        n = lab.config.gradual_steps
        return max(1, round(lab.steps(lab.config.gradual_epochs) / (n - 1))) if n > 1 else 0

    def pruning_steps(self, lab: LabContext) -> int:
        return (lab.config.gradual_steps - 1) * self.interval(lab)

    def prune(self, lab: LabContext, trace: Trace) -> Pruned:
        c, model, keep = lab.config, lab.dense_copy(), None
        accountant, n = Accountant(lab.layers), c.gradual_steps
        for k in range(1, n + 1):
            target = partial_target(c.target, 1 - (1 - k / n) ** 3, accountant, geometric=False)
            keep = apply_schedule(lab, model, allocate_at(lab, model, self.criterion, self.granularity, target), keep)
            trace.record(lab, model, f"step {k} of {n}: {target}", pruning=True)
            if k < n:
                train(lab, trace, model, keep, self.interval(lab), "gradual pruning")
        return Pruned(model, keep)


@register
class SNIP(Strategy):
    name, title, family = "snip", "At init (SNIP)", "init"
    summary = "connection sensitivity |w * dL/dw| on a re-initialised copy, then trained from scratch"
    criterion, trains, from_scratch = "taylor", True, True

    def prune(self, lab: LabContext, trace: Trace) -> Pruned:
        model = reinitialised(lab)
        stats = criteria.calibration_stats(model, lab.layers, labelled_train(lab), self.criterion,
                                           lab.config.calib_samples, lab.config.batch_size, lab.device)
        schedule = allocate_at(lab, model, self.criterion, self.granularity, lab.config.target, stats)
        masks = apply_schedule(lab, model, schedule, stats=stats)
        trace.record(lab, model, "pruned at initialisation", pruning=True)
        return Pruned(model, masks, [f"connection sensitivity on {min(len(lab.train), lab.config.calib_samples)} "
                                     "training samples of a re-initialised copy"])


def labelled_train(lab: LabContext) -> EvalData:
    """The training data with labels: its own, else the dense model's top-1 (SNIP's gradient needs a target)."""
    train_data = lab.train
    if train_data.y is not None:
        return train_data
    return EvalData(train_data.x, lab.soft_targets.argmax(dim=-1), train_data.spec)


STRATEGIES = tuple(STRATEGY_CLASSES)


def get_strategy(name: str) -> Strategy:
    """The strategy registered as ``name``; an unknown name is a ``ValueError`` listing the known ones."""
    if name not in STRATEGY_CLASSES:
        raise ValueError(f"unknown strategy {name!r}; choose from {', '.join(STRATEGIES)}")
    return STRATEGY_CLASSES[name]()
