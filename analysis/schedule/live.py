"""The facts a browser needs to count a schedule's totals and predict its metric itself, with no round trip.

The dashboard's sliders run in the browser (``ui/live_sliders``): a slider move updates the global sparsity,
the parameters and FLOPs kept and the predicted metric on the spot, from these facts, and only then sends the
schedule to the server for the charts. The browser's formulas repeat ``Accountant.totals`` and
``Predictor.prediction`` step by step on the same numbers (integer counts, the drop curves' points), so the two
agree to the last digit (tests/test_live_sliders.py runs the browser's code on the same schedules).

Only schedules whose totals add up layer by layer qualify: unstructured and fixed-pattern (N:M) granularities.
Channel pruning resolves coupled groups and removes input columns of other layers, which stays on the server
(``supported`` is False for it).

- ``layers``: per layer ``name``, ``units`` (units of pruning), ``unit_size`` (weights per unit), ``params``,
  ``flops``, ``fixed`` (for a fixed-pattern granularity: ``[sparsity, units removed]``, else ``None``) and its
  drop curve: ``sparsity``, ``counted`` (the drop a prediction counts), ``lo``/``hi`` (its interval, ``None``
  where NaN) and ``full_drop``.
- ``predictor``: ``baseline``, ``higher_is_better``, ``bounded``, ``chance`` (``None`` for -inf), ``floor``,
  ``model``, ``power``, ``confidence``; ``weights`` and ``flops`` are the model's totals.
"""

from __future__ import annotations

import math

import numpy as np

from analysis.core.granularity import parse_granularity
from analysis.core.layers import Layer
from analysis.schedule.predict import Curve, Predictor


def supported(granularity: str) -> bool:
    """Whether a schedule of ``granularity`` can be counted in the browser (its totals add up per layer)."""
    return not parse_granularity(granularity).structured


def _numbers(values: np.ndarray) -> list[float | None]:
    """Floats for JSON, NaN as ``None`` (the browser reads it back as NaN)."""
    return [None if math.isnan(v) else float(v) for v in values]


def _curve(curve: Curve) -> dict:
    return {"sparsity": _numbers(curve.sparsity), "counted": _numbers(curve.counted), "lo": _numbers(curve.lo),
            "hi": _numbers(curve.hi), "full_drop": float(curve.full_drop)}


def _layer(layer: Layer, granularity: str, curve: Curve | None) -> dict:
    gran = parse_granularity(granularity)
    fixed = gran.fixed_sparsity
    return {"name": layer.name, "units": gran.units(layer.shape), "unit_size": gran.unit_size(layer.shape),
            "params": layer.params, "flops": layer.flops,
            "fixed": [fixed, gran.removed_units(layer.shape, fixed)] if fixed else None,
            "curve": _curve(curve) if curve is not None else None}


def browser_facts(layers: list[Layer], granularity: str, predictor: Predictor) -> dict:
    """The facts of ``layers`` (every prunable layer, in the model's order) under ``granularity`` and
    ``predictor``, as plain JSON (see the module docstring)."""
    if not supported(granularity):
        raise ValueError(f"{granularity} schedules are counted on the server: their coupled groups do not add up")
    p = predictor
    return {"granularity": granularity,
            "layers": [_layer(l, granularity, p.curves.get(l.name)) for l in layers],
            "weights": sum(l.params for l in layers), "flops": sum(l.flops for l in layers),
            "predictor": {"metric": p.metric, "baseline": float(p.baseline), "higher_is_better": p.higher_is_better,
                          "bounded": p.bounded, "chance": None if math.isinf(p.chance) else float(p.chance),
                          "floor": float(p.floor), "model": p.model, "power": float(p.power),
                          "confidence": float(p.confidence)}}
