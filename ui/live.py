"""The Schedule page's sliders drawn in the browser, with totals and prediction counted there on every move.

A Streamlit slider's move is a round trip (the browser sends the value, the server reruns the fragment, the
browser draws the new number): on a 2-core machine that is 100-250 ms, more with a hundred sliders. The component
in ``ui/live_sliders/`` (plain HTML and JS on Streamlit's component protocol, no build step, shipped in the wheel)
draws the sliders, counts the totals and the prediction itself from ``analysis.schedule.live.browser_facts`` and
sends the schedule back when a slider is let go, for the charts, Measure, Save and the export.

Only schedules that add up layer by layer are counted in the browser (``live.supported``); channel schedules keep
Streamlit's sliders. ``PRUNESCOPE_SLIDERS=server`` keeps Streamlit's sliders everywhere (the AppTest suites use
it: AppTest cannot drive a component).
"""

from __future__ import annotations

import os
from pathlib import Path

import streamlit.components.v1 as components

from analysis.core.layers import Layer
from analysis.schedule.live import browser_facts, supported
from analysis.schedule.predict import Predictor
from ui.schedules import GROUP_ABOVE, SliderItem, snapped

FRONTEND = Path(__file__).resolve().parent / "live_sliders"
_component = components.declare_component("live_sliders", path=str(FRONTEND))


def in_browser(granularity: str) -> bool:
    """Whether this schedule's sliders run in the browser: its totals add up per layer and the environment does
    not ask for Streamlit's sliders (``PRUNESCOPE_SLIDERS=server``)."""
    return os.environ.get("PRUNESCOPE_SLIDERS", "browser") != "server" and supported(granularity)


def _item(item: SliderItem) -> dict:
    return {"key": item.key, "label": item.label, "members": list(item.members), "limit": item.limit,
            "step": item.step, "options": list(item.options), "why": item.why}


def sliders(items: list[SliderItem], layers: list[Layer], granularity: str, predictor: Predictor,
            values: dict[str, float], revision: int, key: str) -> None:
    """Draw the sliders of ``items`` starting at ``values`` and write the browser's values back into ``values``.

    ``revision`` counts the times the server replaced the values (a preset, a loaded schedule): the browser takes
    the server's values when it changes and keeps its own otherwise; what it sends back counts only if it was
    made on the current revision."""
    start = {i.key: snapped(min(values.get(m, 0.0) for m in i.members), i) for i in items if not i.why}
    for item in items:  # every slider's layers in the schedule's order, which the browser's sums follow
        for member in item.members:
            values.setdefault(member, start.get(item.key, 0.0))
    returned = _component(items=[_item(i) for i in items], values=start, revision=revision,
                          facts=browser_facts(layers, granularity, predictor), order=list(values),
                          group_above=GROUP_ABOVE, unit="layer", key=key, default=None)
    chosen = returned["values"] if returned and returned.get("revision") == revision else start
    for item in items:
        if not item.why:
            for member in item.members:
                values[member] = float(chosen.get(item.key, start[item.key]))
