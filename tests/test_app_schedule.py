"""The Schedule page: presets, sliders with live totals and prediction, measure, save, compare and load."""

from __future__ import annotations

import json

import pytest
from app_support import (  # noqa: F401 - downloads, sample_* and stored_run are fixtures
    app,
    assert_clean,
    button,
    downloads,
    plotly_specs,
    sample_profile,
    sample_scan,
    stored_run,
    texts,
)

from analysis.schedule.allocate import Bounds, Target, allocate, wanda_scores
from analysis.schedule.measure import measure_schedule
from analysis.schedule.predict import Predictor, calibration_verdict
from analysis.schedule.schedule import Schedule
from analysis.schedule.totals import Accountant
from ui import runs, schedules
from ui.common import WorkloadSpec, cached_layers, cached_workload

SPEC = WorkloadSpec()
LAYERS = ["block1.0", "block2.0", "block3.0", "fc"]


def _metrics(at) -> dict[str, str]:  # noqa: ANN001
    return {m.label: m.value for m in at.metric}


def _sliders(at) -> dict[str, float]:  # noqa: ANN001
    return {s.label.split(" ")[0]: s.value for s in at.slider}


def _text(at, label: str):  # noqa: ANN001, ANN202
    return next(t for t in at.text_input if t.label == label)


def _preset(at, method: str, kind: str = "sparsity", value: str = "0.5", max_sparsity: float | None = None,
            keep_dense: list[str] | None = None):  # noqa: ANN001, ANN202
    next(s for s in at.selectbox if s.label == "Method").set_value(method)
    next(r for r in at.radio if r.label == "Target").set_value(kind)
    at = at.run()
    _text(at, "Target value").set_value(value)
    if max_sparsity is not None:
        next(n for n in at.number_input if n.label == "Per-layer maximum").set_value(max_sparsity)
    if keep_dense is not None:
        next(m for m in at.multiselect if m.label == "Keep dense").set_value(keep_dense)
    button(at, "Apply preset").click()
    return at.run()


def _expected(profile, sparsities: dict[str, float]) -> tuple[dict, float]:  # noqa: ANN001
    totals = Accountant(cached_layers(SPEC)).totals(sparsities, "unstructured").fractions()
    return totals, Predictor(profile).predict(sparsities)


def test_without_a_scan_the_page_points_to_sensitivity():
    at = app("schedule")
    assert_clean(at)
    assert "No scan of this workload yet" in texts(at.info)
    assert not at.slider


def test_a_fresh_schedule_prunes_nothing_and_says_so(stored_run, sample_profile):  # noqa: F811
    at = app("schedule")
    assert_clean(at)
    assert sorted(_sliders(at)) == LAYERS
    assert set(_sliders(at).values()) == {0.0}
    m = _metrics(at)
    assert m["global sparsity"] == "0.0000" and m["parameters kept"] == "1.0000" and m["FLOPs kept"] == "1.0000"
    assert m["predicted accuracy"] == f"{sample_profile.baseline('accuracy'):.4f}"
    assert "prunes nothing" in texts(at.info)
    assert button(at, "Measure").disabled and button(at, "Save").disabled
    assert at.get("download_button")[0].proto.disabled
    assert not plotly_specs(at)


