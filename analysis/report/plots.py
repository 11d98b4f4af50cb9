"""Plotly figures from profiles, layer tables and diagnostics, shared by the dashboard, report and tests.

Every function takes data (a ``SensitivityProfile`` or a tidy ``DataFrame``) and returns a ``go.Figure``;
nothing here draws on a screen or knows about Streamlit. Drops are shown in points (percent of the metric
for accuracy and agreement, raw units for loss and KL) so that "1 point" reads the same everywhere.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.express as px
import plotly.graph_objects as go
from plotly.colors import qualitative

from analysis.core.blocks import ROLE_ORDER, block_index, column_of, split_name
from analysis.core.metric_table import check_metric, drop_scale
from analysis.core.profile import EARLY, SensitivityProfile

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
                  labels={"observed": "observed layer (downstream of the pruned one)",
                          "cell": "pruned layer @ sparsity"})
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
                 hover_data=["units"], range_y=[0, 1], facet_row_spacing=0.12,
                 labels={"observed": "observed layer", "fraction": "dead fraction", "when": ""})
    fig.update_layout(title=f"Dead units after pruning {layer} to {sparsity:g}")
    _tidy_dead_figure(fig, cell)
    return fig


def _tidy_dead_figure(fig: go.Figure, cell: pd.DataFrame) -> None:
    """Facet titles name the kind alone (not ``kind=structural``), the 0 and 1 ticks of stacked panels stay apart,
    and a figure with no dead unit created says so rather than drawing empty panels."""
    fig.for_each_annotation(lambda a: a.update(text=a.text.split("=", 1)[-1]))
    fig.update_yaxes(tickvals=[0, 0.5, 1], range=[0, 1.05])
    if not int(cell["created"].sum()):
        none = "no unit is dead, before or after pruning" if not cell["fraction_after"].any() else \
            "pruning created no dead units"
        fig.add_annotation(text=none, xref="paper", yref="paper", x=0.5, y=0.5, showarrow=False,
                           font={"size": 14}, bgcolor="rgba(255,255,255,0.85)")


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


# ------------------------------------------------------------------------------------------- sensitivity

def profile_metric(profile: SensitivityProfile, metric: str | None) -> str:
    """The metric a view of ``profile`` shows: ``metric``, checked against the profile, or its default."""
    return check_metric(metric or profile.default_metric, profile.labelled, profile.task)


def _drop_frame(profile: SensitivityProfile, metric: str) -> pd.DataFrame:
    df = profile.drop(metric)
    scale, _ = drop_scale(metric)
    for column in ("drop", "drop_lo", "drop_hi"):
        df[f"{column}_shown"] = df[column] * scale
    df["early"] = df[EARLY].astype(bool) if EARLY in df else False
    return df


def within_noise(df: pd.DataFrame) -> pd.Series:
    """Pruned cells whose drop is not distinguishable from zero: the interval holds 0 (``profile.drop`` rows)."""
    return (df["sparsity"] > 0) & (df["drop_lo"] <= 0) & (df["drop_hi"] >= 0)


def sensitivity_heatmap(profile: SensitivityProfile, metric: str | None = None) -> go.Figure:
    """Layers (rows, model order) x sparsity (columns), coloured by the drop of ``metric`` from dense.

    Example::

        >>> from analysis import ScanConfig, load_workload, scan, sensitivity_heatmap
        >>> profile = scan(load_workload("sample:digits-mlp", "sample:digits"), ScanConfig(sparsities=(0.5, 0.9)))
        >>> list(sensitivity_heatmap(profile).data[0].y)
        ['fc1', 'fc2', 'fc3']
    """
    metric = profile_metric(profile, metric)
    df = _drop_frame(profile, metric)
    _, unit = drop_scale(metric)
    grid = df.pivot_table(index="layer", columns="sparsity", values="drop_shown", aggfunc="first", dropna=False)
    grid = grid.reindex(index=[l for l in profile.layers if l in grid.index])
    extra = np.stack([df.pivot_table(index="layer", columns="sparsity", values=c, aggfunc="first", dropna=False)
                      .reindex(index=grid.index, columns=grid.columns).to_numpy(dtype=float)
                      for c in (metric, "drop_lo_shown", "drop_hi_shown", "n")], axis=-1)
    limit = colour_limit(grid)
    fig = go.Figure(go.Heatmap(
        z=grid.to_numpy(),
        x=[f"{s:g}" for s in grid.columns],
        y=list(grid.index),
        customdata=extra,
        colorscale="RdBu_r",
        zmid=0.0,
        zmin=-limit,
        zmax=limit,
        colorbar={"title": {"text": f"drop ({unit})"}},
        hovertemplate=(f"layer %{{y}}<br>sparsity %{{x}}<br>{metric} %{{customdata[0]:.4f}}"
                       f"<br>drop %{{z:.3f}} {unit} ({profile.confidence:.0%} interval %{{customdata[1]:.3f}} to "
                       f"%{{customdata[2]:.3f}})<br>%{{customdata[3]:.0f}} samples<extra></extra>"),
    ))
    _mark_filled(fig, df)
    _mark_cells(fig, df[within_noise(df)], "circle", f"drop within noise (its {profile.confidence:.0%} interval "
                "holds 0)", "the drop is not distinguishable from zero on this eval set")
    _mark_cells(fig, df[df["early"]], "triangle-up-open", "settled early (fewer samples)",
                "a sequential scan settled this cell before the whole eval set")
    fig.update_layout(
        title=f"{metric} drop when one layer is pruned ({profile.meta.get('criterion', '')}, "
              f"{profile.meta.get('granularity', '')})",
        xaxis_title="sparsity",
        yaxis_title="layer",
        yaxis={"autorange": "reversed", "type": "category"},
        xaxis={"type": "category"},
        height=max(320, 40 + 28 * len(grid.index)),
        margin={"l": 10, "r": 10, "t": 50, "b": 40},
    )
    return fig


def colour_limit(grid: pd.DataFrame, floor: float = 1e-3) -> float:
    """The heatmap's symmetric colour range: the largest finite drop shown, at least ``floor`` (so drops that are
    all zero, or NaN where a metric was not measured, still get a readable colour bar, not ticks of 1e-9)."""
    values = grid.to_numpy(dtype=float)
    finite = values[np.isfinite(values)]
    return max(float(np.abs(finite).max()) if finite.size else 0.0, floor)


def _mark_filled(fig: go.Figure, df: pd.DataFrame) -> None:
    """Cross out the cells an adaptive scan filled in instead of measuring (``measured`` false)."""
    if "measured" not in df or df["measured"].astype(bool).all():
        return
    filled = df[~df["measured"].astype(bool)]
    fig.add_trace(go.Scatter(
        x=[f"{s:g}" for s in filled["sparsity"]], y=list(filled["layer"]), mode="markers",
        marker={"symbol": "x-thin", "size": 10, "line": {"width": 2, "color": "black"}},
        name="filled, not measured", showlegend=True,
        hovertemplate="layer %{y}<br>sparsity %{x}<br>not measured: the layer had collapsed; "
                      "copied from its last measured sparsity<extra></extra>"))
    fig.update_layout(legend={"orientation": "h", "yanchor": "bottom", "y": 1.0, "xanchor": "right", "x": 1.0})


def _mark_cells(fig: go.Figure, cells: pd.DataFrame, symbol: str, name: str, why: str) -> None:
    """Mark ``cells`` of a heatmap with ``symbol`` (a legend entry ``name``; ``why`` on hover)."""
    if cells.empty:
        return
    fig.add_trace(go.Scatter(
        x=[f"{s:g}" for s in cells["sparsity"]], y=list(cells["layer"]), mode="markers", name=name, showlegend=True,
        marker={"symbol": symbol, "size": 7 if symbol == "circle" else 11, "color": "rgba(40, 40, 40, 0.55)",
                "line": {"width": 1.5, "color": "black"}},
        hovertemplate=f"layer %{{y}}<br>sparsity %{{x}}<br>{why}<extra></extra>"))
    fig.update_layout(legend={"orientation": "h", "yanchor": "bottom", "y": 1.0, "xanchor": "right", "x": 1.0})


def _curve_hover(metric: str, unit: str, label: str = "") -> str:
    prefix = f"{label} " if label else ""
    return (f"{prefix}layer %{{customdata[0]}}<br>sparsity %{{x:.3f}} (actual %{{customdata[1]:.4f}})"
            f"<br>{metric} %{{customdata[2]:.4f}}<br>drop %{{y:.4f}} {unit} (interval %{{customdata[3]:.4f}} to "
            f"%{{customdata[4]:.4f}})<br>%{{customdata[5]}} samples<extra></extra>")


def _curve_traces(profile: SensitivityProfile, metric: str, layers: list[str] | None, label: str = "",
                  dash: str | None = None, bands: bool = False) -> list[go.Scatter]:
    """One line per layer; with ``bands``, each layer's drop interval as a shaded band behind it."""
    df = _drop_frame(profile, metric)
    _, unit = drop_scale(metric)
    wanted = profile.layers if not layers else [l for l in profile.layers if l in set(layers)]
    palette = qualitative.Plotly
    traces = []
    for i, layer in enumerate(wanted):
        cells = df[df["layer"] == layer].sort_values("sparsity")
        colour = palette[i % len(palette)]
        if bands and cells["drop_lo"].notna().all():
            traces.append(go.Scatter(
                x=[*cells["sparsity"], *cells["sparsity"][::-1]],
                y=[*cells["drop_hi_shown"], *cells["drop_lo_shown"][::-1]],
                fill="toself", fillcolor=colour, opacity=0.18, line={"width": 0}, mode="lines", hoverinfo="skip",
                legendgroup=layer, showlegend=False, name=f"{layer} interval"))
        measured = cells["measured"].astype(bool) if "measured" in cells else [True] * len(cells)
        traces.append(go.Scatter(
            x=cells["sparsity"],
            y=cells["drop_shown"],
            mode="lines+markers",
            name=f"{layer} ({label})" if label else layer,
            legendgroup=layer,
            line={"color": colour, "dash": dash},
            marker={"symbol": ["circle-open" if not m else "triangle-up" if e else "circle"
                               for m, e in zip(measured, cells["early"])]},
            customdata=cells.assign(n=cells["n"] if "n" in cells else "?")[
                ["layer", "actual_sparsity", metric, "drop_lo_shown", "drop_hi_shown", "n"]].to_numpy(dtype=object),
            hovertemplate=_curve_hover(metric, unit, label),
        ))
    return traces


