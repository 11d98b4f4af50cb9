"""Plotly figures from profiles and diagnostics: functions that take tidy tables and return figures."""

from __future__ import annotations

import pandas as pd
import plotly.express as px
import plotly.graph_objects as go

# ------------------------------------------------------------------------------------------- diagnostics


def _cell_label(df: pd.DataFrame) -> pd.Series:
    return df["layer"] + " @ " + df["sparsity"].map(lambda s: f"{s:g}")


def activation_shift_figure(shift: pd.DataFrame, metric: str = "rel_l2") -> go.Figure:
    """How far each observed output moves, downstream of each pruned (layer, sparsity): one line per cell.

    ``shift`` is ``Diagnosis.shift``; ``metric`` any of its statistic columns (``rel_l2``, ``cosine``,
    ``cosine_worst_decile``, ``mean_shift``, ``std_shift``, ``hellinger``, ...).
    """
    if metric not in shift.columns:
        raise ValueError(f"unknown activation-shift statistic {metric!r}; choose one of "
                         f"{', '.join(c for c in shift.columns if c not in ('layer', 'sparsity', 'observed'))}")
    df = shift.assign(cell=_cell_label(shift)).sort_values(["layer", "sparsity", "distance"], kind="stable")
    fig = px.line(df, x="observed", y=metric, color="cell", markers=True,
                  hover_data=["distance", "rel_l2", "cosine", "cosine_worst_decile"],
                  labels={"observed": "observed layer (downstream of the pruned one)", "cell": "pruned layer @ sparsity"})
    fig.update_layout(title=f"Activation shift downstream ({metric})", xaxis={"categoryorder": "array",
                      "categoryarray": list(dict.fromkeys(df.sort_values("distance", kind="stable")["observed"]))})
    return fig


def dead_neurons_figure(dead: pd.DataFrame, layer: str | None = None, sparsity: float | None = None) -> go.Figure:
    """Dead-unit fractions per observed layer, before and after pruning one (layer, sparsity) cell, with one
    panel per kind (structural, functional). Without ``layer``/``sparsity`` the table's first cell is drawn."""
    if dead.empty:
        raise ValueError("the dead-neuron table is empty")
    layer = layer if layer is not None else dead["layer"].iloc[0]
    sparsity = sparsity if sparsity is not None else float(dead[dead["layer"] == layer]["sparsity"].iloc[0])
    cell = dead[(dead["layer"] == layer) & (dead["sparsity"] == sparsity)]
    if cell.empty:
        raise ValueError(f"no dead-neuron rows for layer {layer!r} at sparsity {sparsity:g}")
    long = cell.melt(id_vars=["observed", "kind", "units"], value_vars=["fraction_before", "fraction_after"],
                     var_name="when", value_name="fraction")
    long["when"] = long["when"].map({"fraction_before": "dense", "fraction_after": "pruned"})
    fig = px.bar(long, x="observed", y="fraction", color="when", barmode="group", facet_row="kind",
                 hover_data=["units"], range_y=[0, 1],
                 labels={"observed": "observed layer", "fraction": "dead fraction", "when": ""})
    fig.update_layout(title=f"Dead units after pruning {layer} to {sparsity:g}")
    return fig


def recalibration_figure(recal: pd.DataFrame) -> go.Figure:
    """The metric after pruning each cell, without and with BatchNorm recalibration, against the dense one."""
    if recal.empty:
        raise ValueError("no recalibration results (the model may have no BatchNorm layers)")
    df = recal.assign(cell=_cell_label(recal))
    long = df.melt(id_vars=["cell"], value_vars=["pruned", "recalibrated"], var_name="statistics", value_name="value")
    metric = str(recal["metric"].iloc[0])
    fig = px.bar(long, x="cell", y="value", color="statistics", barmode="group",
                 labels={"cell": "pruned layer @ sparsity", "value": metric, "statistics": "BatchNorm statistics"})
    fig.add_hline(y=float(recal["dense"].iloc[0]), line_dash="dot", annotation_text="dense")
    fig.update_layout(title=f"{metric} after pruning, without and with BatchNorm recalibration")
    return fig


def criterion_comparison_figure(comparison: pd.DataFrame) -> go.Figure:
    """Drop against sparsity, one line per criterion, one panel per layer (``diagnostics.compare_criteria``)."""
    labels = [c for c in comparison.columns if c not in ("layer", "sparsity", "best", "spread")]
    long = comparison.melt(id_vars=["layer", "sparsity"], value_vars=labels, var_name="criterion", value_name="drop")
    metric = comparison.attrs.get("metric", "metric")
    fig = px.line(long, x="sparsity", y="drop", color="criterion", facet_col="layer", facet_col_wrap=4, markers=True,
                  labels={"drop": f"{metric} drop"})
    fig.for_each_annotation(lambda a: a.update(text=a.text.split("=", 1)[-1]))
    fig.update_layout(title=f"Criteria side by side: {metric} drop per layer")
    return fig
