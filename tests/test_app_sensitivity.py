"""The Sensitivity page: settings, scan, reopen, cancel and resume, the views and their figures."""

from __future__ import annotations

import pytest
from app_support import app, assert_clean, plotly_specs, sample_profile, stored_run, texts  # noqa: F401

from analysis import engine
from analysis.engine import ScanConfig
from analysis.sensitivity import tolerance_table
from ui import runs
from ui.common import WorkloadSpec
from ui.common import cached_workload

KEY = WorkloadSpec().key


def _figure(at, title_word: str) -> dict:  # noqa: ANN001
    return next(f for f in plotly_specs(at) if title_word in f["layout"]["title"]["text"])


def test_without_a_run_the_page_says_how_to_start():
    at = app("sensitivity")
    assert_clean(at)
    assert "press Run scan" in texts(at.info)
    assert not plotly_specs(at)


def test_stored_run_shows_heatmap_curves_ranking_and_table(stored_run, sample_profile):  # noqa: F811
    at = app("sensitivity")
    assert_clean(at)
    heat = _figure(at, "drop when one layer is pruned")["data"][0]
    assert heat["y"] == sample_profile.layers
    assert heat["x"] == [f"{s:g}" for s in sample_profile.meta["sparsities"]]
    drops = sample_profile.drop("accuracy")
    fc = drops[drops["layer"] == "fc"].sort_values("sparsity")["drop"].tolist()
    assert heat["z"][3] == pytest.approx([d * 100 for d in fc])
    curves = _figure(at, "drop per layer")["data"]
    assert [c["name"] for c in curves] == sample_profile.layers
    assert "accuracy %{customdata[2]:.4f}" in curves[0]["hovertemplate"]
    ranking = at.dataframe[0].value
    expected = tolerance_table(sample_profile, 0.01, "accuracy")
    assert list(ranking["layer"]) == list(expected["layer"])
    assert list(ranking["max_sparsity"]) == list(expected["max_sparsity"])
    assert [b.label for b in at.get("download_button")] == ["Download CSV", "Download JSON"]


def test_max_drop_and_metric_change_the_views(stored_run, sample_profile):  # noqa: F811
    at = app("sensitivity")
    at.number_input[0].set_value(5.0)
    at = at.run()
    expected = tolerance_table(sample_profile, 0.05, "accuracy")
    assert list(at.dataframe[0].value["max_sparsity"]) == list(expected["max_sparsity"])
    metric_box = next(s for s in at.selectbox if s.label == "Metric")
    metric_box.set_value("loss")
    at = at.run()
    assert_clean(at)
    heat = _figure(at, "loss drop when one layer is pruned")["data"][0]
    assert heat["colorbar"]["title"]["text"] == "drop (loss)"
    assert "loss@max" in at.dataframe[0].value.columns


def test_run_a_scan_then_reopen_it_and_overlay_two_runs(stored_run):  # noqa: F811
    at = app("sensitivity")
    at.sidebar.selectbox[0].set_value("l1")
    at.sidebar.text_input[0].set_value("0.5, 0.9")
    at.sidebar.multiselect[0].set_value(["fc"])
    at = at.run()
    at.button[0].click()
    at = at.run()
    assert_clean(at)
    stored = runs.list_runs(KEY)
    assert len(stored) == 2
    new = stored[0]
    assert (new.criterion, new.layers, new.sparsities, new.complete) == ("l1", 1, 3, True)
    heat = _figure(at, "drop when one layer is pruned")["data"][0]
    assert heat["y"] == ["fc"] and heat["x"] == ["0", "0.5", "0.9"]
    overlay = _figure(at, "(solid) vs")["data"]
    assert [t["name"] for t in overlay] == ["fc (l1/unstructured)", "fc (magnitude/unstructured)"]
    assert overlay[1]["line"]["dash"] == "dash"

    at.button[0].click()
    at = at.run()
    assert_clean(at)
    assert "reopened it without recomputing" in texts(at.info)
    assert len(runs.list_runs(KEY)) == 2


def test_picking_an_earlier_run_reopens_it(stored_run):  # noqa: F811
    at = app("sensitivity")
    at.sidebar.text_input[0].set_value("0.5")
    at.sidebar.multiselect[0].set_value(["block1.0"])
    at = at.run()
    at.button[0].click()
    at = at.run()
    assert _figure(at, "drop when one layer is pruned")["data"][0]["y"] == ["block1.0"]
    picker = next(s for s in at.selectbox if s.label.startswith("Run on show"))
    picker.set_value(stored_run)
    at = at.run()
    assert_clean(at)
    assert _figure(at, "drop when one layer is pruned")["data"][0]["y"] == ["block1.0", "block2.0", "block3.0", "fc"]


@pytest.mark.parametrize("grid,granularity,message", [
    ("0.5, 1.5", "unstructured", "1.5"),
    ("0.3", "2:4", "sparsity 0.3 is not possible"),
    ("abc", "unstructured", "abc"),
])
def test_bad_settings_are_named_and_the_run_button_is_off(grid, granularity, message):
    at = app("sensitivity")
    at.sidebar.text_input[0].set_value(grid)
    at.sidebar.selectbox[1].set_value(granularity)
    at = at.run()
    assert_clean(at)
    assert message in texts(at.error)
    assert at.button[0].disabled


def test_cancel_keeps_finished_layers_and_run_resumes(prunescope_home):
    """A Cancel click stops the script mid-scan; what the scan finished is kept, and Run picks up from there."""
    config = ScanConfig(sparsities=(0.5, 0.9))
    workload = cached_workload(WorkloadSpec())
    ctx = engine.prepare(workload, config)
    first = engine.ENGINES["naive"](ctx, ctx.layers[0], None)
    key = runs.config_key(KEY, config)
    at = app("sensitivity")
    at.session_state["partial_scans"] = {key: {"ctx": ctx, "done": {first.layer: first}, "workload": KEY}}
    at.button[1].click()
    at = at.run()
    assert_clean(at)
    assert "Scan cancelled" in texts(at.warning)
    [cancelled] = runs.list_runs(KEY)
    assert not cancelled.complete and cancelled.layers == 4
    assert "cancelled" in texts(at.warning) and _figure(at, "drop when")["data"][0]["y"] == ["block1.0"]

    at.sidebar.text_input[0].set_value("0.5, 0.9")
    at = at.run()
    at.button[0].click()
    at = at.run()
    assert_clean(at)
    complete = [r for r in runs.list_runs(KEY) if r.complete]
    assert len(complete) == 1
    profile = runs.load_run(complete[0].run_id)
    assert profile.meta["resumed_layers"] == 1
    assert profile.layers == ["block1.0", "block2.0", "block3.0", "fc"]


def test_cancel_with_nothing_running_says_so():
    at = app("sensitivity")
    at.button[1].click()
    at = at.run()
    assert_clean(at)
    assert "No scan was running" in texts(at.warning)
