"""Predict the metric of any schedule from a sensitivity profile, in microseconds, with the band its eval set allows.

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

Predictions are honest about what a profile can know. A prediction is never better than dense (only a
measurement can show that) and never below chance (accuracy, agreement); a measured drop below zero counts
only when its interval (``core.intervals``) is below zero too, so a layer whose "gain" is within the eval set's
sampling noise contributes none. Otherwise every model gives back the profile when one layer alone is pruned
at a measured sparsity. ``Predictor.prediction`` adds the band: each layer's drop interval (interpolated like
the drop) run through the same model, i.e. for ``additive`` the sum of the per-layer half-widths, which keeps
the per-layer level whatever the correlation between layers (every cell is measured on the same samples, so
their errors are positively correlated and adding in quadrature would be too narrow). The band covers the eval
set's sampling error only, not the combination model's own error; when it holds the dense value, the eval set
is too small for the predicted difference to mean anything, and ``Prediction.warning`` says so.

Without a calibration the default is ``additive``. On the bundled samples (BENCHMARKS.md, schedules section:
12 uniform and sensitivity schedules per model) ``multiplicative`` had the lower mean error on two samples of
three and the higher on the third, and the higher worst-case error on all three: not clearly better, so the
default stays. ``prunescope calibrate`` (``schedule.calibrate``) measures schedules of a scan and fits the
``calibrated`` model; ``Predictor.from_profile(profile, calibration)`` predicts with it only when its
leave-one-out error beats additive's on those schedules, and ``Predictor.reason`` says which model is in use
and why. ``stage`` says what a prediction is of: the metric right after pruning (``pruned``), or after BatchNorm
recalibration (``bn_recalibrated``) when the scan or the calibration recalibrated.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from analysis.core.intervals import ERROR_BARS
from analysis.core.metric_table import HIGHER_IS_BETTER, METRICS, chance_level, check_metric, metric_info
from analysis.core.profile import SensitivityProfile

MODELS = ("additive", "multiplicative", "calibrated")
STAGES = ("pruned", "bn_recalibrated")
_TINY = 1e-12


def isotonic(y: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """The non-decreasing sequence closest to ``y`` in weighted least squares (SciPy's pool adjacent violators)."""
    from scipy.optimize import isotonic_regression  # about a second to import: only when curves are built

    return isotonic_regression(np.asarray(y, dtype=float), weights=weights, increasing=True).x


@dataclass
class Curve:
    """One layer's measured drop (positive = worse) against sparsity, sparsity 0 first with drop 0; its interval
    (``lo``, ``hi``; NaN where the profile has none), the drop as a prediction counts it (``counted``: a gain
    within the sampling noise is 0) and the monotone (isotonic, non-negative) curve allocation uses."""

    sparsity: np.ndarray
    drop: np.ndarray
    monotone: np.ndarray
    full_drop: float
    lo: np.ndarray | None = None
    hi: np.ndarray | None = None
    counted: np.ndarray | None = None

    def __post_init__(self) -> None:
        nan = np.full_like(self.drop, np.nan)
        self.lo = nan if self.lo is None else self.lo
        self.hi = nan if self.hi is None else self.hi
        if self.counted is None:
            noise = (self.drop < 0) & ~(self.hi < 0)  # a gain whose interval reaches zero (or is unknown)
            self.counted = np.where(noise, 0.0, self.drop)

    def _read(self, values: np.ndarray, s: float) -> float:
        last = self.sparsity[-1]
        if s <= last:
            return float(np.interp(s, self.sparsity, values))
        return float(values[-1] + (self.full_drop - values[-1]) * (s - last) / max(1.0 - last, _TINY))

    def at(self, s: float) -> float:
        """The drop a prediction counts, interpolated; past the last measured sparsity, towards ``full_drop`` at 1."""
        return self._read(self.counted, s)

    def band_at(self, s: float) -> tuple[float, float]:
        """The interval of the drop at ``s``, its ends interpolated like the drop (NaN where none)."""
        return self._read(self.lo, s), self._read(self.hi, s)

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
        s, d, lo, hi = (cells[c].to_numpy(dtype=float, copy=True) for c in ("sparsity", "drop", "drop_lo", "drop_hi"))
        if s[0] > 0.0:
            s, d, lo, hi = (np.concatenate([[0.0], a]) for a in (s, d, lo, hi))
        d[0] = lo[0] = hi[0] = 0.0
        weights = np.ones_like(d)
        weights[0] = 1e6  # dense is dense: the fit keeps drop 0 at sparsity 0
        mono = np.maximum(isotonic(d, weights), 0.0)
        out[str(layer)] = Curve(s, d, mono, max(full, float(d.max())), lo, hi)
    return out


def _check_metric(profile: SensitivityProfile, metric: str) -> None:
    check_metric(metric, profile.labelled, profile.task)
    if metric not in profile.meta.get("baseline", {}):
        raise ValueError(f"the profile has no dense baseline for {metric!r}")


def _floor(profile: SensitivityProfile, metric: str) -> float:
    """Chance level for accuracy/agreement (or the worst measured value, if lower)."""
    chance = chance_level(profile.meta.get("num_classes"))
    measured = profile.table[metric].dropna()
    return float(min(chance, measured.min())) if len(measured) else chance


def _full_drop(profile: SensitivityProfile, metric: str) -> float:
    """The drop of a layer removed entirely: down to chance for accuracy/agreement, else the worst measured."""
    df = profile.drop(metric)
    if metric_info(metric).bounded:
        return profile.baseline(metric) - _floor(profile, metric)
    return float(df["drop"].max()) if len(df) else 0.0


class Predictor:
    """Built once from a profile; ``predict(schedule)`` is then a handful of table look-ups.

    ``model`` is one of ``additive`` (default), ``multiplicative``, ``calibrated`` (with ``power``, see
    ``fit``). ``stage`` names the stage of a measurement the prediction stands for (see the module docstring).
    ``prediction(schedule)`` adds the band; ``from_profile`` picks the model a scan's calibration earns.

    Example::

        >>> from analysis import Predictor, ScanConfig, load_workload, scan
        >>> profile = scan(load_workload("sample:digits-mlp", "sample:digits"), ScanConfig(sparsities=(0.5, 0.9)))
        >>> fitted = {"metric": "accuracy", "model": "calibrated", "power": 0.6, "schedules": 4,
        ...           "mae": {"additive": 0.01, "calibrated": 0.03}}  # calibrated predicted worse: not used
        >>> predictor = Predictor.from_profile(profile, fitted)
        >>> predictor.model, predictor.reason.split(":")[0]
        ('additive', 'additive')
        >>> p = predictor.prediction({"fc1": 0.5, "fc2": 0.5})
        >>> p.lo <= p.value <= p.hi and p.value <= p.dense
        True
    """

    def __init__(self, profile: SensitivityProfile, metric: str | None = None, model: str = "additive",
                 power: float = 1.0, stage: str | None = None) -> None:
        self.metric = metric or profile.default_metric
        if model not in MODELS:
            raise ValueError(f"unknown prediction model {model!r}; choose one of {', '.join(MODELS)}")
        if model != "additive" and not metric_info(self.metric).bounded:
            raise ValueError(f"the {model} model predicts accuracy or agreement, not {self.metric}")
        if not (math.isfinite(power) and power > 0):
            raise ValueError(f"power must be a positive number, got {power!r}")
        self.curves = layer_curves(profile, self.metric)
        self.baseline = profile.baseline(self.metric)
        self.higher_is_better = HIGHER_IS_BETTER[self.metric]
        self.bounded = metric_info(self.metric).bounded
        self.floor = _floor(profile, self.metric) if self.bounded else 0.0
        self.chance = chance_level(profile.meta.get("num_classes")) if self.bounded else -math.inf
        self.samples = profile.meta.get("samples")
        self.confidence = profile.confidence
        self.model = model
        self.power = float(power)
        self.reason = f"{model}: chosen by the caller" if model != "additive" else "additive: no calibration"
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
        """The predicted metric of a ``Schedule`` or a plain ``{layer: sparsity}`` mapping (never better than
        dense, never below chance)."""
        return self._combine(list(self.drops(schedule).values()), self.model, self.power)

    def prediction(self, schedule: object) -> "Prediction":
        """``predict`` with its band: every pruned layer's drop interval through the same model (NaN where the
        profile has no intervals), the model in use and why (``reason``)."""
        sparsities = {n: float(s) for n, s in getattr(schedule, "sparsities", schedule).items() if float(s) > 0.0}
        value = self._combine(list(self.drops(sparsities).values()), self.model, self.power)
        ends = [self.curves[n].band_at(s) for n, s in sparsities.items()]
        lows, highs = [lo for lo, _ in ends], [hi for _, hi in ends]
        band = sorted(self._clipped(self._raw(d, self.model, self.power)) for d in (lows, highs))
        if not all(math.isfinite(v) for v in lows + highs):
            band = [math.nan, math.nan]
        return Prediction(self.metric, value, band[0], band[1], self.baseline, self.model, self.stage, self.reason,
                          self.confidence, self.samples)

    def _combine(self, drops: list[float], model: str, power: float) -> float:
        """The model's value made honest: never better than dense (only a measurement can show that), never below
        chance (accuracy, agreement)."""
        value = self._clipped(self._raw(drops, model, power))
        return min(value, self.baseline) if self.higher_is_better else max(value, self.baseline)

    def _clipped(self, value: float) -> float:
        return min(max(value, self.chance), 1.0) if self.bounded else value

    def _raw(self, drops: list[float], model: str, power: float) -> float:
        if model == "additive" or not drops:
            total = sum(drops)
            return self.baseline - total if self.higher_is_better else self.baseline + total
        span = max(self.baseline - self.floor, _TINY)
        u = [-math.log(max((span - d) / span, _TINY)) for d in drops]
        # Losses combine with the power; the rare gains (a layer that measured better than dense) just add.
        total_u = sum(x ** power for x in u if x > 0) ** (1.0 / power) + sum(x for x in u if x < 0)
        return self.floor + span * math.exp(-max(total_u, -50.0))

    def fit(self, measured: list[tuple[object, float]]) -> "Predictor":
        """A ``calibrated`` copy whose power best fits ``measured`` ``(schedule, metric)`` pairs (least squares)."""
        if not measured:
            raise ValueError("fitting needs at least one measured schedule")
        cases = [(list(self.drops(sch).values()), float(value)) for sch, value in measured]
        grid = np.exp(np.linspace(math.log(0.05), math.log(8.0), 161))

        def error(p: float) -> float:
            return sum((self._combine(d, "calibrated", p) - v) ** 2 for d, v in cases)

        best = min(grid, key=error)
        from scipy.optimize import minimize_scalar

        refined = minimize_scalar(error, bounds=(best / 1.05, best * 1.05), method="bounded",
                                  options={"xatol": 1e-6 * best})
        return self.with_model("calibrated", float(refined.x) if refined.fun <= error(best) else float(best))

    def recorded(self, schedule: object) -> dict | None:
        """What a schedule records of its prediction (``meta['predicted']``): ``{metric: value, "model", "stage",
        "band", "confidence", "reason"}``, or ``None`` when it prunes a layer the profile did not measure."""
        if self.unmeasured(schedule):
            return None
        return self.prediction(schedule).recorded()

    def errors(self, measured: list[tuple[object, float]]) -> list[float]:
        """Prediction minus measurement for each ``(schedule, metric)`` pair."""
        return [self.predict(sch) - float(v) for sch, v in measured]

    # -------------------------------------------------------------------------------------------- files

    def calibration(self) -> dict:
        """The settings a calibration records (``from_profile`` reads them back)."""
        return {"metric": self.metric, "model": self.model, "power": self.power, "stage": self.stage}

    @classmethod
    def from_profile(cls, profile: SensitivityProfile, calibration: Mapping | None = None,
                     metric: str | None = None) -> "Predictor":
        """The predictor of a scan: calibrated when ``calibration`` (``Calibration.to_dict()``, fitted on this
        profile) is given, is for ``metric`` (or no metric is asked) and its leave-one-out error beats additive's
        (``calibration_verdict``), else additive; ``reason`` says which and why."""
        if not calibration or metric not in (None, calibration.get("metric")):
            return cls(profile, metric)
        used, reason = calibration_verdict(calibration)
        try:
            predictor = cls(profile, calibration["metric"], calibration["model"] if used else "additive",
                            float(calibration["power"]), calibration.get("stage") if used else None)
        except (KeyError, TypeError) as exc:
            raise ValueError(f"not a calibration: {exc}") from None
        predictor.reason = reason
        return predictor


@dataclass(frozen=True)
class Prediction:
    """A predicted metric with its band at ``confidence`` (``lo``, ``hi``: NaN when the profile has no error
    bars), the dense value it starts from, the model in use and why, and the eval set's size."""

    metric: str
    value: float
    lo: float
    hi: float
    dense: float
    model: str
    stage: str
    reason: str
    confidence: float
    samples: int | None

    @property
    def has_band(self) -> bool:
        return math.isfinite(self.lo) and math.isfinite(self.hi)

    @property
    def within_noise(self) -> bool:
        """Whether the band holds the dense value: the eval set cannot tell the predicted difference from zero."""
        return self.has_band and self.lo < self.hi and self.lo <= self.dense <= self.hi

    def band_text(self) -> str:
        """``95% band 0.9012 to 0.9544`` (or why there is none)."""
        if not self.has_band:
            return "no band: the profile has no error bars for this metric"
        return f"{self.confidence:.0%} band {self.lo:.4f} to {self.hi:.4f}"

    def warning(self) -> str | None:
        """A plain warning when the predicted difference means nothing at this eval set's size, or has no band."""
        if not self.has_band and self.metric not in ERROR_BARS:
            return f"no band for the predicted {self.metric}: Prunescope has no error bars for this metric"
        if not self.has_band:
            return (f"no band for the predicted {self.metric}: the profile has no error bars for it (a run stored "
                    "before they existed); scan again to get one")
        if not self.within_noise:
            return None
        size = f"{self.samples} samples" if self.samples else "its samples"
        return (f"the eval set ({size}) is too small for this predicted difference ({self.value - self.dense:+.4f} "
                f"vs dense) to mean anything: the {self.band_text()} holds the dense {self.dense:.4f}")

    def recorded(self) -> dict:
        """What a schedule keeps of it (``meta['predicted']``)."""
        return {self.metric: self.value, "model": self.model, "stage": self.stage,
                "band": [self.lo, self.hi] if self.has_band else None, "confidence": self.confidence,
                "reason": self.reason}


def calibration_verdict(calibration: Mapping) -> tuple[bool, str]:
    """Whether a calibration's model is used (only when its leave-one-out error beats additive's on the schedules
    it measured), and why, in words."""
    mae = calibration.get("mae") or {}
    loo, additive, count = mae.get("calibrated"), mae.get("additive"), calibration.get("schedules", "its")
    if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in (loo, additive)):
        return False, "additive: the calibration records no leave-one-out error to compare with additive's"
    if loo < additive:
        return True, (f"calibrated (power {float(calibration.get('power', math.nan)):.2f}): its leave-one-out error "
                      f"{loo:.4f} beats additive's {additive:.4f} on {count} measured schedules")
    return False, (f"additive: the calibration's leave-one-out error {loo:.4f} does not beat additive's "
                   f"{additive:.4f} on {count} measured schedules")


