"""Predict the metric of any schedule from a sensitivity profile, in microseconds.

A profile measures each layer alone. A schedule prunes many layers at once; how their drops combine is the
question. Each layer's drop at sparsity ``s`` is read off its measured curve (linear between measured
sparsities; past the last one, linear towards chance level at ``s = 1``). Then:

- ``additive``: the drops add up, ``metric = dense - sum(d_i)``. Simple, and optimistic once several layers
  are pruned hard (drops compound).
- ``multiplicative``: each layer keeps a fraction ``r_i`` of the accuracy above chance, and those fractions
  multiply: ``metric = floor + (dense - floor) * prod(r_i)``. No parameter; saturates at chance.
- ``calibrated``: the multiplicative model with a fitted power: with ``u_i = -log r_i``,
  ``metric = floor + (dense - floor) * exp(-(sum u_i**p)**(1/p))``. ``p`` is fitted on schedules whose metric
  was measured (``Predictor.fit``); ``p = 1`` is ``multiplicative``, ``p < 1`` means drops compound more.

Every model gives back the profile exactly when one layer alone is pruned at a measured sparsity.
``Curve.monotone`` is the curve made non-decreasing (isotonic regression), which allocation needs.

Without a calibration the default is ``additive``. On the bundled samples (BENCHMARKS.md, schedules section:
12 uniform and sensitivity schedules per model) ``multiplicative`` had the lower mean error on two samples of
three and the higher on the third, and the higher worst-case error on all three: not clearly better, so the
default stays. ``prunescope calibrate`` measures schedules of a scan and writes ``calibration.json``;
``Predictor.from_scan`` then predicts with the fitted ``calibrated`` model. ``stage`` says what a prediction
is of: the metric right after pruning (``pruned``), or after BatchNorm recalibration (``bn_recalibrated``)
when the scan or the calibration recalibrated.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from analysis.core.metric_table import HIGHER_IS_BETTER
from analysis.core.profile import SensitivityProfile

MODELS = ("additive", "multiplicative", "calibrated")
STAGES = ("pruned", "bn_recalibrated")
_TINY = 1e-12


def isotonic(y: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """The non-decreasing sequence closest to ``y`` in weighted least squares (pool adjacent violators)."""
    y = np.asarray(y, dtype=float)
    w = np.ones_like(y) if weights is None else np.asarray(weights, dtype=float)
    values, sizes, counts = [], [], []
    for yi, wi in zip(y, w):
        values.append(yi)
        sizes.append(wi)
        counts.append(1)
        while len(values) > 1 and values[-2] > values[-1]:
            v2, s2, c2 = values.pop(), sizes.pop(), counts.pop()
            v1, s1, c1 = values.pop(), sizes.pop(), counts.pop()
            values.append((v1 * s1 + v2 * s2) / (s1 + s2))
            sizes.append(s1 + s2)
            counts.append(c1 + c2)
    return np.repeat(values, counts)


@dataclass
class Curve:
    """One layer's measured drop (positive = worse) against sparsity, sparsity 0 first with drop 0."""

    sparsity: np.ndarray
    drop: np.ndarray
    monotone: np.ndarray
    full_drop: float

    def at(self, s: float) -> float:
        """The measured drop, interpolated; past the last measured sparsity, towards ``full_drop`` at 1."""
        last = self.sparsity[-1]
        if s <= last:
            return float(np.interp(s, self.sparsity, self.drop))
        d_last = self.drop[-1]
        return float(d_last + (self.full_drop - d_last) * (s - last) / max(1.0 - last, _TINY))

    @property
    def max_sparsity(self) -> float:
        return float(self.sparsity[-1])


def layer_curves(profile: SensitivityProfile, metric: str | None = None) -> dict[str, Curve]:
    """Each layer's drop curve from ``profile`` under ``metric`` (default: accuracy if labelled, else agreement)."""
    metric = metric or profile.default_metric
    _check_metric(profile, metric)
    df = profile.drop(metric)
    full = _full_drop(profile, metric)
    out = {}
    for layer, cells in df.groupby("layer", sort=False):
        cells = cells.sort_values("sparsity")
        s = cells["sparsity"].to_numpy(dtype=float, copy=True)
        d = cells["drop"].to_numpy(dtype=float, copy=True)
        if s[0] > 0.0:
            s, d = np.concatenate([[0.0], s]), np.concatenate([[0.0], d])
        d[0] = 0.0
        weights = np.ones_like(d)
        weights[0] = 1e6  # dense is dense: the fit keeps drop 0 at sparsity 0
        mono = np.maximum(isotonic(d, weights), 0.0)
        out[str(layer)] = Curve(s, d, mono, max(full, float(d.max())))
    return out


