"""The Sensitivity page: settings, scan, reopen, cancel and resume, the views and their figures."""

from __future__ import annotations

import pandas as pd
import pytest
from app_support import app, assert_clean, plotly_specs, sample_profile, sample_scan, stored_run, texts  # noqa: F401
from conftest import run_cli

from analysis.core.profile import tolerance_table
from analysis.sensitivity import backends
from analysis.sensitivity.config import ScanConfig
from analysis.sensitivity.context import prepare
from analysis.sensitivity.driver import scan
from analysis.sensitivity.engines import ENGINES
from analysis.store import scanning as store_scanning
from ui import runs, scanning
from ui.common import WorkloadSpec, cached_workload

SPEC = WorkloadSpec()


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
    curves = [c for c in _figure(at, "drop per layer")["data"] if c.get("mode") == "lines+markers"]
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
    stored = runs.list_runs(SPEC)
    assert len(stored) == 2
    new = stored[0]
    assert (new.criterion, new.layers, new.sparsities, new.complete) == ("l1", 1, 3, True)
    assert new.run_id > stored_run
    heat = _figure(at, "drop when one layer is pruned")["data"][0]
    assert heat["y"] == ["fc"] and heat["x"] == ["0", "0.5", "0.9"]
    overlay = _figure(at, "(solid) vs")["data"]
    assert [t["name"] for t in overlay] == ["fc (l1/unstructured)", "fc (magnitude/unstructured)"]
    assert overlay[1]["line"]["dash"] == "dash"

    at.button[0].click()
    at = at.run()
    assert_clean(at)
    assert "reopened it without recomputing" in texts(at.info)
    assert len(runs.list_runs(SPEC)) == 2


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


