"""A channel schedule on the dashboard: one slider per coupled group, tuned, measured and exported shrunk, with the
page's totals and measurement equal to what the exported file holds and computes, and no "exported something else"
note."""

from __future__ import annotations

import pytest
from app_support import app, assert_clean, button, export_verified, texts

from analysis.sensitivity.config import ScanConfig
from ui import runs, scanning, schedules
from ui.common import WorkloadSpec, cached_workload, model_lock

SPEC = WorkloadSpec("sample:digits-resnet")
COUPLED = ("stem.0", "layer1.conv2")  # the residual stream of the first stage


def _metrics(at) -> dict[str, str]:  # noqa: ANN001
    return {m.label: m.value for m in at.metric}


@pytest.fixture
def channel_run(prunescope_home) -> int:  # noqa: ANN001
    config = ScanConfig(criterion="l1", granularity="channel", sparsities=(0.25, 0.5, 0.75))
    run_id, _ = scanning.scan_into_store(runs.store(), cached_workload(SPEC), config, model_lock(SPEC))
    return run_id


def _schedule_page():  # noqa: ANN202
    at = app()
    at.session_state["workload"] = SPEC
    at.switch_page("pages/4_Schedule.py")
    return at.run()


def test_a_tuned_channel_schedule_is_what_the_export_writes(channel_run):
    at = _schedule_page()
    assert_clean(at)
    sliders = {s.label: s for s in at.slider}
    coupled = next(label for label in sliders if label.startswith(", ".join(COUPLED)))
    assert "2 layers coupled, 16 channels" in coupled
    assert not any(label.startswith("fc") for label in sliders), "the classes are never prunable"
    assert "fc: kept whole: its channels are the model's outputs" in "\n".join(c.value for c in at.caption)

    sliders[coupled].set_value(0.25)
    next(s for s in at.slider if s.label.startswith("layer2.conv1")).set_value(0.5)
    at = at.run()
    values = at.session_state["schedule"]["values"]
    assert values["stem.0"] == values["layer1.conv2"] == 0.25, "the group's slider moves every member"
    totals = _metrics(at)
    button(at, "Measure").click()
    at = at.run()
    assert_clean(at)
    measured = at.session_state["schedule"]["measured"]["result"]
    assert measured["shrunk"] and measured["resolved"] == []

    at.switch_page("pages/5_Export.py")
    at = at.run()
    assert_clean(at)
    assert next(c for c in at.checkbox if c.label.startswith("Shrink")).value
    assert not at.info or "resolved" not in texts(at.info)
    at, report = export_verified(at)
    assert report.mode == "shrunk"
    assert report.notes == [] and not at.warning, "nothing exported differs from the schedule"
    assert report.schedule.sparsities == {n: v for n, v in values.items() if v > 0}
    kept = report.kept
    assert totals["parameters kept"] == f"{kept['weights'] / kept['weights_total']:.4f}"
    assert totals["FLOPs kept"] == f"{kept['flops'] / kept['flops_total']:.4f}"
    stage = "bn_recalibrated" if report.bn_recalibrated else "pruned"
    assert report.quality["samples"] == measured["samples"] == len(cached_workload(SPEC).data)
    assert report.quality["pruned_accuracy"] == pytest.approx(measured[stage]["accuracy"], abs=1e-9)


def test_a_loaded_schedule_with_different_values_in_a_group_is_resolved_and_said_so(channel_run):
    from analysis.schedule.schedule import Schedule

    schedules.save("uneven", Schedule({"stem.0": 0.5, "layer1.conv2": 0.25, "fc": 0.5}, "l1", "channel",
                                      meta={"run_id": channel_run}), SPEC)
    at = app()
    at.session_state["workload"] = SPEC
    at.switch_page("pages/5_Export.py")
    at = at.run()
    assert_clean(at)
    notes = texts(at.info)
    assert "resolved to the model's coupled groups before export" in notes
    assert "limited by layer1.conv2" in notes and "fc: kept whole" in notes

    at.switch_page("pages/4_Schedule.py")
    at = at.run()
    next(s for s in at.selectbox if s.label.startswith("Load a saved")).set_value("uneven")
    button(at, "Load").click()
    at = at.run()
    assert_clean(at)
    values = at.session_state["schedule"]["values"]
    assert values["stem.0"] == values["layer1.conv2"] == 0.25 and values.get("fc", 0.0) == 0.0
    assert "limited by layer1.conv2" in texts(at.info)