def compared_stage(measured: Mapping, stage: object) -> str:
    """The stage of a measurement (``Measurement.to_dict()``) a prediction for ``stage`` stands for: that stage
    when it was measured, else the metric right after pruning (a prediction is never of a fine-tuned model)."""
    return stage if isinstance(stage, str) and measured.get(stage) else "pruned"


def check_prediction(predicted: object, measured: Mapping) -> dict:
    """A schedule's recorded prediction (``meta['predicted']``) next to its measurement: ``predicted``,
    ``prediction_model`` and ``prediction`` (metric, stage, measured, error); ``{}`` when there is none."""
    if not isinstance(predicted, Mapping):
        return {}
    metric = next((m for m in METRICS if isinstance(predicted.get(m), (int, float))
                   and not isinstance(predicted.get(m), bool)), None)
    if metric is None:
        return {}
    value = float(predicted[metric])
    stage = compared_stage(measured, predicted.get("stage"))
    actual = (measured.get(stage) or {}).get(metric)
    detail = {"metric": metric, "stage": stage, "measured": actual, "error": None if actual is None else value - actual}
    return {"predicted": value, "prediction_model": predicted.get("model"), "prediction": detail}


def predict(profile: SensitivityProfile, schedule: object, metric: str | None = None, model: str = "additive",
            power: float = 1.0) -> float:
    """One-off prediction (build a ``Predictor`` to predict many schedules)."""
    return Predictor(profile, metric, model, power).predict(schedule)


def curve_table(curves: Mapping[str, Curve]) -> list[dict]:
    """The curves as records (layer, sparsity, drop, monotone), e.g. for a plot."""
    return [{"layer": name, "sparsity": float(s), "drop": float(d), "monotone": float(m)}
            for name, c in curves.items() for s, d, m in zip(c.sparsity, c.drop, c.monotone)]


__all__ = ["MODELS", "STAGES", "Curve", "Prediction", "Predictor", "calibration_verdict", "check_prediction",
           "compared_stage", "curve_table", "isotonic", "layer_curves", "predict"]