@pytest.mark.parametrize("method", ["uniform", "global", "lamp", "erk", "sensitivity", "owl"])
def test_each_preset_reaches_the_target_and_its_prediction_is_the_profiles(method, stored_run, sample_profile):  # noqa: F811
    at = _preset(app("schedule"), method, value="0.6")
    assert_clean(at)
    layers = cached_layers(SPEC)
    workload = cached_workload(SPEC)
    weights = {l.name: l.weight(workload.model).detach() for l in layers}
    scores = wanda_scores(workload.model, layers, workload.data) if method == "owl" else None
    made = allocate(method, layers, Target("sparsity", 0.6), bounds=Bounds(0.95), accountant=Accountant(layers),
                    weights=weights, profile=sample_profile, allocatable=LAYERS, scores=scores)
    sliders = _sliders(at)
    assert sliders == pytest.approx({n: round(made.sparsities.get(n, 0.0), 3) for n in LAYERS}, abs=1e-9)
    totals, predicted = _expected(sample_profile, sliders)
    m = _metrics(at)
    assert m["global sparsity"] == f"{totals['global_sparsity']:.4f}"
    assert abs(totals["global_sparsity"] - 0.6) < 0.005
    assert m["predicted accuracy"] == f"{predicted:.4f}"
    bars = plotly_specs(at)[0]["data"][0]
    assert bars["x"] == LAYERS and bars["y"] == pytest.approx([sliders[n] for n in LAYERS])


def test_flops_target_bounds_and_keep_dense(stored_run, sample_profile):  # noqa: F811
    at = _preset(app("schedule"), "sensitivity", kind="flops", value="60%", max_sparsity=0.7, keep_dense=["fc"])
    assert_clean(at)
    sliders = _sliders(at)
    assert sliders["fc"] == 0.0 and max(sliders.values()) <= 0.7
    assert abs(float(_metrics(at)["FLOPs kept"]) - 0.6) < 0.01


def test_moving_a_slider_changes_the_prediction_and_the_totals(stored_run, sample_profile):  # noqa: F811
    at = _preset(app("schedule"), "uniform", value="0.3")
    before = _metrics(at)
    next(s for s in at.slider if s.label.startswith("block1.0")).set_value(0.9)
    at = at.run()
    assert_clean(at)
    after = _metrics(at)
    sliders = _sliders(at)
    assert sliders["block1.0"] == 0.9
    totals, predicted = _expected(sample_profile, sliders)
    assert after["predicted accuracy"] == f"{predicted:.4f}" != before["predicted accuracy"]
    assert after["global sparsity"] == f"{totals['global_sparsity']:.4f}" != before["global sparsity"]
    assert "hand-tuned from uniform" in "\n".join(c.value for c in at.caption)


@pytest.mark.parametrize("kind,value,message", [
    ("sparsity", "1.5", "'1.5'"),
    ("params", "lots", "'lots'"),
    ("flops", "200%", "outside 0 to"),
])
def test_a_bad_target_is_a_readable_error(kind, value, message, stored_run):  # noqa: F811
    at = _preset(app("schedule"), "uniform", kind=kind, value=value)
    assert_clean(at)
    assert "Cannot apply the uniform preset" in texts(at.error) and message in texts(at.error)
    assert set(_sliders(at).values()) == {0.0}


def test_a_target_out_of_reach_under_the_bounds_is_named(stored_run):  # noqa: F811
    at = _preset(app("schedule"), "uniform", value="0.9", max_sparsity=0.2)
    assert_clean(at)
    assert "out of reach" in texts(at.error)


def test_measure_shows_the_measurement_next_to_the_prediction(stored_run, sample_profile):  # noqa: F811
    at = _preset(app("schedule"), "sensitivity", value="0.5")
    sliders = _sliders(at)
    button(at, "Measure").click()
    at = at.run()
    assert_clean(at)
    schedule = Schedule({k: v for k, v in sliders.items() if v > 0})
    expected = measure_schedule(cached_workload(SPEC), schedule, bn_recalibrate=True).to_dict()
    m = _metrics(at)
    box = next(c for c in at.checkbox if c.label.startswith("Recalibrate BatchNorm"))
    assert box.value, "a model with BatchNorm is measured recalibrated by default"
    assert m["measured accuracy"] == f"{expected['bn_recalibrated']['accuracy']:.4f}", "the headline follows the box"
    assert m["stage"] == "bn recalibrated"
    row = at.dataframe[0].value.iloc[0]
    assert row["predicted"] == pytest.approx(Predictor(sample_profile).predict(schedule))
    assert row["measured (pruned)"] == pytest.approx(expected["pruned"]["accuracy"])
    assert row["measured (BatchNorm recalibrated)"] == pytest.approx(expected["bn_recalibrated"]["accuracy"])
    box.uncheck()
    at = at.run()
    m = _metrics(at)
    assert m["measured accuracy"] == f"{expected['pruned']['accuracy']:.4f}" and m["stage"] == "pruned"

    next(s for s in at.slider if s.label.startswith("fc")).set_value(0.0)
    at = at.run()
    assert "The last measurement was of another schedule" in "\n".join(c.value for c in at.caption)