def sensitivity_curves(profile: SensitivityProfile, metric: str | None = None,
                       layers: list[str] | None = None) -> go.Figure:
    """One line per layer: drop of ``metric`` against sparsity, its interval at the profile's confidence as a
    band (cells settled early by a sequential scan are triangles); hovering shows the exact numbers."""
    metric = profile_metric(profile, metric)
    _, unit = drop_scale(metric)
    fig = go.Figure(_curve_traces(profile, metric, layers, bands=True))
    fig.update_layout(
        title=f"{metric} drop per layer (bands: {profile.confidence:.0%} intervals)",
        xaxis_title="sparsity of the layer",
        yaxis_title=f"drop ({unit}, higher is worse)",
        hovermode="closest",
        legend_title="layer",
        margin={"l": 10, "r": 10, "t": 50, "b": 40},
    )
    return fig


def profile_overlay(first: SensitivityProfile, second: SensitivityProfile, metric: str | None = None,
                    labels: tuple[str, str] | None = None, layers: list[str] | None = None) -> go.Figure:
    """Two profiles of the same model on one chart: solid lines for the first, dashed for the second."""
    metric = profile_metric(first, metric)
    profile_metric(second, metric)
    a, b = labels or (_profile_label(first), _profile_label(second))
    if a == b:
        when = first.meta.get("created"), second.meta.get("created")
        a, b = (f"{a} {when[0]}", f"{b} {when[1]}") if all(when) and when[0] != when[1] else (f"{a} #1", f"{b} #2")
    shared = [l for l in first.layers if l in set(second.layers)]
    if layers:
        shared = [l for l in shared if l in set(layers)]
    if not shared:
        raise ValueError("the two profiles have no layer in common; they are not of the same model")
    _, unit = drop_scale(metric)
    fig = go.Figure(_curve_traces(first, metric, shared, a) + _curve_traces(second, metric, shared, b, dash="dash"))
    fig.update_layout(
        title=f"{metric} drop: {a} (solid) vs {b} (dashed)",
        xaxis_title="sparsity of the layer",
        yaxis_title=f"drop ({unit}, higher is worse)",
        hovermode="closest",
        margin={"l": 10, "r": 10, "t": 50, "b": 40},
    )
    return fig


