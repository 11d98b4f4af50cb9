"""Close the predict-then-check loop: measure real schedules of a scan and fit how its drops combine.

``calibrate`` builds schedules from a scan's profile (each method at each target global sparsity, with the
scan's criterion and granularity), measures each one on the model for real (``measure_schedule``), and
fits the ``calibrated`` prediction model on the measurements. ``Calibration.to_dict`` is what
``Predictor.from_profile`` predicts with from then on (the CLI keeps it as ``DIR/calibration.json`` next to the
scan, the dashboard as an artifact of the run); ``Calibration.table`` has one row per measured schedule with
what each model predicted and its error.

The calibrated column of the table is honest: each schedule is predicted by a power fitted on the *other*
schedules (leave-one-out), so its error is what to expect on a schedule the fit has not seen. The power
written to ``calibration.json`` is fitted on all of them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import pandas as pd

from analysis.core.batchnorm import has_batchnorm
from analysis.core.data import EvalData
from analysis.core.metric_table import metric_info
from analysis.core.profile import SensitivityProfile
from analysis.schedule.allocate import METHODS, ScheduleSetting, Target, allocate, needs_model, schedule_setting
from analysis.schedule.measure import measure_schedule
from analysis.schedule.predict import MODELS, Predictor
from analysis.schedule.schedule import Schedule
from analysis.workload.workload import Workload

DEFAULT_TARGETS = (0.3, 0.5, 0.7, 0.9)
DEFAULT_METHODS = ("uniform", "sensitivity")


@dataclass
class Sample:
    """One measured schedule: how it was made and the metric it measured at the calibrated stage."""

    method: str
    target: float
    schedule: Schedule
    measured: float
    totals: dict = field(default_factory=dict)


@dataclass
class Calibration:
    """The fitted predictor, the measured samples, one row per sample, and what it was fitted on."""

    predictor: Predictor
    samples: list[Sample]
    table: pd.DataFrame
    info: dict = field(default_factory=dict)

    @property
    def mae(self) -> dict[str, float]:
        """Mean absolute error of each model over the samples: additive, multiplicative, calibrated
        (leave-one-out), and ``calibrated_fitted`` (the power fitted on all samples, the one that is saved)."""
        out = {m: float(self.table[f"error_{m}"].abs().mean()) for m in MODELS}
        fitted = [abs(self.predictor.predict(s.schedule) - s.measured) for s in self.samples]
        out["calibrated_fitted"] = float(sum(fitted) / len(fitted))
        return out

    def to_dict(self) -> dict:
        """The predictor's settings (what ``Predictor.from_profile`` reads) and the evidence."""
        return {**self.predictor.calibration(), "schedules": len(self.samples), "mae": self.mae, **self.info}


def parse_targets(text: str | Sequence[float]) -> tuple[float, ...]:
    """Target global sparsities from ``"0.3,0.5"`` (or a sequence); each a number in (0, 1)."""
    parts = [p.strip() for p in text.split(",")] if isinstance(text, str) else list(text)
    out = []
    for part in parts:
        if part == "":
            continue
        try:
            value = float(part)
        except (TypeError, ValueError):
            raise ValueError(f"target {part!r} is not a number in (0, 1)") from None
        if not (math.isfinite(value) and 0.0 < value < 1.0):
            raise ValueError(f"target {part!r} is outside (0, 1): a target is the fraction of weights removed")
        out.append(value)
    if not out:
        raise ValueError("give at least one target sparsity, such as 0.5,0.7")
    return tuple(dict.fromkeys(out))


def parse_methods(text: str | Sequence[str]) -> tuple[str, ...]:
    """Allocation methods from ``"uniform,sensitivity"`` (or a sequence), each one of ``METHODS``."""
    parts = [p.strip() for p in text.split(",")] if isinstance(text, str) else [str(p).strip() for p in text]
    parts = [p for p in parts if p]
    for p in parts:
        if p not in METHODS:
            raise ValueError(f"unknown method {p!r}; choose from {', '.join(METHODS)}")
    if not parts:
        raise ValueError("give at least one method, such as uniform,sensitivity")
    return tuple(dict.fromkeys(parts))


def build_schedules(setting: ScheduleSetting, targets: Sequence[float], methods: Sequence[str],
                    metric: str | None = None) -> list[tuple[str, float, Schedule]]:
    """``(method, target, schedule)`` for every method and target, from the scan's profile.

    Every method may prune only the layers the scan measured, so that every schedule can be predicted.
    """
    out = []
    for method in methods:
        for target in targets:
            schedule = allocate(method, setting.layers, Target("sparsity", float(target)),
                                granularity=setting.profile.meta.get("granularity", "unstructured"),
                                criterion=setting.profile.meta.get("criterion", "magnitude"),
                                accountant=setting.accountant, weights=setting.weights, profile=setting.profile,
                                metric=metric, allocatable=setting.profile.layers)
            schedule.meta.update({"model": setting.profile.meta.get("model"), "data": setting.profile.meta.get("data")})
            out.append((method, float(target), schedule))
    return out


