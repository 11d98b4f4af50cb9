"""The HTML report's figures read right whichever process builds them (issue 20): real colours, a legend,
margins that fit the labels. Built after importing Streamlit, as in the dashboard's server, whose plotly template
holds placeholder colours that only the dashboard's browser code replaces."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import plotly.io as pio
import streamlit  # noqa: F401 - sets plotly's default template to Streamlit's, as in the dashboard's process
from app_support import sample_profile, sample_scan  # noqa: F401

from analysis.core.metric_table import drop_text
from analysis.report import plots
from analysis.report.html import build_report
from analysis.report.style import CHAR_PX, PALETTE, readable

ROOT = Path(__file__).resolve().parent.parent
PLACEHOLDER = re.compile(r"#0000\d\d")


def test_streamlit_template_is_the_one_in_force():
    assert pio.templates.default == "streamlit"


def test_bar_charts_get_distinct_colours_and_a_legend():
    fig = readable(plots.schedule_bars({"dense": {"a": 0.0}, "pruned": {"a": 0.5}}, ["a", "b"]))
    colours = [t.marker.color for t in fig.data]
    assert len(set(colours)) == 2 and all(c in PALETTE for c in colours)
    assert fig.layout.showlegend
    recal = pd.DataFrame({"layer": ["a", "b"], "sparsity": [0.5, 0.5], "pruned": [0.7, 0.6],
                          "recalibrated": [0.9, 0.8], "dense": [0.95, 0.95], "metric": ["accuracy"] * 2})
    fig = readable(plots.recalibration_figure(recal))
    colours = {t.name: t.marker.color for t in fig.data}
    assert len(set(colours.values())) == 2 and not any(PLACEHOLDER.fullmatch(str(c)) for c in colours.values())


def test_heatmap_left_margin_fits_the_longest_layer_name(sample_profile):  # noqa: F811
    fig = readable(plots.sensitivity_heatmap(sample_profile))
    longest = max(len(name) for name in sample_profile.layers)
    assert fig.layout.margin.l >= CHAR_PX * longest + 40
    assert fig.layout.yaxis.automargin and fig.layout.yaxis.title.standoff > 0


def test_the_report_has_no_placeholder_colours(sample_profile):  # noqa: F811
    html = build_report(sample_profile, plotlyjs="cdn")
    assert '"layout":{' in html.replace(" ", "") and not PLACEHOLDER.search(html)
    assert '"automargin":true' in html.replace(" ", "")


def _dead(after: list[int]) -> pd.DataFrame:
    rows = [{"layer": "fc1", "sparsity": 0.5, "observed": obs, "kind": kind, "units": 10, "dead_before": 0,
             "dead_after": n, "created": n, "fraction_before": 0.0, "fraction_after": n / 10, "indices_created": ""}
            for (obs, kind), n in zip([("fc1", "structural"), ("fc1", "functional"), ("fc2", "functional")], after)]
    return pd.DataFrame(rows)


def test_dead_neuron_chart_says_when_nothing_died_and_names_facets_plainly():
    quiet = plots.dead_neurons_figure(_dead([0, 0, 0]))
    notes = [a.text for a in quiet.layout.annotations]
    assert "no unit is dead, before or after pruning" in notes
    assert {"structural", "functional"} <= set(notes) and not any("kind=" in n for n in notes)
    busy = plots.dead_neurons_figure(_dead([2, 1, 0]))
    assert not any("dead" in a.text for a in busy.layout.annotations)
    assert busy.layout.yaxis.range[1] > 1 and busy.layout.yaxis2.domain[0] - busy.layout.yaxis.domain[1] >= 0.1


def test_a_drop_of_one_point_is_singular():
    """The report's tolerance heading and the Strategy lab's caption say "1 point", not "1 points"."""
    assert drop_text(1.0, "points") == "1 point"
    assert drop_text(0.5, "points") == "0.5 points" and drop_text(2, "points") == "2 points"
    assert drop_text(1.0, "loss") == "1 loss"


def test_the_report_says_within_a_drop_of_1_point(sample_profile):  # noqa: F811
    html = build_report(sample_profile, plotlyjs="cdn")
    assert "within a drop of 1 point</h3>" in html and "1 points" not in html


def test_no_page_writes_a_scaled_drop_with_its_unit_by_hand():
    """Every drop shown in its unit goes through ``drop_text`` (a hand-made ``{x:g} {unit}`` printed "1 points")."""
    hand_made = re.compile(r":g\} \{unit\}")
    files = [*ROOT.glob("pages/*.py"), *ROOT.glob("ui/*.py"), *ROOT.glob("analysis/**/*.py")]
    assert [str(f) for f in files if hand_made.search(f.read_text())] == []
