"""Small display helpers shared by the pages: plurals, deltas without false colour, the bundled favicon.

They only shape text for the pages; every number comes from ``analysis/``.
"""

from __future__ import annotations

# An emoji favicon: Streamlit draws it as an inline SVG, so the browser asks no external host for it.
FAVICON = "✂️"


def plural(count: int, noun: str, many: str | None = None) -> str:
    """``"1 layer"``, ``"3 layers"``: the count with the noun in the right number."""
    return f"{count:,} {noun if count == 1 else (many or noun + 's')}"


def delta_color(delta: float) -> str:
    """``st.metric``'s ``delta_color`` for ``delta``: ``"off"`` (grey, no meaning) for an exact zero."""
    return "off" if delta == 0 else "normal"