def _profile_label(profile: SensitivityProfile) -> str:
    return f"{profile.meta.get('criterion', '?')}/{profile.meta.get('granularity', '?')}"


def block_table(profile: SensitivityProfile, metric: str | None = None) -> pd.DataFrame:
    """The profile's cells of layers inside numbered blocks, tidy: ``block``, ``depth`` (the block's number),
    ``column`` (the layer's role in the block: ``q``, ``k``, ``v``, ``qkv``, ``o``, ``gate``, ``up``, ``down``,
    else its name inside the block, such as a coupled layer's ``attn``), ``layer``, ``sparsity``, the metric and its
    ``drop`` (in the metric's shown unit, as the other views). Empty when no layer sits in a numbered block."""
    metric = profile_metric(profile, metric)
    df = _drop_frame(profile, metric)
    parts = df["layer"].map(split_name)
    df = df[parts.notna()].copy()
    if df.empty:
        return pd.DataFrame(columns=["block", "depth", "column", "layer", "sparsity", metric, "drop"])
    df["block"] = parts[parts.notna()].map(lambda p: p[0])
    df["depth"] = df["block"].map(block_index)
    df["column"] = df["layer"].map(column_of)
    out = df[["block", "depth", "column", "layer", "sparsity", metric, "drop_shown"]].rename(
        columns={"drop_shown": "drop"})
    out.attrs["metric"] = metric
    return out.sort_values(["depth", "block", "sparsity"], kind="stable").reset_index(drop=True)