def _check_metric(profile: SensitivityProfile, metric: str) -> None:
    if metric not in HIGHER_IS_BETTER:
        raise ValueError(f"unknown metric {metric!r}; choose one of {', '.join(HIGHER_IS_BETTER)}")
    if metric == "accuracy" and not profile.labelled:
        raise ValueError("the profile was measured on data without labels: use agreement, loss or kl, not accuracy")
    if metric not in profile.meta.get("baseline", {}):
        raise ValueError(f"the profile has no dense baseline for {metric!r}")


def _floor(profile: SensitivityProfile, metric: str) -> float:
    """Chance level for accuracy/agreement (or the worst measured value, if lower)."""
    classes = profile.meta.get("num_classes") or 0
    chance = 1.0 / classes if classes else 0.0
    measured = profile.table[metric].dropna()
    return float(min(chance, measured.min())) if len(measured) else chance


def _full_drop(profile: SensitivityProfile, metric: str) -> float:
    """The drop of a layer removed entirely: down to chance for accuracy/agreement, else the worst measured."""
    df = profile.drop(metric)
    if HIGHER_IS_BETTER[metric] and metric in ("accuracy", "agreement"):
        return profile.baseline(metric) - _floor(profile, metric)
    return float(df["drop"].max()) if len(df) else 0.0


