"""A lab run: its units in order, each computed unless it is already done and handed to a sink as it finishes.

The units of a lab, in the order they run:

- ``dense``: the dense model on the eval set;
- ``sensitivity/<criterion>/<granularity>``: a one-shot scan (every layer pruned alone) at the target's uniform
  sparsity, once per pair the strategies use: their per-layer spread, and the profile the ``sensitivity``
  allocation reads (then over the scan's default grid too);
- per strategy ``<name>/prune`` (the pruning phase, ending with the final mask and the initial drop),
  ``<name>/recover`` (fine-tuning with that mask fixed: the recovery curve; needs training data and a budget) and
  ``<name>/export`` (the pruned model exported to ONNX: size and latency).

Like the scan, the run is pure: it takes the units already done (``done``) and calls ``on_unit`` with each new
one, so the run store (``analysis.store.labs``) resumes a lab that was killed or cancelled. A unit's ``state``
(its model and masks) is what the strategy's next phase starts from; a done unit without it (the store drops
states once a lab is complete) is computed again when a later phase needs it: every unit is seeded, so it gives
the same numbers.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from analysis.core.data import EvalData
from analysis.core.granularity import parse_granularity
from analysis.core.version import environment
from analysis.deploy.export import (
    LATENCY_BATCHES,
    ExportError,
    VerificationError,
    export,
    file_cost,
    latency,
    to_onnx,
)
from analysis.lab.config import MIN_SCRATCH_EPOCHS, LabConfig
from analysis.lab.context import LabContext, LabError, LabStopped, prepare_lab
from analysis.lab.result import LabResult, scan_profile
from analysis.lab.steps import Trace, mask_schedule, measure, output_layers, restored, train
from analysis.lab.strategies import STRATEGIES, Strategy, get_strategy
from analysis.schedule.allocate import Bounds, allocate
from analysis.schedule.coupling import ShrinkError
from analysis.schedule.schedule import ScheduleError
from analysis.schedule.totals import Accountant
from analysis.sensitivity.config import DEFAULT_SPARSITIES, ScanConfig
from analysis.sensitivity.driver import scan
from analysis.workload.workload import Workload

PHASES = ("prune", "recover", "export")


@dataclass
class Unit:
    """One finished unit: its name, its result (JSON data) and, for a strategy's phase, the ``state`` its next
    phase starts from (``{"model": state dict, "masks": keep-masks}``)."""

    name: str
    result: dict
    state: dict | None = None


@dataclass
class LabProgress:
    """Where a lab stands: the unit in flight, units done of all, the share of the estimated work done, seconds
    so far and an estimate of the seconds left (``None`` until there is a rate to go by)."""

    unit: str
    units_done: int
    units: int
    fraction: float
    elapsed_s: float
    eta_s: float | None


def checked_strategies(config: LabConfig, trained: bool) -> list[Strategy]:
    """The strategies to run, checked against the training data (``trained``: there is some) and the budget
    (one-line ``LabError`` otherwise)."""
    strategies = [get_strategy(n) for n in config.strategies or STRATEGIES]
    needy = [s.name for s in strategies if s.trains]
    if not trained and needy:
        raise LabError(f"{', '.join(needy)} train{'s' if len(needy) == 1 else ''} while pruning and need"
                       f"{'s' if len(needy) == 1 else ''} training data (--train-data, e.g. sample:digits-train); "
                       "without it only the one-shot strategies run (--strategies unstructured,structured,2:4)")
    scratch = [s.name for s in strategies if s.from_scratch]
    if scratch and config.epochs < MIN_SCRATCH_EPOCHS:
        raise LabError(f"{scratch[0]} trains a re-initialised network from scratch: {config.epochs:g} epochs "
                       f"cannot tell it from its initialisation; give at least {MIN_SCRATCH_EPOCHS:g} epochs "
                       f"(--epochs) or leave {scratch[0]} out")
    return strategies


def plan_units(config: LabConfig, strategies: list[Strategy], trained: bool) -> list[str]:
    """The names of the lab's units, in the order they run (``trained``: there is training data)."""
    recover = trained and config.epochs > 0
    phases = [p for p in PHASES if p == "prune" or (p == "recover" and recover) or (p == "export" and config.export)]
    scans = list(dict.fromkeys(s.scan for s in strategies))
    return ["dense", *scans, *(f"{s.name}/{p}" for s in strategies for p in phases)]