def _engine_must_not_run(monkeypatch) -> None:  # noqa: ANN001
    def refuse(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        raise AssertionError("the scan engine ran: a stored run must reopen without recomputing")

    monkeypatch.setattr(store_scanning, "run_scan", refuse)
    monkeypatch.setattr(store_scanning, "prepare_for", refuse)
    monkeypatch.setattr(backends, "prepare", refuse)


def test_a_scan_survives_a_reload_and_reopens_without_recomputing(monkeypatch):
    at = app("sensitivity")
    at.sidebar.text_input[0].set_value("0.5")
    at = at.run()
    at.button[0].click()
    at = at.run()
    assert_clean(at)
    [scanned] = runs.list_runs(SPEC)
    heat = _figure(at, "drop when one layer is pruned")["data"][0]

    _engine_must_not_run(monkeypatch)
    again = app("sensitivity")  # a reload: a new session, nothing in its state
    assert_clean(again)
    assert _figure(again, "drop when one layer is pruned")["data"][0]["z"] == heat["z"]
    again.sidebar.text_input[0].set_value("0.5")
    again = again.run()
    again.button[0].click()
    again = again.run()
    assert_clean(again)
    assert f"(run {scanned.run_id}): reopened it without recomputing" in texts(again.info)
    assert runs.list_runs(SPEC) == [scanned]


def test_delete_a_run_from_the_page(stored_run):  # noqa: F811
    at = app("sensitivity")
    next(b for b in at.button if b.label == f"Delete run {stored_run} from the run store").click()
    at = at.run()
    assert_clean(at)
    assert runs.list_runs(SPEC) == []
    assert "No scan of this workload yet" in texts(at.info)


def test_cancel_keeps_finished_layers_and_run_resumes(prunescope_home):
    """A Cancel click stops the script mid-scan: the layers it finished are in the store, and Run resumes there."""
    config = ScanConfig(sparsities=(0.5, 0.9))
    workload = cached_workload(SPEC)
    ctx = prepare(workload, config)
    store = runs.store()
    interrupted = store.open_scan(workload, ctx)
    store.add_layer(interrupted.id, ENGINES["naive"](ctx, ctx.layers[0], None), ctx.config)  # any engine
    at = app("sensitivity")
    at.session_state[scanning.SCANNING] = interrupted.id  # what run_scan leaves when Cancel interrupts it
    at.button[1].click()
    at = at.run()
    assert_clean(at)
    assert f"Scan cancelled: run {interrupted.id} keeps its 1 of 4 finished layers" in texts(at.warning)
    [cancelled] = runs.list_runs(SPEC)
    assert (cancelled.status, cancelled.layers_done, cancelled.layers) == ("stopped", 1, 4)
    assert "unfinished: 1 of its 4 layers" in texts(at.warning)
    assert _figure(at, "drop when")["data"][0]["y"] == ["block1.0"]

    at.sidebar.text_input[0].set_value("0.5, 0.9")
    at = at.run()
    at.button[0].click()
    at = at.run()
    assert_clean(at)
    assert "resuming: 1 of 4 layers already done" in texts(at.info)
    [complete] = runs.list_runs(SPEC)
    assert complete.run_id == interrupted.id and complete.complete
    profile = runs.load_run(complete.run_id)
    assert profile.meta["resumed_layers"] == 1
    uninterrupted = scan(workload, config)
    counts, sums = ["layer", "sparsity", "n", "correct", "agree"], ["loss_sum", "kl_sum"]
    assert profile.table[counts].equals(uninterrupted.table[counts])
    pd.testing.assert_frame_equal(profile.table[sums], uninterrupted.table[sums], rtol=1e-5)  # engines agree


def test_a_cli_scan_shows_up_in_the_dashboard(tmp_path, monkeypatch):
    done = run_cli("scan", "--model", "sample:digits-cnn", "--data", "sample:digits", "--sparsities", "0.5",
                   "--layers", "fc", "--out", tmp_path / "scan", "--quiet")
    assert done.returncode == 0, done.stderr
    _engine_must_not_run(monkeypatch)
    at = app("sensitivity")
    assert_clean(at)
    [cli_run] = runs.list_runs(SPEC)
    assert cli_run.complete and cli_run.layers == 1
    picker = next(s for s in at.selectbox if s.label.startswith("Run on show"))
    assert picker.options == [cli_run.label]
    heat = _figure(at, "drop when one layer is pruned")["data"][0]
    assert heat["y"] == ["fc"] and heat["x"] == ["0", "0.5"]
    at.sidebar.text_input[0].set_value("0.5")
    at.sidebar.multiselect[0].set_value(["fc"])
    at = at.run()
    at.button[0].click()
    at = at.run()
    assert_clean(at)
    assert "reopened it without recomputing" in texts(at.info), "the dashboard must reuse the CLI's run"


def test_cancel_with_nothing_running_says_so():
    at = app("sensitivity")
    at.button[1].click()
    at = at.run()
    assert_clean(at)
    assert "No scan was running" in texts(at.warning)


def test_a_configured_ray_cluster_is_offered_and_used(monkeypatch):
    import analysis.sensitivity.backends
    from analysis.sensitivity.backends import Backend
    from analysis.sensitivity.driver import run_scan

    cluster = Backend("ray", address="10.0.0.5:6379")
    monkeypatch.setattr(analysis.sensitivity.backends, "cluster_backend", lambda: cluster)
    used = []

    def local_instead(workload, config, backend, **kwargs):  # noqa: ANN001, ANN003, ANN202 - no cluster in tests
        used.append(backend)
        return run_scan(workload, config, "local", **kwargs)

    monkeypatch.setattr(store_scanning, "run_scan", local_instead)
    at = app("sensitivity")
    box = next(c for c in at.sidebar.checkbox if c.label.startswith("Run on the Ray cluster"))
    assert "10.0.0.5:6379" in box.label
    at.sidebar.text_input[0].set_value("0.5")
    box.check()
    at = at.run()
    at.button[0].click()
    at = at.run()
    assert_clean(at)
    assert used == [cluster]
    assert runs.list_runs(SPEC)[0].complete
