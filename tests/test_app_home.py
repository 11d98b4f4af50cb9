"""The home page: opens on the bundled sample, shows its layers, scans it once and reopens the scan after."""

from __future__ import annotations

from app_support import app, assert_clean, plotly_specs, sample_profile, stored_run, texts  # noqa: F401

from ui import runs
from ui.common import WorkloadSpec


def test_home_opens_on_the_sample_and_scans_it_once():
    at = app()
    assert_clean(at)
    table = at.dataframe[0].value
    assert list(table["layer"]) == ["block1.0", "block2.0", "block3.0", "fc"]
    assert at.metric[0].value == "4"
    [heatmap] = plotly_specs(at)
    assert heatmap["data"][0]["type"] == "heatmap"
    assert heatmap["data"][0]["y"] == ["block1.0", "block2.0", "block3.0", "fc"]
    stored = runs.list_runs(WorkloadSpec().key)
    assert len(stored) == 1 and stored[0].complete

    again = app()
    assert_clean(again)
    assert len(runs.list_runs(WorkloadSpec().key)) == 1, "the second visit must reopen the scan, not rerun it"
    assert plotly_specs(again)[0]["data"][0]["z"] == heatmap["data"][0]["z"]


def test_home_shows_the_stored_run(stored_run):  # noqa: F811
    at = app()
    assert_clean(at)
    assert stored_run in texts(at.caption)
    assert len(runs.list_runs(WorkloadSpec().key)) == 1


def test_home_with_a_workload_that_cannot_load_says_why():
    at = app()
    at.session_state["workload"] = WorkloadSpec("sample:no-such-model")
    at.run()
    assert_clean(at)
    assert "no bundled sample 'no-such-model'" in texts(at.error)
    assert not plotly_specs(at)
