"""The Export page: the tuned or a saved schedule exported, verified, measured and offered for download."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
from app_support import (  # noqa: F401 - downloads, sample_* and stored_run are fixtures
    app,
    assert_clean,
    button,
    downloads,
    export_verified,
    sample_profile,
    sample_scan,
    stored_run,
    texts,
)

from analysis.core.metrics import predict
from analysis.schedule.schedule import Schedule
from analysis.sensitivity.config import ScanConfig
from ui import runs, scanning, schedules
from ui.common import WorkloadSpec, cached_workload, model_lock

SPEC = WorkloadSpec()


def _tuned(at, value: str = "0.5"):  # noqa: ANN001, ANN202
    """Apply the sensitivity preset on the Schedule page, then open the Export page."""
    next(t for t in at.text_input if t.label == "Target value").set_value(value)
    button(at, "Apply preset").click()
    at = at.run()
    at.switch_page("pages/5_Export.py")
    return at.run()


def test_without_a_schedule_the_page_points_to_the_schedule_page():
    at = app("export")
    assert_clean(at)
    assert "No schedule yet" in texts(at.info)
    assert not at.get("download_button")


def test_a_schedule_that_prunes_nothing_is_not_exported(stored_run):  # noqa: F811
    at = app("schedule")
    at.switch_page("pages/5_Export.py")
    at = at.run()
    assert_clean(at)
    assert "prunes nothing" in texts(at.info)
    assert not [b for b in at.button if b.label == "Export"]


def test_export_the_tuned_schedule_verified_with_downloads(stored_run, downloads, tmp_path):  # noqa: F811
    at = _tuned(app("schedule"))
    assert_clean(at)
    assert "press Export" in texts(at.info)
    shrink = next(c for c in at.checkbox if c.label.startswith("Shrink"))
    assert shrink.disabled and not shrink.value, "unstructured schedules export masked"
    at, report = export_verified(at)
    assert report.mode == "masked" and all(v.passed for v in report.verifications)
    verification = at.dataframe[0].value
    assert list(verification["passed"]) == [True, True]
    sizes = at.dataframe[1].value.set_index("model")
    assert sizes.loc["pruned", "parameters non-zero"] < sizes.loc["dense", "parameters non-zero"] \
        == sizes.loc["dense", "parameters stored"] == sizes.loc["pruned", "parameters stored"]
    latency = at.dataframe[2].value
    assert list(latency["batch"]) == [1, 32]
    assert set(latency["verdict"]) <= {"speed-up", "slow-down", "within noise"}

    buttons = {b.proto.label: b for b in at.get("download_button")}
    assert list(buttons) == ["Download the ONNX model", "Download the schedule", "Download the HTML report"]
    onnx_file = tmp_path / "model.onnx"
    onnx_file.write_bytes(downloads(buttons["Download the ONNX model"]))
    x = cached_workload(SPEC).data.x[:64]
    session = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    out = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    tuned = {k: v for k, v in at.session_state["schedule"]["values"].items() if v > 0}
    assert json.loads(downloads(buttons["Download the schedule"]))["sparsities"] == tuned
    assert out.shape == (64, 10)
    assert np.isfinite(out).all()
    assert (out.argmax(1) == predict(cached_workload(SPEC).model, x).argmax(1).numpy()).mean() > 0.5

    html = downloads(buttons["Download the HTML report"]).decode()
    for section in ("Sensitivity", "Schedule", "Export"):
        assert f"<h2>{section}</h2>" in html
    assert "Verification passed" in html and html.count('class="plotly-graph-div"') == 3
    assert (report.onnx_path.parent / "model.export.json").is_file()

    [stored] = runs.store().artifacts(kind="export").itertuples()
    assert stored.run_id == stored_run
    again = app("export")  # a reload: a new session shows the stored export without exporting again
    assert_clean(again)
    assert "Verification passed" in texts(again.success)
    assert again.session_state["export"]["report"].verifications == report.verifications
    assert list(again.dataframe[1].value["parameters non-zero"]) == list(sizes["parameters non-zero"])
    next(b for b in again.button if b.label == "Delete").click()
    again = again.run()
    assert_clean(again)
    assert runs.store().artifacts(kind="export").empty
    assert "press Export" in texts(again.info)


def test_a_saved_channel_schedule_exports_shrunk(prunescope_home):
    workload = cached_workload(SPEC)
    config = ScanConfig(granularity="channel", sparsities=(0.25, 0.5))
    run_id, _ = scanning.scan_into_store(runs.store(), workload, config, model_lock(SPEC))
    schedule = Schedule({"block1.0": 0.5, "block2.0": 0.25}, granularity="channel", meta={"run_id": run_id})
    schedules.save("channels", schedule, SPEC)
    at = app("export")
    assert_clean(at)
    assert at.selectbox[0].value == "saved: channels"
    assert next(c for c in at.checkbox if c.label.startswith("Shrink")).value
    at, report = export_verified(at)
    assert report.mode == "shrunk"
    kept = report.layers.set_index("layer")
    for layer, s in schedule.sparsities.items():
        channels = kept.loc[layer, "out_channels"]
        assert kept.loc[layer, "onnx_out_channels"] == channels - round(s * channels) < channels
    assert report.pruned.params < report.dense.params


def test_an_export_that_fails_is_a_readable_error(prunescope_home, stored_run):  # noqa: F811
    schedules.save("broken", Schedule({"no_such_layer": 0.5}, meta={"run_id": stored_run}), SPEC)
    at = app("export")
    button(at, "Export").click()
    at = at.run()
    assert_clean(at)
    assert "The export failed" in texts(at.error) and "no_such_layer" in texts(at.error)
    assert not at.get("download_button")


def test_the_export_page_finds_the_schedule_after_a_reload(stored_run):  # noqa: F811
    at = app("schedule")
    next(s for s in at.slider if s.label.startswith("fc")).set_value(0.4)
    at = at.run()
    again = app("export")
    assert_clean(again)
    assert again.selectbox[0].value == "current (from the Schedule page)"
    assert "1 layer pruned" in "\n".join(c.value for c in again.caption)
