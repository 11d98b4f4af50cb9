"""Close the predict-then-check loop: measure real schedules of a scan and fit how its drops combine.

``calibrate`` builds schedules from a scan folder (each method at each target global sparsity, with the
scan's criterion and granularity), measures each one on the model for real (``measure_schedule``), and
fits the ``calibrated`` prediction model on the measurements. ``save`` writes ``DIR/calibration.json``, which
``Predictor.from_scan`` (and so ``prunescope schedule`` and the dashboard) then predicts with, and
``DIR/calibration.csv``, one row per measured schedule with what each model predicted and its error.

The calibrated column of the table is honest: each schedule is predicted by a power fitted on the *other*
schedules (leave-one-out), so its error is what to expect on a schedule the fit has not seen. The power
written to ``calibration.json`` is fitted on all of them.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from torch import nn

from analysis.core.batchnorm import has_batchnorm
from analysis.core.data import EvalData
from analysis.core.profile import SensitivityProfile
from analysis.schedule.allocate import METHODS, Target, allocate, scan_setting
from analysis.schedule.measure import measure_schedule
from analysis.schedule.predict import MODELS, Predictor, scan_fingerprint
from analysis.schedule.schedule import Schedule
from analysis.workload.workload import Workload

DEFAULT_TARGETS = (0.3, 0.5, 0.7, 0.9)
DEFAULT_METHODS = ("uniform", "sensitivity")
CALIBRATION_JSON = "calibration.json"
CALIBRATION_CSV = "calibration.csv"


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
        """What ``calibration.json`` holds: the predictor's settings (read by ``from_scan``) and the evidence."""
        return {**self.predictor.calibration(), "schedules": len(self.samples), "mae": self.mae, **self.info}

    def save(self, scan_dir: str | Path) -> tuple[Path, Path]:
        """Write ``calibration.json`` and ``calibration.csv`` into the scan folder."""
        scan_dir = Path(scan_dir)
        json_path, csv_path = scan_dir / CALIBRATION_JSON, scan_dir / CALIBRATION_CSV
        json_path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        self.table.to_csv(csv_path, index=False)
        return json_path, csv_path


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


def build_schedules(scan_dir: str | Path, targets: Sequence[float], methods: Sequence[str],
                    model_spec: str | None = None, metric: str | None = None,
                    model: nn.Module | None = None) -> list[tuple[str, float, Schedule]]:
    """``(method, target, schedule)`` for every method and target, from the scan's profile.

    Every method may prune only the layers the scan measured, so that every schedule can be predicted.
    """
    setting = scan_setting(str(scan_dir), need_weights=any(m in ("global", "lamp") for m in methods),
                           model_spec=model_spec, model=model)
    meta = setting.profile.meta
    out = []
    for method in methods:
        for target in targets:
            schedule = allocate(method, setting.layers, Target("sparsity", float(target)),
                                granularity=meta.get("granularity", "unstructured"),
                                criterion=meta.get("criterion", "magnitude"), accountant=setting.accountant,
                                weights=setting.weights, profile=setting.profile, metric=metric,
                                allocatable=setting.profile.layers)
            schedule.meta.update({"scan": str(scan_dir), "model": setting.model_spec, "data": meta.get("data")})
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


def calibrate(scan_dir: str | Path, workload: Workload, *, targets: Sequence[float] = DEFAULT_TARGETS,
              methods: Sequence[str] = DEFAULT_METHODS, bn_recalibrate: bool = False, train: EvalData | None = None,
              metric: str | None = None, model_spec: str | None = None, batch_size: int = 128,
              device: str = "cpu", seed: int = 0,
              progress: Callable[[Sample], None] | None = None) -> Calibration:
    """Measure ``methods`` x ``targets`` schedules of a scan on ``workload`` and fit the calibrated model.

    ``workload`` should be the scanned model on the scanned data (the profile's dense baseline is what the
    predictions start from). The metric is ``metric`` (accuracy or agreement; default: accuracy if the scan
    had labels); it is measured after pruning, or after BatchNorm recalibration with ``bn_recalibrate``.
    """
    targets, methods = parse_targets(targets), parse_methods(methods)
    profile = SensitivityProfile.load(scan_dir)
    if metric not in (None, "accuracy", "agreement"):
        raise ValueError(f"calibration fits accuracy or agreement, not {metric}")
    stage = "bn_recalibrated" if bn_recalibrate and has_batchnorm(workload.model) else "pruned"
    predictor = Predictor(profile, metric, stage=stage)
    calib_samples = (profile.meta.get("config") or {}).get("calib_samples", 256)
    samples, dense = [], None
    for method, target, schedule in build_schedules(scan_dir, targets, methods, model_spec, predictor.metric,
                                                      workload.model):
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
    info = {"scan": scan_fingerprint(scan_dir), "stage": stage, "targets": list(targets), "methods": list(methods),
            "model_spec": workload.model_spec, "data": workload.data.spec, "dense_measured": dense,
            "dense_scan": predictor.baseline}
    return fit(predictor, samples, info)


def read_calibration(scan_dir: str | Path) -> tuple[dict, pd.DataFrame] | None:
    """``calibration.json`` and ``calibration.csv`` of a scan folder, or ``None`` if it was never calibrated."""
    scan_dir = Path(scan_dir)
    json_path, csv_path = scan_dir / CALIBRATION_JSON, scan_dir / CALIBRATION_CSV
    if not json_path.is_file():
        return None
    try:
        info = json.loads(json_path.read_text())
    except ValueError as exc:
        raise ValueError(f"{json_path} is not a calibration file: {exc}") from None
    table = pd.read_csv(csv_path) if csv_path.is_file() else pd.DataFrame()
    return info, table


__all__ = ["CALIBRATION_CSV", "CALIBRATION_JSON", "DEFAULT_METHODS", "DEFAULT_TARGETS", "Calibration", "Sample",
           "build_schedules", "calibrate", "fit", "parse_methods", "parse_targets", "read_calibration"]