def run_lab(workload: Workload, train_data: EvalData | None, config: LabConfig, *,
            rewind: dict[str, torch.Tensor] | None = None, done: dict[str, Unit] | None = None,
            on_unit: Callable[[Unit], None] | None = None, progress: Callable[[LabProgress], None] | None = None,
            should_stop: Callable[[], bool] | None = None) -> LabResult:
    """Run the strategies of ``config`` on ``workload`` (fine-tuning on ``train_data``) and return the result.

    ``rewind`` is the checkpoint IMP with rewinding goes back to (a state dict; default: the dense weights after
    ``rewind_epochs`` of re-training). ``done`` holds units already finished (skipped), ``on_unit`` receives each
    new one, ``progress`` is called after every unit and training step, and ``should_stop`` is asked as often:
    when it says yes the run ends there and the result is marked incomplete.

    Example::

        >>> from analysis import LabConfig, Target, load_data, load_workload, run_lab
        >>> workload = load_workload("sample:digits-mlp", "sample:digits")
        >>> config = LabConfig(Target("sparsity", 0.5), strategies=("unstructured", "imp"), epochs=0.5, rounds=2,
        ...                    round_epochs=0.25, export=False)
        >>> result = run_lab(workload, load_data("sample:digits-train"), config)
        >>> imp = result.strategy_summary("imp")
        >>> result.complete, result.strategies, round(imp["sparsity"], 2), imp["pruning_events"]
        (True, ['unstructured', 'imp'], 0.5, 2)
    """
    lab = prepare_lab(workload, train_data, config, rewind)
    return LabRun(lab, done or {}, on_unit, progress, should_stop).run()