class Predictor:
    """Built once from a profile; ``predict(schedule)`` is then a handful of table look-ups.

    ``model`` is one of ``additive`` (default), ``multiplicative``, ``calibrated`` (with ``power``, see
    ``fit``). ``stage`` names the stage of a measurement the prediction stands for (see the module docstring).
    """

    def __init__(self, profile: SensitivityProfile, metric: str | None = None, model: str = "additive",
                 power: float = 1.0, stage: str | None = None) -> None:
        self.metric = metric or profile.default_metric
        if model not in MODELS:
            raise ValueError(f"unknown prediction model {model!r}; choose one of {', '.join(MODELS)}")
        if model != "additive" and self.metric not in ("accuracy", "agreement"):
            raise ValueError(f"the {model} model predicts accuracy or agreement, not {self.metric}")
        if not (math.isfinite(power) and power > 0):
            raise ValueError(f"power must be a positive number, got {power!r}")
        self.curves = layer_curves(profile, self.metric)
        self.baseline = profile.baseline(self.metric)
        self.higher_is_better = HIGHER_IS_BETTER[self.metric]
        self.floor = _floor(profile, self.metric) if self.metric in ("accuracy", "agreement") else 0.0
        self.model = model
        self.power = float(power)
        if stage is not None and stage not in STAGES:
            raise ValueError(f"unknown stage {stage!r}; choose one of {', '.join(STAGES)}")
        recalibrated = bool((profile.meta.get("config") or {}).get("bn_recalibrate"))
        self.stage = stage or ("bn_recalibrated" if recalibrated else "pruned")

    def with_model(self, model: str, power: float | None = None) -> "Predictor":
        """The same curves under another combination model."""
        other = object.__new__(Predictor)
        other.__dict__.update(self.__dict__)
        if model not in MODELS:
            raise ValueError(f"unknown prediction model {model!r}; choose one of {', '.join(MODELS)}")
        other.model, other.power = model, float(self.power if power is None else power)
        return other

    def drops(self, schedule: object) -> dict[str, float]:
        """Each pruned layer's own drop at its scheduled sparsity (layers the profile lacks raise)."""
        sparsities = getattr(schedule, "sparsities", schedule)
        out = {}
        for name, s in sparsities.items():
            s = float(s)
            if s <= 0.0:
                continue
            curve = self.curves.get(name)
            if curve is None:
                raise ValueError(f"the profile has no measurements for layer {name!r}")
            out[name] = curve.at(s)
        return out

    def unmeasured(self, schedule: object) -> list[str]:
        """The layers ``schedule`` prunes that the profile did not measure (``predict`` cannot use them)."""
        sparsities = getattr(schedule, "sparsities", schedule)
        return [name for name, s in sparsities.items() if float(s) > 0.0 and name not in self.curves]

    def predict(self, schedule: object) -> float:
        """The predicted metric of a ``Schedule`` or a plain ``{layer: sparsity}`` mapping."""
        return self._combine(list(self.drops(schedule).values()), self.model, self.power)

    def _combine(self, drops: list[float], model: str, power: float) -> float:
        if model == "additive" or not drops:
            total = sum(drops)
            value = self.baseline - total if self.higher_is_better else self.baseline + total
            return min(max(value, 0.0), 1.0) if self.metric in ("accuracy", "agreement") else value
        span = max(self.baseline - self.floor, _TINY)
        u = [-math.log(max((span - d) / span, _TINY)) for d in drops]
        # Losses combine with the power; the rare gains (a layer that measured better than dense) just add.
        total_u = sum(x ** power for x in u if x > 0) ** (1.0 / power) + sum(x for x in u if x < 0)
        return min(self.floor + span * math.exp(-max(total_u, -50.0)), 1.0)

    def fit(self, measured: list[tuple[object, float]]) -> "Predictor":
        """A ``calibrated`` copy whose power best fits ``measured`` ``(schedule, metric)`` pairs (least squares)."""
        if not measured:
            raise ValueError("fitting needs at least one measured schedule")
        cases = [(list(self.drops(sch).values()), float(value)) for sch, value in measured]
        grid = np.exp(np.linspace(math.log(0.05), math.log(8.0), 161))

        def error(p: float) -> float:
            return sum((self._combine(d, "calibrated", p) - v) ** 2 for d, v in cases)

        best = min(grid, key=error)
        lo, hi = best / 1.05, best * 1.05
        for _ in range(40):  # golden-section refinement around the best grid point
            a, b = hi - (hi - lo) / 1.618, lo + (hi - lo) / 1.618
            if error(a) < error(b):
                hi = b
            else:
                lo = a
        return self.with_model("calibrated", (lo + hi) / 2)

    def errors(self, measured: list[tuple[object, float]]) -> list[float]:
        """Prediction minus measurement for each ``(schedule, metric)`` pair."""
        return [self.predict(sch) - float(v) for sch, v in measured]

    # -------------------------------------------------------------------------------------------- files

    def calibration(self) -> dict:
        return {"metric": self.metric, "model": self.model, "power": self.power, "stage": self.stage}

    def save_calibration(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_text(json.dumps(self.calibration(), indent=2) + "\n")
        return path

    @classmethod
    def from_scan(cls, scan_dir: str | Path, metric: str | None = None) -> "Predictor":
        """The predictor of a scan folder: calibrated if ``calibration.json`` is there, else additive.

        A calibration fitted on another profile (the folder was scanned again since) or for another metric
        is ignored.
        """
        profile = SensitivityProfile.load(scan_dir)
        cal_path = Path(scan_dir) / "calibration.json"
        if cal_path.is_file():
            try:
                cal = json.loads(cal_path.read_text())
                if metric in (None, cal["metric"]) and cal.get("scan") in (None, scan_fingerprint(scan_dir)):
                    return cls(profile, cal["metric"], cal["model"], float(cal["power"]), cal.get("stage"))
            except (ValueError, KeyError, TypeError) as exc:
                raise ValueError(f"{cal_path} is not a calibration file: {exc}") from None
        return cls(profile, metric)


def scan_fingerprint(scan_dir: str | Path) -> str:
    """A digest of a scan folder's ``sensitivity.csv``: a calibration holds for the profile it was fitted on."""
    return hashlib.sha256((Path(scan_dir) / "sensitivity.csv").read_bytes()).hexdigest()[:16]


def predict(profile: SensitivityProfile, schedule: object, metric: str | None = None, model: str = "additive",
            power: float = 1.0) -> float:
    """One-off prediction (build a ``Predictor`` to predict many schedules)."""
    return Predictor(profile, metric, model, power).predict(schedule)


def curve_table(curves: Mapping[str, Curve]) -> list[dict]:
    """The curves as records (layer, sparsity, drop, monotone), e.g. for a plot."""
    return [{"layer": name, "sparsity": float(s), "drop": float(d), "monotone": float(m)}
            for name, c in curves.items() for s, d, m in zip(c.sparsity, c.drop, c.monotone)]


__all__ = ["MODELS", "STAGES", "Curve", "Predictor", "curve_table", "isotonic", "layer_curves", "predict",
           "scan_fingerprint"]
