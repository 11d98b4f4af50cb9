"""Prunescope's engine: measure how much accuracy each layer of a network loses when it is pruned, pick a per-layer
schedule, and export the pruned model.

The public API is this module's ``__all__``: load a workload, scan it, read the profile, diagnose a layer, allocate
and predict a schedule, measure it, export it, and compare pruning strategies (the lab). Every member is imported
on first use, so ``import analysis`` is cheap. A whole session, on the bundled sample (a few seconds)::

    >>> import analysis as ps
    >>> workload = ps.load_workload("sample:digits-mlp", "sample:digits")
    >>> profile = ps.scan(workload, ps.ScanConfig(sparsities=(0.5, 0.9)))
    >>> setting = ps.schedule_setting(profile)
    >>> schedule = ps.schedule_for(setting, "sensitivity", ps.Target("sparsity", 0.5))
    >>> round(schedule.meta["totals"]["global_sparsity"], 2)
    0.5

The layers underneath (``analysis.core``, ``workload``, ``sensitivity``, ``diagnostics``, ``schedule``, ``deploy``,
``lab``, ``store``, ``report``, ``cli``) import downward only; the package never imports Streamlit. The dashboard
(``app.py``, ``pages/``), the CLI (``analysis.cli``) and notebooks all call the same functions, which take data
and return data.
"""

from __future__ import annotations

import importlib

from analysis.core.version import __version__

_API = {  # public name: the module that defines it
    "EvalData": "analysis.core.data",
    "Workload": "analysis.workload.workload",
    "SpecError": "analysis.workload.errors",
    "load_workload": "analysis.workload.workload",
    "load_model": "analysis.workload.models",
    "load_data": "analysis.workload.data",
    "Layer": "analysis.core.layers",
    "find_layers": "analysis.core.layers",
    "METRICS": "analysis.core.metric_table",
    "CRITERIA": "analysis.core.criteria",
    "GRANULARITIES": "analysis.core.granularity",
    "ScanConfig": "analysis.sensitivity.config",
    "Backend": "analysis.sensitivity.backends",
    "cluster_backend": "analysis.sensitivity.backends",
    "prepare": "analysis.sensitivity.context",
    "scan": "analysis.sensitivity.driver",
    "run_scan": "analysis.sensitivity.driver",
    "iter_scan": "analysis.sensitivity.driver",
    "SensitivityProfile": "analysis.core.profile",
    "tolerance_table": "analysis.core.profile",
    "side_by_side": "analysis.sensitivity.adaptive",
    "Diagnosis": "analysis.diagnostics.diagnosis",
    "diagnose": "analysis.diagnostics.diagnosis",
    "compare_criteria": "analysis.diagnostics.compare",
    "Schedule": "analysis.schedule.schedule",
    "Target": "analysis.schedule.allocate",
    "Bounds": "analysis.schedule.allocate",
    "Owl": "analysis.schedule.allocate",
    "METHODS": "analysis.schedule.allocate",
    "allocate": "analysis.schedule.allocate",
    "schedule_setting": "analysis.schedule.allocate",
    "schedule_for": "analysis.schedule.allocate",
    "Accountant": "analysis.schedule.totals",
    "Coupling": "analysis.schedule.coupling",
    "resolve_schedule": "analysis.schedule.prune",
    "Predictor": "analysis.schedule.predict",
    "calibrate": "analysis.schedule.calibrate",
    "measure_schedule": "analysis.schedule.measure",
    "finetune": "analysis.schedule.finetune",
    "export": "analysis.deploy.export",
    "ExportReport": "analysis.deploy.export",
    "RunStore": "analysis.store.runs",
    "scan_into_store": "analysis.store.scanning",
    "sensitivity_heatmap": "analysis.report.plots",
    "sensitivity_curves": "analysis.report.plots",
    "block_heatmap": "analysis.report.plots",
    "block_curves": "analysis.report.plots",
    "build_report": "analysis.report.html",
    "STRATEGIES": "analysis.lab.strategies",
    "LabConfig": "analysis.lab.config",
    "LabResult": "analysis.lab.result",
    "run_lab": "analysis.lab.runner",
    "lab_into_store": "analysis.store.labs",
    "open_lab": "analysis.store.labs",
    "recovery_figure": "analysis.report.lab",
}
__all__ = ["__version__", *_API]


def __getattr__(name: str) -> object:
    """Import a public member on first use (``import analysis`` stays cheap: no torch until it is needed)."""
    if name not in _API:
        raise AttributeError(f"module 'analysis' has no attribute {name!r}")
    value = getattr(importlib.import_module(_API[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
