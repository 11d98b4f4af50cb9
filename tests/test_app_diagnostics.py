"""The Diagnostics page: one (layer, sparsity) cell diagnosed, its three views drawn from the engine's tables."""

from __future__ import annotations

import pytest
from app_support import app, assert_clean, plotly_specs, sample_profile, sample_scan, stored_run, texts  # noqa: F401


def test_diagnose_the_most_fragile_layer_of_the_run_on_show(stored_run, sample_profile):  # noqa: F811
    from analysis.core.profile import tolerance_table
    from analysis.diagnostics.diagnosis import diagnose
    from analysis.sensitivity.config import ScanConfig
    from ui.common import WorkloadSpec, cached_workload

    at = app("diagnostics")
    assert_clean(at)
    assert "press Diagnose" in texts(at.info)
    fragile = tolerance_table(sample_profile)["layer"].iloc[0]
    assert at.selectbox[0].value == fragile
    at.select_slider[0].set_value(0.7)
    at.button[0].click()
    at = at.run()
    assert_clean(at)
    shift, dead, recal = plotly_specs(at)
    expected = diagnose(cached_workload(WorkloadSpec()), ScanConfig(sparsities=(0.7,), layers=(fragile,)))
    observed = [p for t in shift["data"] for p in t["x"]]
    assert observed == list(expected.shift["observed"])
    assert [p for t in shift["data"] for p in t["y"]] == pytest.approx(list(expected.shift["rel_l2"]))
    created = {m.label: m.value for m in at.metric}
    assert created["structural dead units created"] == str(
        int(expected.dead.loc[expected.dead["kind"] == "structural", "created"].sum()))
    assert f"{expected.recalibration['recalibrated'].iloc[0]:.4f}" in [m.value for m in at.metric]
    assert "BatchNorm recalibration" in recal["layout"]["title"]["text"]

    next(s for s in at.selectbox if s.label == "Statistic").set_value("cosine")
    at = at.run()
    assert_clean(at)
    assert "(cosine)" in plotly_specs(at)[0]["layout"]["title"]["text"]


def test_without_batchnorm_the_page_says_recalibration_does_not_apply():
    from ui.common import WorkloadSpec

    at = app("diagnostics")
    at.session_state["workload"] = WorkloadSpec("sample:digits-mlp")
    at = at.run()
    at.button[0].click()
    at = at.run()
    assert_clean(at)
    assert "does not apply" in texts(at.info)
    assert len(plotly_specs(at)) == 2


def test_a_cell_the_granularity_cannot_take_is_a_readable_error():
    at = app("diagnostics")
    at.selectbox[2].set_value("2:4")
    at.button[0].click()
    at = at.run()
    assert_clean(at)
    assert "cannot take granularity 2:4" in texts(at.error)


def test_a_diagnosis_is_stored_reopened_after_a_reload_and_deleted(stored_run, monkeypatch):  # noqa: F811
    import analysis.diagnostics.diagnosis
    from ui import runs

    at = app("diagnostics")
    at.select_slider[0].set_value(0.6)
    at.button[0].click()
    at = at.run()
    assert_clean(at)
    shift = plotly_specs(at)[0]
    [stored] = runs.store().artifacts(kind="diagnostics").itertuples()
    assert stored.run_id == stored_run and "at 0.6" in stored.name

    def refuse(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        raise AssertionError("a stored diagnosis must reopen without diagnosing again")

    monkeypatch.setattr(analysis.diagnostics.diagnosis, "diagnose", refuse)
    again = app("diagnostics")
    assert_clean(again)
    assert plotly_specs(again)[0]["data"] == shift["data"]
    assert "pruned to **0.6**" in texts(again.markdown)
    next(b for b in again.button if b.label == "Delete").click()
    again = again.run()
    assert_clean(again)
    assert runs.store().artifacts(kind="diagnostics").empty
    assert "press Diagnose" in texts(again.info)
