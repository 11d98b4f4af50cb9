"""Small display helpers shared by the pages: plurals, deltas without false colour, the bundled favicon.

They only shape text for the pages; every number comes from ``analysis/``.
"""

from __future__ import annotations

from analysis.core.metric_table import HIGHER_IS_BETTER

# An emoji favicon: Streamlit draws it as an inline SVG, so the browser asks no external host for it.
FAVICON = "✂️"


def plural(count: int, noun: str, many: str | None = None) -> str:
    """``"1 layer"``, ``"3 layers"``: the count with the noun in the right number."""
    return f"{count:,} {noun if count == 1 else (many or noun + 's')}"


def delta_color(delta: float, digits: int, normal: str = "normal") -> str:
    """``st.metric``'s ``delta_color`` for a delta shown with ``digits`` decimals: ``"off"`` (grey, no arrow
    colour) when it shows as zero ("+0.0000" is no gain), else ``normal`` (``"inverse"`` where lower is better)."""
    return "off" if round(float(delta), digits) == 0 else normal


def change_word(metric: str) -> str:
    """What a worse value of ``metric`` is called: a ``drop`` for accuracy-like metrics, an ``increase`` for
    loss-like ones (the metric table's direction)."""
    return "drop" if HIGHER_IS_BETTER[metric] else "increase"


def verification_pair(onnx_model: bool) -> str:
    """What the export's main check compares: an ONNX model is run in ONNX Runtime on both sides."""
    return ("the exported file vs the pruned ONNX model, both in ONNX Runtime" if onnx_model
            else "ONNX Runtime vs PyTorch")