class LabRun:
    """One run of a lab: its plan, the units done, the clock behind the progress, and how each unit is made."""

    def __init__(self, lab: LabContext, done: dict[str, Unit], on_unit: Callable[[Unit], None] | None,
                 progress: Callable[[LabProgress], None] | None, should_stop: Callable[[], bool] | None) -> None:
        self.lab = lab
        self.strategies = {s.name: s for s in checked_strategies(lab.config, lab.train is not None)}
        self.names = plan_units(lab.config, list(self.strategies.values()), lab.train is not None)
        self.done = dict(done)
        self.on_unit, self.progress, self.should_stop = on_unit, progress, should_stop
        self.costs = {name: self.cost(name) for name in self.names}
        self.resumed = sum(self.costs[n] for n in self.names if n in self.done)
        self.finished, self.current, self.steps, self.start = self.resumed, "dense", 0, time.perf_counter()
        lab.tick = self.tick

    def run(self) -> LabResult:
        complete = True
        try:
            for name in self.names:
                self.check_stop()
                if name in self.done:
                    self.absorb(self.done[name])
                    continue
                self.current, self.steps = name, 0
                self.finish(self.compute(name))
        except LabStopped:
            complete = False
        return self.result(complete)

    # ------------------------------------------------------------------------------------------- progress

    def cost(self, name: str) -> float:
        """The work a unit takes, in training steps (an evaluation of the eval set counted as its share of
        steps: a forward pass is about a third of a training step)."""
        lab = self.lab
        ev = len(lab.workload.data) / (3 * lab.config.batch_size)
        if name == "dense":
            return ev
        if name.startswith("sensitivity/"):
            return 2 * ev * len(lab.layers)
        strategy, phase = name.rsplit("/", 1)
        steps = {"prune": self.strategies[strategy].pruning_steps(lab), "recover": lab.steps(lab.config.epochs),
                 "export": 0}[phase]
        return steps + ev * (steps / lab.eval_every + (2 if phase == "prune" else 20 if phase == "export" else 0))

    def tick(self) -> None:
        """After a training step: stop if asked, say where the lab stands."""
        self.steps += 1
        self.check_stop()
        self.report()

    def check_stop(self) -> None:
        if self.should_stop is not None and self.should_stop():
            raise LabStopped()

    def report(self) -> None:
        if self.progress is None:
            return
        total = sum(self.costs.values()) or 1.0
        work = self.finished + min(self.steps, self.costs.get(self.current, 0.0))
        elapsed = time.perf_counter() - self.start
        eta = elapsed / (work - self.resumed) * (total - work) if work > self.resumed else None
        done = sum(1 for n in self.names if n in self.done)
        self.progress(LabProgress(self.current, done, len(self.names), min(work / total, 1.0), elapsed, eta))

    def finish(self, unit: Unit) -> None:
        """A unit is done: keep it, hand it to the sink, count its work."""
        self.done[unit.name] = unit
        if self.on_unit is not None:
            self.on_unit(unit)
        self.finished += self.costs.get(unit.name, 0.0)
        self.report()

    # ---------------------------------------------------------------------------------------------- units

    def absorb(self, unit: Unit) -> None:
        """A unit done earlier: a scan's profile is read back (the allocations need it)."""
        if unit.name.startswith("sensitivity/"):
            self.lab.profiles[unit.name] = scan_profile(unit.result)

    def compute(self, name: str) -> Unit:
        if name == "dense":
            return Unit(name, self.dense())
        if name.startswith("sensitivity/"):
            return self.scan_unit(name)
        strategy, phase = name.rsplit("/", 1)
        s = self.strategies[strategy]
        if phase == "prune":
            return self.prune(s)
        state = self.state_before(s, phase)
        return self.recover(s, state) if phase == "recover" else self.export(s, state)

    def state_before(self, s: Strategy, phase: str) -> dict:
        """The model and masks the phase starts from: the previous phase's, computed again if it was dropped."""
        previous = f"{s.name}/recover" if phase == "export" and f"{s.name}/recover" in self.names else f"{s.name}/prune"
        unit = self.done.get(previous)
        if unit is None or unit.state is None:
            unit = self.compute(previous)
            self.finish(unit)
        return unit.state

    def dense(self) -> dict:
        lab = self.lab
        return {"metrics": measure(lab, lab.dense_copy()), "steps_per_epoch": lab.steps_per_epoch,
                "eval_every": lab.eval_every, "train_samples": len(lab.train) if lab.train is not None else 0,
                "eval_samples": len(lab.workload.data), "layers": [l.to_meta() for l in lab.layers]}

    def scan_unit(self, name: str) -> Unit:
        """Every layer pruned alone at the target's uniform sparsity (and the default grid for the sensitivity
        allocation), with the pair's criterion and granularity; the classifier's outputs are left out of a
        structured scan, as the structured strategy keeps them."""
        lab, (_, criterion, granularity) = self.lab, name.split("/")
        model = lab.workload.model
        accountant = Accountant.from_model(model, lab.example, lab.layers, criterion, granularity, None, 0) \
            if parse_granularity(granularity).structured else Accountant(lab.layers)
        kept = output_layers(accountant)
        at = uniform_sparsity(lab, accountant, criterion, granularity, kept)
        fixed = parse_granularity(granularity).fixed_sparsity is not None
        grid = (at, *DEFAULT_SPARSITIES) if lab.config.allocation == "sensitivity" and not fixed else (at,)
        layers = tuple(l.name for l in lab.layers if l.name not in kept) if kept else None
        c = lab.config
        profile = scan(lab.workload, ScanConfig(criterion, granularity, grid, layers, batch_size=c.eval_batch_size,
                                                device=c.device, seed=c.seed, calib_samples=c.calib_samples))
        lab.profiles[name] = profile
        return Unit(name, {"sparsity": at, "table": json.loads(profile.table.to_json(orient="records")),
                           "meta": json.loads(json.dumps(profile.meta, default=str))})

    def prune(self, s: Strategy) -> Unit:
        lab, trace = self.lab, Trace("prune")
        pruned = s.prune(lab, trace)
        criterion = "l1" if s.structured else "magnitude"
        schedule = mask_schedule(pruned.masks, lab.layers, s.granularity, criterion)
        accountant = Accountant.from_model(pruned.model, lab.example, lab.layers, criterion, s.granularity)
        result = {"rows": trace.rows, "steps": trace.step, "notes": pruned.notes, "schedule": schedule.to_dict(),
                  "totals": accountant.totals(schedule).fractions()}
        return Unit(f"{s.name}/prune", result, _state(pruned.model, pruned.masks))

    def recover(self, s: Strategy, state: dict) -> Unit:
        lab = self.lab
        model, masks = restored(lab, state["model"]), state["masks"]
        trace = Trace("recover", step=int(self.done[f"{s.name}/prune"].result["steps"]))
        train(lab, trace, model, masks, lab.steps(lab.config.epochs), "recovery")
        return Unit(f"{s.name}/recover", {"rows": trace.rows, "steps": trace.step}, _state(model, masks))

    def export(self, s: Strategy, state: dict) -> Unit:
        """The final model exported to ONNX (shrunk for a structured strategy) and verified, its file against the
        dense model's (size, gzip size, ONNX Runtime latency, interleaved); an export that cannot be made is
        recorded as such."""
        lab, c = self.lab, self.lab.config
        model, data = restored(lab, state["model"]), lab.workload.data
        schedule = mask_schedule(state["masks"], lab.layers, s.granularity, "l1" if s.structured else "magnitude")
        with tempfile.TemporaryDirectory(prefix="prunescope-lab-") as tmp:
            pruned, dense = Path(tmp) / "pruned.onnx", Path(tmp) / "dense.onnx"
            try:
                report = export(model, schedule, data, pruned, model_spec=lab.workload.model_spec,
                                shrink_channels=s.structured, exporter=c.exporter, measure_latency=False, seed=c.seed)
            except (ExportError, ShrinkError, ScheduleError, VerificationError) as exc:
                return Unit(f"{s.name}/export", {"error": " ".join(str(exc).split())[:300]})
            to_onnx(lab.dense_copy().cpu(), data.x[:2], dense, report.exporter)
            timing = latency({"dense": dense, "pruned": pruned}, data.x[:max(LATENCY_BATCHES)].numpy(),
                             repeats=c.latency_repeats)
            costs = {"dense": asdict(file_cost(dense)), "pruned": asdict(report.pruned)}
        return Unit(f"{s.name}/export", {
            "mode": report.mode, "exporter": report.exporter, "passed": all(v.passed for v in report.verifications),
            **costs, "threads": 1, "latency": timing.to_dict(orient="records"),
            "exported": report.schedule.sparsities, "notes": report.notes})

    def result(self, complete: bool) -> LabResult:
        lab = self.lab
        meta = {"model": lab.workload.model_spec, "data": lab.workload.data.spec,
                "train": lab.train.spec if lab.train is not None else None, "metric": lab.metric,
                "strategies": list(self.strategies), "units": self.names, "complete": complete,
                "units_done": sum(1 for n in self.names if n in self.done), "versions": environment()}
        units = {n: self.done[n].result for n in self.names if n in self.done}
        return LabResult(lab.config, units, meta)


def uniform_sparsity(lab: LabContext, accountant: Accountant, criterion: str, granularity: str,
                     kept: tuple[str, ...]) -> float:
    """The sparsity the ``uniform`` allocation gives every layer for the lab's target (N:M: its fixed one)."""
    fixed = parse_granularity(granularity).fixed_sparsity
    if fixed is not None:
        return fixed
    schedule = allocate("uniform", lab.layers, lab.config.target, granularity=granularity, criterion=criterion,
                        bounds=Bounds(keep_dense=kept), accountant=accountant)
    if not schedule.sparsities:
        raise LabError(f"the target {lab.config.target} removes nothing from {lab.workload.model_spec}")
    return max(schedule.sparsities.values())


def _state(model: torch.nn.Module, masks: dict[str, torch.Tensor]) -> dict:
    return {"model": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
            "masks": {k: v.cpu() for k, v in masks.items()}}
