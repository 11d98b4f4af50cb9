"""The Sensitivity page's adaptive modes: stop after collapse (filled cells marked) and bisection (its table)."""

from __future__ import annotations

import pandas as pd
from app_support import app, assert_clean, plotly_specs, texts

from analysis.sensitivity import adaptive
from ui import runs
from ui.common import WorkloadSpec

SPEC = WorkloadSpec()


def _figure(at, title_word: str) -> dict:  # noqa: ANN001
    return next(f for f in plotly_specs(at) if title_word in f["layout"]["title"]["text"])


def test_stop_after_collapse_marks_the_filled_cells_then_bisection_shows_its_table():
    at = app("sensitivity")
    at.sidebar.radio[0].set_value("collapse")
    at = at.run()
    at.sidebar.text_input[0].set_value("0.2, 0.4, 0.6, 0.8, 0.9, 0.95")
    at.sidebar.slider[0].set_value(0.5)
    at = at.run()
    at.button[0].click()
    at = at.run()
    assert_clean(at)
    [collapse_run] = runs.list_runs(SPEC)
    profile = runs.load_run(collapse_run.run_id)
    assert profile.meta["adaptive"]["collapse_at"] == 0.5
    cells = adaptive.measured_cells(profile)
    assert cells["filled"] > 0
    assert f"**{cells['measured']}** of {cells['cells']} cells measured" in texts(at.caption)
    marks = next(t for t in _figure(at, "drop when one layer is pruned")["data"] if t.get("name") == "filled, not measured")
    filled = profile.table[~profile.table["measured"]]
    assert list(zip(marks["x"], marks["y"])) == [(f"{s:g}", l) for s, l in zip(filled["sparsity"], filled["layer"])]
    table = next(d.value for d in at.dataframe if "measured" in d.value.columns)
    assert int((~table["measured"].astype(bool)).sum()) == cells["filled"]

    at.sidebar.radio[0].set_value("bisect")
    at = at.run()
    assert at.sidebar.text_input[0].disabled
    resolution = next(n for n in at.sidebar.number_input if n.label.startswith("Resolution"))
    resolution.set_value(0.05)
    at = at.run()
    at.button[0].click()
    at = at.run()
    assert_clean(at)
    stored = runs.list_runs(SPEC)
    assert len(stored) == 2 and stored[0].run_id != collapse_run.run_id
    found = adaptive.bisect_table(runs.load_run(stored[0].run_id))
    shown = at.dataframe[0].value
    pd.testing.assert_series_equal(shown["max_sparsity"], found["max_sparsity"])
    assert (found["evaluations"] < 19).all()
    assert "Download tolerance CSV" in [b.label for b in at.get("download_button")]
    assert "Bisection: per layer, the largest sparsity whose accuracy drop stays within 0.01" in texts(at.caption)


def test_a_bad_adaptive_setting_is_named_and_the_run_button_is_off():
    at = app("sensitivity")
    at.sidebar.radio[0].set_value("bisect")
    at = at.run()
    at.sidebar.selectbox[0].set_value("magnitude")
    at.sidebar.selectbox[1].set_value("2:4")
    at = at.run()
    assert_clean(at)
    assert "no sparsity to search" in texts(at.error)
    assert at.button[0].disabled