def _columns(table: pd.DataFrame) -> list[str]:
    """Heatmap columns: the known roles in their order, then the other names in model order."""
    present = list(dict.fromkeys(table["column"]))
    return [r for r in ROLE_ORDER if r in present] + [c for c in present if c not in ROLE_ORDER]


def block_heatmap(profile: SensitivityProfile, sparsity: float, metric: str | None = None) -> go.Figure:
    """Blocks (rows, by depth) x projections (columns: q, k, v, o, gate, up, down, ...) at one measured
    ``sparsity``, coloured by the drop of ``metric`` when that layer alone is pruned.

    Example::

        >>> from analysis import ScanConfig, block_heatmap, load_workload, scan
        >>> profile = scan(load_workload("sample:digits-resnet", "sample:digits"), ScanConfig(sparsities=(0.5,)))
        >>> [list(block_heatmap(profile, 0.5).data[0].y), list(block_heatmap(profile, 0.5).data[0].x)]
        [['layer1', 'layer2'], ['conv1', 'conv2', 'downsample.0']]
    """
    table = block_table(profile, metric)
    if table.empty:
        raise ValueError("no layer of this profile sits in a numbered block (layers.N, h.N, ...)")
    metric = table.attrs["metric"]
    cells = table[(table["sparsity"] - sparsity).abs() < 1e-9]
    if cells.empty:
        measured = ", ".join(f"{s:g}" for s in sorted(set(table["sparsity"])))
        raise ValueError(f"sparsity {sparsity:g} was not measured; the scan measured {measured}")
    _, unit = drop_scale(metric)
    blocks = list(dict.fromkeys(cells.sort_values(["depth", "block"], kind="stable")["block"]))
    columns = _columns(cells)
    grid = cells.pivot_table(index="block", columns="column", values="drop", aggfunc="first").reindex(
        index=blocks, columns=columns)
    names = cells.pivot_table(index="block", columns="column", values="layer", aggfunc="first").reindex(
        index=blocks, columns=columns)
    limit = max(float(grid.abs().max().max()) if grid.notna().any().any() else 0.0, 1e-9)
    fig = go.Figure(go.Heatmap(
        z=grid.to_numpy(dtype=float), x=columns, y=blocks, customdata=names.to_numpy(dtype=object),
        colorscale="RdBu_r", zmid=0.0, zmin=-limit, zmax=limit, colorbar={"title": {"text": f"drop ({unit})"}},
        hovertemplate=f"%{{customdata}}<br>drop %{{z:.3f}} {unit} at sparsity {sparsity:g}<extra></extra>"))
    fig.update_layout(
        title=f"{metric} drop per block and projection at sparsity {sparsity:g} (each layer pruned alone)",
        xaxis_title="projection", yaxis_title="block", xaxis={"type": "category"},
        yaxis={"autorange": "reversed", "type": "category"}, height=max(320, 60 + 26 * len(blocks)),
        margin={"l": 10, "r": 10, "t": 50, "b": 40})
    return fig


