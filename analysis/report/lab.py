"""The strategy lab drawn: its recovery curves on one plot, and its section of the HTML report."""

from __future__ import annotations

import html
from collections.abc import Callable

import pandas as pd
import plotly.graph_objects as go
from plotly.colors import qualitative

from analysis.lab.literature import SOURCE
from analysis.lab.result import LabResult


def recovery_figure(result: LabResult, metric: str | None = None) -> go.Figure:
    """Every strategy's curve on one plot against epochs since its final mask (0): the pruning phase dotted at
    negative epochs (IMP's rounds, the gradual schedule), the recovery with the mask fixed solid; the dense value
    and the tolerance band below it.

    Example::

        >>> from analysis import LabConfig, Target, load_data, load_workload, recovery_figure, run_lab
        >>> workload = load_workload("sample:digits-mlp", "sample:digits")
        >>> config = LabConfig(Target("sparsity", 0.7), strategies=("unstructured",), epochs=0.5, export=False)
        >>> fig = recovery_figure(run_lab(workload, load_data("sample:digits-train"), config))
        >>> [trace.name for trace in fig.data]
        ['One-shot unstructured', 'One-shot unstructured']
    """
    metric = metric or result.metric
    curves = result.curves()
    fig = go.Figure()
    colours = qualitative.Plotly
    spe = max(result.steps_per_epoch, 1)
    for i, name in enumerate(result.strategies):
        c = curves[curves["strategy"] == name]
        title, colour = result.strategy_summary(name)["title"], colours[i % len(colours)]
        prune = c[c["phase"] == "prune"]
        recover = pd.concat([prune.tail(1), c[c["phase"] == "recover"]])
        for part, dash, legend in ((prune, "dot", False), (recover, "solid", True)):
            fig.add_trace(go.Scatter(
                x=part["recovery_step"] / spe, y=part[metric], mode="lines+markers", name=title, legendgroup=name,
                showlegend=legend, line={"color": colour, "dash": dash}, marker={"size": 4},
                customdata=part[["event", "sparsity", "step"]].to_numpy(),
                hovertemplate=f"{title}<br>%{{customdata[0]}}<br>{metric} %{{y:.4f}}<br>sparsity "
                              "%{customdata[1]:.4f}<br>step %{customdata[2]}<extra></extra>"))
    fig.add_hline(y=result.dense, line_dash="dash", line_color="grey", annotation_text="dense")
    fig.add_hrect(y0=result.dense - result.config.tolerance, y1=result.dense, fillcolor="grey", opacity=0.12,
                  line_width=0)
    fig.update_layout(title=f"Recovery with the mask fixed ({metric}; dotted: pruning phase)",
                      xaxis_title="epochs since the final mask", yaxis_title=metric, legend_title="strategy")
    return fig


def lab_section(result: LabResult, fig: Callable[[go.Figure], str], table: Callable[[pd.DataFrame], str]) -> list[str]:
    """The lab's part of the HTML report: the table beside the literature, the curves, the notes; ``fig`` and
    ``table`` turn a figure and a frame into HTML as the rest of the report does."""
    meta, c = result.meta, result.config
    intro = (f"Each strategy pruned {meta.get('model', '?')} to {c.target} ({c.allocation} allocation), measured on "
             f"{meta.get('data', '?')}" + (f", fine-tuned on {meta['train']}" if meta.get("train") else "")
             + f" for {c.epochs:g} epochs with the mask fixed; recovered = within {c.tolerance:g} of dense. Typical "
             f"ranges: {SOURCE}.")
    out = ["<h2>Strategy lab</h2>", f"<p>{html.escape(intro)}</p>"]
    if not result.complete:
        out.append("<p class='muted'>This lab is unfinished: only the units done so far are shown.</p>")
    if not result.strategies:
        return out
    out.append(table(result.table().reset_index().rename(columns={"": "measured"})))
    out.append(fig(recovery_figure(result)))
    notes = [f"{s['title']}: {n}" for s in result.summary().to_dict(orient="records") for n in s["notes"]]
    out += [f"<p class='muted'>{html.escape(n)}</p>" for n in notes]
    return out