def test_save_compare_and_load_schedules(stored_run, sample_profile, prunescope_home):  # noqa: F811
    at = _preset(app("schedule"), "uniform", value="0.4")
    _text(at, "Schedule name").set_value("uni")
    at = at.run()
    button(at, "Save").click()
    at = at.run()
    assert "Saved schedule 'uni' in the run store" in texts(at.success)
    uniform = _sliders(at)
    at = _preset(at, "sensitivity", value="0.6")
    button(at, "Measure").click()
    at = at.run()
    _text(at, "Schedule name").set_value("sens")
    at = at.run()
    button(at, "Save").click()
    at = at.run()
    assert_clean(at)

    stored = runs.store().artifacts(kind="schedule")
    assert sorted(stored["name"]) == ["sens", "uni"] and set(stored["run_id"]) == {stored_run}
    _, payload = runs.store().get_artifact(int(stored.set_index("name").loc["sens", "id"]))
    on_disk = Schedule.from_dict(payload)
    assert on_disk.sparsities == {k: v for k, v in _sliders(at).items() if v > 0}
    assert on_disk.meta["workload_key"] == SPEC.key and on_disk.meta["run_id"] == stored_run
    assert on_disk.meta["predicted"]["accuracy"] == pytest.approx(Predictor(sample_profile).predict(on_disk))
    assert "accuracy" in on_disk.meta["measured"] and on_disk.meta["predicted"]["stage"] == "pruned"

    table = at.dataframe[-1].value.set_index("name")
    assert list(table.index) == ["current", "sens", "uni"]
    assert table.loc["uni", "predicted"] == pytest.approx(Predictor(sample_profile).predict(
        {k: v for k, v in uniform.items() if v > 0}))
    assert table.loc["uni", "global_sparsity"] == pytest.approx(0.4, abs=0.005)
    assert table.loc["sens", "measured"] == pytest.approx(on_disk.meta["measured"]["pruned"]["accuracy"])
    assert table.loc["uni", "measured"] != table.loc["uni", "measured"]  # NaN (shown "not measured"), not None
    bars, tradeoff = plotly_specs(at)[1:]
    assert [t["name"] for t in bars["data"]] == ["current", "sens", "uni"]
    assert tradeoff["data"][0]["text"] == ["uni", "current, sens"]  # the current schedule is sens: one point
    assert [t["name"].split(" ")[0] for t in tradeoff["data"]] == ["predicted", "measured"]
    assert tradeoff["layout"]["showlegend"] is True

    next(s for s in at.selectbox if s.label.startswith("Load a saved")).set_value("uni")
    button(at, "Load").click()
    at = at.run()
    assert_clean(at)
    assert _sliders(at) == uniform

    _text(at, "Schedule name").set_value("../evil")
    at = at.run()
    button(at, "Save").click()
    at = at.run()
    assert "'../evil'" in texts(at.error)
    assert sorted(runs.store().artifacts(kind="schedule")["name"]) == ["sens", "uni"]

    button(at, "Delete").click()  # the schedule picked in "Load a saved schedule": uni
    at = at.run()
    assert_clean(at)
    assert list(runs.store().artifacts(kind="schedule")["name"]) == ["sens"]
    assert list(at.dataframe[-1].value["name"]) == ["current", "sens"]