def block_curves(profile: SensitivityProfile, metric: str | None = None, blocks: list[str] | None = None) -> go.Figure:
    """One panel per block (by depth), one line per projection in it: drop of ``metric`` against sparsity.

    Example::

        >>> from analysis import ScanConfig, block_curves, load_workload, scan
        >>> profile = scan(load_workload("sample:digits-resnet", "sample:digits"), ScanConfig(sparsities=(0.5, 0.9)))
        >>> sorted(a.text for a in block_curves(profile).layout.annotations)
        ['layer1', 'layer2']
    """
    table = block_table(profile, metric)
    if table.empty:
        raise ValueError("no layer of this profile sits in a numbered block (layers.N, h.N, ...)")
    if blocks:
        table = table[table["block"].isin(blocks)]
    metric = table.attrs.get("metric", metric)
    _, unit = drop_scale(metric)
    fig = px.line(table, x="sparsity", y="drop", color="column", facet_col="block", facet_col_wrap=4, markers=True,
                  category_orders={"column": _columns(table), "block": list(dict.fromkeys(table["block"]))},
                  hover_data=["layer", metric], labels={"drop": f"drop ({unit})", "column": "projection"})
    fig.for_each_annotation(lambda a: a.update(text=a.text.split("=", 1)[-1]))
    fig.update_layout(title=f"{metric} drop per block", height=max(360, 260 * ((table["block"].nunique() + 3) // 4)),
                      margin={"l": 10, "r": 10, "t": 60, "b": 40})
    return fig


def layer_summary_bar(table: pd.DataFrame) -> go.Figure:
    """Each layer's share of the prunable parameters and of the FLOPs, side by side (from ``layer_table``)."""
    missing = {"layer", "params_share", "flops_share", "params", "flops"} - set(table.columns)
    if missing:
        raise ValueError(f"the layer table lacks the columns {', '.join(sorted(missing))}")
    fig = go.Figure([
        go.Bar(x=table["layer"], y=table["params_share"] * 100, name="parameters", customdata=table["params"],
               hovertemplate="%{x}<br>%{customdata:,} parameters (%{y:.2f}%)<extra></extra>"),
        go.Bar(x=table["layer"], y=table["flops_share"] * 100, name="FLOPs", customdata=table["flops"],
               hovertemplate="%{x}<br>%{customdata:,} FLOPs per sample (%{y:.2f}%)<extra></extra>"),
    ])
    fig.update_layout(
        title="share of the prunable parameters and FLOPs per layer",
        barmode="group",
        xaxis_title="layer",
        yaxis_title="share of the total (%)",
        xaxis={"type": "category"},
        margin={"l": 10, "r": 10, "t": 50, "b": 40},
    )
    return fig


# ---------------------------------------------------------------------------------------------- schedules


def schedule_bars(schedules: dict[str, dict[str, float]], layers: list[str]) -> go.Figure:
    """Per-layer sparsity of one or more schedules (name -> {layer: sparsity}), grouped by layer.

    ``layers`` fixes the order (model order); a layer a schedule does not name is dense (0).
    """
    if not schedules:
        raise ValueError("no schedules to draw")
    fig = go.Figure([
        go.Bar(x=list(layers), y=[float(s.get(l, 0.0)) for l in layers], name=name,
               hovertemplate=f"{name}<br>%{{x}}: sparsity %{{y:.3f}}<extra></extra>")
        for name, s in schedules.items()
    ])
    fig.update_layout(
        title="per-layer sparsity" + ("" if len(schedules) == 1 else ": schedules side by side"),
        barmode="group",
        xaxis_title="layer",
        yaxis_title="sparsity (fraction removed)",
        yaxis={"range": [0, 1]},
        xaxis={"type": "category"},
        showlegend=len(schedules) > 1,
        margin={"l": 10, "r": 10, "t": 50, "b": 40},
    )
    return fig


LABEL_POSITIONS = ("top center", "bottom center", "top right", "bottom left")  # neighbours' labels take turns


def point_labels(table: pd.DataFrame, y: str) -> pd.DataFrame:
    """One point per distinct (global sparsity, ``y``) of ``table``, named by every schedule on it ("current,
    sens" when the current schedule is a saved one), in order of sparsity, with text positions that take turns
    so that the labels of neighbouring points do not sit on each other."""
    rows = table.dropna(subset=["global_sparsity", y]).assign(
        _x=lambda d: d["global_sparsity"].round(4), _y=lambda d: d[y].round(4))
    points = (rows.groupby(["_x", "_y"], sort=False)
              .agg(global_sparsity=("global_sparsity", "first"), value=(y, "first"), label=("name", ", ".join))
              .reset_index(drop=True).sort_values("global_sparsity", kind="stable").reset_index(drop=True))
    points["position"] = [LABEL_POSITIONS[i % len(LABEL_POSITIONS)] for i in range(len(points))]
    return points


def schedule_tradeoff(table: pd.DataFrame, metric: str) -> go.Figure:
    """Schedules as points: global sparsity against the predicted (and, where measured, the measured) metric.

    ``table`` has columns ``name``, ``global_sparsity``, ``predicted`` and optionally ``measured``. Schedules on
    the same point share one label; the legend says which points are predictions (from the sensitivity profile,
    no evaluation) and which were measured.
    """
    missing = {"name", "global_sparsity", "predicted"} - set(table.columns)
    if missing:
        raise ValueError(f"the schedule table lacks the columns {', '.join(sorted(missing))}")
    predicted = point_labels(table, "predicted")
    traces = [go.Scatter(x=predicted["global_sparsity"], y=predicted["value"], mode="markers+text",
                         name="predicted (from the sensitivity profile)", text=predicted["label"],
                         textposition=list(predicted["position"]), cliponaxis=False, marker={"size": 11},
                         hovertemplate="%{text}<br>global sparsity %{x:.4f}<br>predicted %{y:.4f}<extra></extra>")]
    if "measured" in table.columns and table["measured"].notna().any():
        done = point_labels(table, "measured")
        traces.append(go.Scatter(x=done["global_sparsity"], y=done["value"], mode="markers",
                                 name="measured (the pruned model evaluated)", text=done["label"],
                                 marker={"size": 11, "symbol": "diamond"},
                                 hovertemplate="%{text}<br>global sparsity %{x:.4f}<br>measured %{y:.4f}"
                                               "<extra></extra>"))
    fig = go.Figure(traces)
    fig.update_layout(title=f"{metric} against global sparsity", xaxis_title="global sparsity",
                      yaxis_title=f"{metric} (predicted or measured)", xaxis={"range": [-0.05, 1.05]},
                      showlegend=True, legend={"orientation": "h", "y": -0.25},
                      margin={"l": 10, "r": 40, "t": 60, "b": 40})
    return fig