def fit(predictor: Predictor, samples: Sequence[Sample], info: dict | None = None) -> Calibration:
    """Fit the calibrated model on ``samples`` and tabulate each model's predictions and errors.

    Pure and fast (no model runs): the dashboard can call it on samples it measured itself.
    """
    if len(samples) < 2:
        raise ValueError(f"calibration needs at least two measured schedules, got {len(samples)}: give more "
                         "targets or methods")
    cases = [(s.schedule, s.measured) for s in samples]
    rows = []
    for i, s in enumerate(samples):
        loo = predictor.fit(cases[:i] + cases[i + 1:])
        predicted = {"additive": predictor.with_model("additive").predict(s.schedule),
                     "multiplicative": predictor.with_model("multiplicative").predict(s.schedule),
                     "calibrated": loo.predict(s.schedule)}
        rows.append({"method": s.method, "target": s.target,
                     "global_sparsity": s.totals.get("global_sparsity", math.nan), "measured": s.measured,
                     **{f"predicted_{m}": v for m, v in predicted.items()},
                     **{f"error_{m}": v - s.measured for m, v in predicted.items()},
                     "loo_power": loo.power})
    return Calibration(predictor.fit(cases), list(samples), pd.DataFrame(rows), dict(info or {}))


def calibrate(profile: SensitivityProfile, workload: Workload, *, targets: Sequence[float] = DEFAULT_TARGETS,
              methods: Sequence[str] = DEFAULT_METHODS, bn_recalibrate: bool = False, train: EvalData | None = None,
              metric: str | None = None, batch_size: int = 128, device: str = "cpu", seed: int = 0,
              progress: Callable[[Sample], None] | None = None) -> Calibration:
    """Measure ``methods`` x ``targets`` schedules of a scan (its ``profile``) on ``workload`` and fit the
    calibrated model.

    ``workload`` should be the scanned model on the scanned data (the profile's dense baseline is what the
    predictions start from). The metric is ``metric`` (accuracy or agreement; default: accuracy if the scan
    had labels); it is measured after pruning, or after BatchNorm recalibration with ``bn_recalibrate``.

    Example::

        >>> from analysis import ScanConfig, calibrate, load_workload, scan
        >>> workload = load_workload("sample:digits-mlp", "sample:digits")
        >>> profile = scan(workload, ScanConfig(sparsities=(0.3, 0.6, 0.9)))
        >>> result = calibrate(profile, workload, targets=(0.5, 0.8))
        >>> result.predictor.model, len(result.table)
        ('calibrated', 4)
    """
    targets, methods = parse_targets(targets), parse_methods(methods)
    if metric is not None and not metric_info(metric).bounded:
        raise ValueError(f"calibration fits accuracy or agreement, not {metric}")
    stage = "bn_recalibrated" if bn_recalibrate and has_batchnorm(workload.model) else "pruned"
    predictor = Predictor(profile, metric, stage=stage)
    calib_samples = (profile.meta.get("config") or {}).get("calib_samples", 256)
    setting = schedule_setting(profile, workload.model, workload.data) if needs_model(profile, methods) else \
        schedule_setting(profile)
    samples, dense = [], None
    for method, target, schedule in build_schedules(setting, targets, methods, predictor.metric):
        m = measure_schedule(workload, schedule, bn_recalibrate=bn_recalibrate, train=train,
                             batch_size=batch_size, calib_samples=calib_samples,
                             device=device, seed=seed)
        if m.dense.get(predictor.metric) is None:
            raise ValueError(f"{workload.data.spec} has no labels: calibrate agreement instead of accuracy")
        dense = m.dense[predictor.metric]
        sample = Sample(method, target, schedule, float(m.stages[stage][predictor.metric]), m.totals)
        samples.append(sample)
        if progress is not None:
            progress(sample)
    info = {"stage": stage, "targets": list(targets), "methods": list(methods), "model_spec": workload.model_spec,
            "data": workload.data.spec, "dense_measured": dense, "dense_scan": predictor.baseline}
    return fit(predictor, samples, info)


__all__ = ["DEFAULT_METHODS", "DEFAULT_TARGETS", "Calibration", "Sample", "build_schedules", "calibrate", "fit",
           "parse_methods", "parse_targets"]
