"""Make a figure read right outside the dashboard: real colours, a legend, and margins that fit the labels.

Inside a Streamlit server ``plotly.io.templates.default`` is Streamlit's template, whose colour way holds
placeholders (``#000001``, ``#000002``, ...) that only the dashboard's browser code swaps for colours; a figure
built there and written to HTML draws every series near black. The HTML report passes each figure through
``readable`` so it looks the same whichever process built it.
"""

from __future__ import annotations

import re

import plotly.graph_objects as go
from plotly.colors import qualitative

PALETTE = qualitative.Plotly
_PLACEHOLDER = re.compile(r"^#0000(\d\d)$")
CHAR_PX = 7  # width of one tick-label character at plotly's default 12 px font
MIN_LEFT = 60


def _colour(value: object, order: int) -> object:
    """A placeholder colour (or none, for a bar) becomes the palette's; a real colour stays."""
    if value is None:
        return PALETTE[order % len(PALETTE)]
    match = _PLACEHOLDER.match(value) if isinstance(value, str) else None
    return PALETTE[(int(match.group(1)) - 1) % len(PALETTE)] if match else value


def _recolour(fig: go.Figure) -> None:
    names = list(dict.fromkeys(t.name for t in fig.data))
    for trace in fig.data:
        order = names.index(trace.name)
        if trace.type == "bar":
            trace.marker.color = _colour(trace.marker.color, order)
        elif trace.type == "scatter":
            trace.line.color = _colour(trace.line.color, order) if trace.line.color else None
            if isinstance(trace.marker.color, str):
                trace.marker.color = _colour(trace.marker.color, order)


def left_margin(labels: list[str]) -> int:
    """Pixels for the left margin that show the longest label whole, and the axis title beside it."""
    longest = max((len(str(label)) for label in labels), default=0)
    return max(MIN_LEFT, CHAR_PX * longest + 40)


def readable(fig: go.Figure) -> go.Figure:
    """``fig`` with the plain plotly template, distinct series colours, a legend when there are several named
    series, and y axes whose tick labels and titles are not cut nor overlapping (changed in place, returned)."""
    _recolour(fig)
    ys = [str(v) for t in fig.data if t.type == "heatmap" and t.y is not None for v in t.y]
    named = {t.name for t in fig.data if t.name}
    fig.update_layout(template="plotly_white", margin={"l": left_margin(ys)})
    if len(named) > 1:
        fig.update_layout(showlegend=True)
    fig.update_yaxes(automargin=True, title_standoff=12)
    fig.update_xaxes(automargin=True)
    return fig