def test_the_search_box_filters_sliders_and_keeps_hidden_values(stored_run):  # noqa: F811
    at = app("schedule")
    next(s for s in at.slider if s.label.startswith("fc")).set_value(0.5)
    at = at.run()
    _text(at, "Filter layers").set_value("block")
    at = at.run()
    assert sorted(_sliders(at)) == ["block1.0", "block2.0", "block3.0"]
    assert _metrics(at)["global sparsity"] != "0.0000", "a hidden layer's sparsity still counts"
    _text(at, "Filter layers").set_value("nothing-like-this")
    at = at.run()
    assert not at.slider and "No layer name contains" in texts(at.warning)
    _text(at, "Filter layers").set_value("")
    at = at.run()
    assert _sliders(at)["fc"] == 0.5


def test_large_models_group_sliders_by_block(stored_run, monkeypatch):  # noqa: F811
    monkeypatch.setattr(schedules, "GROUP_ABOVE", 2)
    at = app("schedule")
    assert_clean(at)
    labels = [e.label for e in at.expander if not e.label.startswith("Calibrate")]
    assert labels == ["block1 (1 layer)", "block2 (1 layer)", "block3 (1 layer)", "fc (1 layer)"]
    assert len(at.slider) == 4


def test_the_schedule_downloads_as_json(stored_run, downloads):  # noqa: F811
    at = _preset(app("schedule"), "uniform", value="0.5")
    assert_clean(at)
    [download] = at.get("download_button")
    assert download.proto.label == "Download schedule JSON" and not download.proto.disabled
    schedule = Schedule.from_dict(json.loads(downloads(download)))
    assert schedule.sparsities == {k: v for k, v in _sliders(at).items() if v > 0}
    assert (schedule.criterion, schedule.granularity) == ("magnitude", "unstructured")


def test_a_reload_finds_the_schedule_being_tuned(stored_run):  # noqa: F811
    at = _preset(app("schedule"), "erk", value="0.5")
    tuned = _sliders(at)
    again = app("schedule")
    assert_clean(again)
    assert _sliders(again) == tuned
    assert "erk to sparsity 0.5" in "\n".join(c.value for c in again.caption)


def test_calibrate_the_prediction_from_the_page(stored_run, sample_profile, prunescope_home, tmp_path):  # noqa: F811
    from analysis.schedule.calibrate import calibrate

    at = app("schedule")
    assert "Not calibrated yet" in texts(at.info)
    assert "(additive: no calibration)" in "\n".join(c.value for c in at.caption)
    _text(at, "Target sparsities").set_value("0.5, 0.8")
    button(at, "Calibrate").click()
    at = at.run()
    assert_clean(at)
    assert "Calibrated on 4 measured schedules" in texts(at.success)
    expected = calibrate(sample_profile, cached_workload(SPEC), targets=(0.5, 0.8))
    used, reason = calibration_verdict(expected.to_dict())  # calibrated only when it predicts better
    assert f"({reason})" in "\n".join(c.value for c in at.caption), "the cached predictor was kept"
    table = at.dataframe[0].value
    assert list(table["method"]) == list(expected.table["method"])
    assert list(table["measured"]) == pytest.approx(list(expected.table["measured"]))
    at = _preset(at, "uniform", value="0.6")
    sliders = {k: v for k, v in _sliders(at).items() if v > 0}
    chosen = expected.predictor if used else Predictor(sample_profile)
    assert _metrics(at)["predicted accuracy"] == f"{chosen.predict(sliders):.4f}"
    assert expected.predictor.predict(sliders) != pytest.approx(Predictor(sample_profile).predict(sliders))
    stored = runs.store().artifacts(kind="calibration")
    assert list(stored["run_id"]) == [stored_run]

    assert not (prunescope_home / "scans").exists()  # no folder is derived from the store: it holds the calibration
    again = app("schedule")
    assert_clean(again)
    assert f"({reason})" in "\n".join(c.value for c in again.caption)
    assert list(again.dataframe[0].value["measured"]) == pytest.approx(list(expected.table["measured"]))
