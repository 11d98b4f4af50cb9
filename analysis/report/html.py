"""One HTML file that tells the whole analysis: sensitivity, diagnosis, schedule, export.

``build_report`` takes what the engine returns (a ``SensitivityProfile``, optionally a ``Diagnosis``, a
``Schedule`` with its prediction and measurement, an ``ExportReport``) and returns a self-contained HTML page
with the figures of ``analysis/plots.py`` embedded, so the dashboard's download and ``prunescope report``
give the same document. plotly.js is inlined once (the report opens offline) unless ``plotlyjs="cdn"``.
"""

from __future__ import annotations

import html
import time
from collections.abc import Mapping
from pathlib import Path

import pandas as pd
import plotly.graph_objects as go

from analysis.core.metric_table import METRICS, drop_scale, drop_text
from analysis.core.profile import SensitivityProfile, tolerance_table
from analysis.core.version import __version__
from analysis.lab.result import LabResult
from analysis.report import plots
from analysis.report.lab import lab_section
from analysis.report.style import readable
from analysis.schedule.predict import Predictor
from analysis.schedule.schedule import Schedule

PLOTLYJS = ("inline", "cdn")
_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 1100px; color: #222; padding: 0 1rem; }
h1 { margin-bottom: .2rem; } h2 { border-bottom: 1px solid #ddd; padding-bottom: .2rem; margin-top: 2.2rem; }
table { border-collapse: collapse; margin: .6rem 0 1rem; font-size: .9rem; }
th, td { border: 1px solid #ddd; padding: .25rem .6rem; text-align: right; }
th { background: #f4f4f4; } td:first-child, th:first-child { text-align: left; }
.pass { color: #16794c; font-weight: 600; } .fail { color: #b3261e; font-weight: 600; }
.muted { color: #666; font-size: .9rem; } pre { background: #f6f6f6; padding: .8rem; overflow-x: auto; }
"""


class _Figures:
    """Turns figures into HTML fragments, with plotly.js inlined in the first one only."""

    def __init__(self, plotlyjs: str) -> None:
        if plotlyjs not in PLOTLYJS:
            raise ValueError(f"plotlyjs must be one of {', '.join(PLOTLYJS)}, got {plotlyjs!r}")
        self.mode = plotlyjs
        self.first = True

    def __call__(self, fig: go.Figure) -> str:
        include: bool | str = "cdn" if self.mode == "cdn" else self.first
        self.first = False
        return readable(fig).to_html(full_html=False, include_plotlyjs=include, default_width="100%")


def _table(df: pd.DataFrame, digits: int = 4) -> str:
    def cell(v: object) -> str:
        if isinstance(v, float):
            return "" if pd.isna(v) else f"{v:.{digits}g}" if abs(v) >= 10 ** digits else f"{v:.{digits}f}"
        return html.escape(str(v))

    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in df.columns)
    rows = "".join("<tr>" + "".join(f"<td>{cell(v)}</td>" for v in rec) + "</tr>" for rec in df.itertuples(index=False))
    return f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>"


def _p(text: str, cls: str = "") -> str:
    return f"<p{f' class={cls!r}' if cls else ''}>{html.escape(text)}</p>"


# ----------------------------------------------------------------------------------------------- sections


def _sensitivity(profile: SensitivityProfile, metric: str, fig: _Figures) -> list[str]:
    meta = profile.meta
    base = ", ".join(f"{m} {v:.4f}" for m, v in meta.get("baseline", {}).items() if isinstance(v, (int, float)))
    scale, unit = drop_scale(metric)
    limit = 1.0 / scale if scale > 1 else 0.01
    return [
        "<h2>Sensitivity</h2>",
        _p(f"Each layer pruned alone at each sparsity ({meta.get('criterion', '?')} criterion, "
           f"{meta.get('granularity', '?')} granularity) on {meta.get('samples', '?')} samples. Dense: {base}."),
        fig(plots.sensitivity_heatmap(profile, metric)),
        fig(plots.sensitivity_curves(profile, metric)),
        f"<h3>Tolerance: the largest sparsity per layer within a drop of {drop_text(limit * scale, unit)}</h3>",
        _p(f"max_sparsity_lo is the largest sparsity within that drop at {profile.confidence:.0%} confidence, "
           "max_sparsity_hi the last before a drop beyond it at that confidence: the eval set's sampling error "
           "puts the answer between them. Heatmap cells marked with a dot have a drop not distinguishable from "
           "zero at that confidence.", "muted"),
        _table(tolerance_table(profile, limit, metric)),
    ]


def _diagnosis(diagnosis: object, fig: _Figures) -> list[str]:
    out = ["<h2>Diagnostics</h2>"]
    shift, dead, recal = diagnosis.shift, diagnosis.dead, diagnosis.recalibration
    cells = shift[["layer", "sparsity"]].drop_duplicates() if len(shift) else pd.DataFrame(columns=["layer", "sparsity"])
    out.append(_p("Cells diagnosed: " + ", ".join(f"{r.layer} @ {r.sparsity:g}" for r in cells.itertuples()) + "."))
    if len(shift):
        out.append(fig(plots.activation_shift_figure(shift)))
    if len(dead):
        first = dead.iloc[0]
        out.append(fig(plots.dead_neurons_figure(dead, first["layer"], float(first["sparsity"]))))
        created = dead.groupby(["layer", "sparsity", "kind"], as_index=False)["created"].sum()
        out.append(_table(created))
    if len(recal):
        out.append(fig(plots.recalibration_figure(recal)))
    else:
        reason = (getattr(diagnosis, "summary", {}) or {}).get("recalibration", {}).get("reason")
        out.append(_p(reason or "BatchNorm recalibration does not apply to this model.", "muted"))
    return out


def _schedule(schedule: Schedule, profile: SensitivityProfile, metric: str, prediction: Mapping | None,
              measurement: Mapping | None, totals: Mapping | None, fig: _Figures) -> list[str]:
    out = ["<h2>Schedule</h2>"]
    method = schedule.meta.get("method")
    out.append(_p(f"{len([s for s in schedule.sparsities.values() if s > 0])} layers pruned, "
                  f"{schedule.criterion} criterion, {schedule.granularity} granularity"
                  + (f", made by the {method} method" if method else "") + "."))
    totals = totals or schedule.meta.get("totals")
    if totals:
        out.append(_table(pd.DataFrame([{k: totals[k] for k in ("global_sparsity", "params_kept", "flops_kept")
                                         if k in totals}])))
    prediction = prediction or schedule.meta.get("predicted")
    drops: dict[str, float] = {}
    if prediction is None:
        try:
            predictor = Predictor(profile, metric)
            drops = predictor.drops(schedule)
            prediction = predictor.prediction(schedule).recorded()
        except ValueError as exc:
            out.append(_p(f"No prediction: {exc}", "muted"))
    else:
        try:
            drops = Predictor(profile, metric).drops(schedule)
        except ValueError:
            drops = {}
    measurement = measurement or schedule.meta.get("measured")
    rows = []
    if prediction:
        band = prediction.get("band")
        for m, v in prediction.items():
            if m in METRICS and isinstance(v, (int, float)):
                rows.append({"metric": m, "dense": profile.meta.get("baseline", {}).get(m),
                             f"predicted ({prediction.get('model', 'additive')})": v,
                             **({f"band ({prediction.get('confidence', 0.95):.0%})": f"{band[0]:.4f} to {band[1]:.4f}"}
                                if band else {})})
        if prediction.get("reason"):
            out.append(_p(f"Prediction model {prediction['reason']}. The band covers the eval set's sampling error "
                          "only, not the combination model's error.", "muted"))
    if measurement:
        dense = measurement.get("dense") or {}
        stages = [s for s in ("pruned", "bn_recalibrated", "finetuned") if measurement.get(s)]
        names = {r["metric"] for r in rows} or {metric}
        by_metric = {r["metric"]: r for r in rows}
        for m in sorted(names):
            row = by_metric.setdefault(m, {"metric": m})
            if m in dense:
                row["dense"] = dense[m]
            for stage in stages:
                row[f"measured: {stage.replace('_', ' ')}"] = measurement[stage].get(m)
        rows = list(by_metric.values())
    if rows:
        out.append(_table(pd.DataFrame(rows)))
    layer_rows = pd.DataFrame([{"layer": n, "sparsity": s, f"predicted {metric} drop alone": drops.get(n)}
                               for n, s in schedule.sparsities.items()])
    if len(layer_rows):
        out.append(_table(layer_rows))
    order = [l for l in profile.layers] + [n for n in schedule.sparsities if n not in set(profile.layers)]
    out.append(fig(plots.schedule_bars({schedule.meta.get("name", "schedule"): schedule.sparsities}, order)))
    return out


def _export(export: Mapping, fig: _Figures) -> list[str]:
    out = ["<h2>Export</h2>"]
    out.append(_p(f"{export.get('mode', '?')} ONNX export of {Path(str(export.get('onnx_path', ''))).name} "
                  f"({export.get('granularity', '?')} granularity, exporter {export.get('exporter', '?')})."))
    verifications = export.get("verifications") or []
    if verifications:
        ok = all(v["passed"] for v in verifications)
        out.append(f"<p class={'pass' if ok else 'fail'!r}>Verification {'passed' if ok else 'FAILED'}</p>")
        out.append(_table(pd.DataFrame(verifications)))
    q = export.get("quality") or {}
    if q:
        out.append(_table(pd.DataFrame([q])))
    sizes = [{"model": name, **export[name]} for name in ("dense", "pruned") if export.get(name)]
    if sizes:
        out.append("<h3>Size</h3>" + _table(pd.DataFrame(sizes)))
    if export.get("latency"):
        lat = pd.DataFrame(export["latency"])
        wide = lat.pivot(index="batch", columns="model", values="median_ms").reset_index()
        if {"dense", "pruned"} <= set(wide.columns):
            wide["speed-up"] = wide["dense"] / wide["pruned"]
        out.append(f"<h3>ONNX Runtime latency (median ms, {export.get('threads', 1)} thread(s))</h3>"
                   + _table(wide.rename(columns={"dense": "dense ms", "pruned": "pruned ms"})))
    for note in export.get("notes") or []:
        out.append(_p(note, "muted"))
    if export.get("layers"):
        out.append("<h3>Layers</h3>" + _table(pd.DataFrame(export["layers"])))
    return out


# ------------------------------------------------------------------------------------------------- report


def build_report(profile: SensitivityProfile, *, metric: str | None = None, diagnosis: object | None = None,
                 schedule: Schedule | None = None, prediction: Mapping | None = None,
                 measurement: object | None = None, totals: Mapping | None = None, export: object | None = None,
                 lab: LabResult | None = None, title: str = "Prunescope report", plotlyjs: str = "inline") -> str:
    """The whole analysis as one HTML page.

    ``measurement`` is a ``Measurement`` or its ``to_dict()``; ``export`` an ``ExportReport``, its
    ``to_dict()``, or the Markdown summary an export wrote (shown as is); ``lab`` a strategy lab's result. A
    schedule's own ``meta`` (``predicted``, ``measured``, ``totals``, as the dashboard saves them) fills what is
    not passed.

    Example::

        >>> from analysis import ScanConfig, build_report, load_workload, scan
        >>> profile = scan(load_workload("sample:digits-mlp", "sample:digits"), ScanConfig(sparsities=(0.5,)))
        >>> build_report(profile, plotlyjs="cdn").startswith("<!DOCTYPE html>")
        True
    """
    metric = metric or profile.default_metric
    plots.profile_metric(profile, metric)
    fig = _Figures(plotlyjs)
    meta = profile.meta
    parts = [f"<h1>{html.escape(title)}</h1>",
             _p(f"Model {meta.get('model', '?')} on {meta.get('data', '?')} · metric {metric} · "
                f"prunescope {__version__} · {time.strftime('%Y-%m-%d %H:%M')}", "muted")]
    parts += _sensitivity(profile, metric, fig)
    if diagnosis is not None:
        parts += _diagnosis(diagnosis, fig)
    if schedule is not None:
        measured = measurement.to_dict() if hasattr(measurement, "to_dict") else measurement
        parts += _schedule(schedule, profile, metric, prediction, measured, totals, fig)
    if export is not None:
        if isinstance(export, str):
            parts += ["<h2>Export</h2>", f"<pre>{html.escape(export)}</pre>"]
        else:
            parts += _export(export.to_dict() if hasattr(export, "to_dict") else export, fig)
    if lab is not None:
        parts += lab_section(lab, fig, _table)
    body = "\n".join(parts)
    return (f"<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{_STYLE}</style></head><body>\n{body}\n</body></html>\n")


__all__ = ["PLOTLYJS", "build_report"]
