"""Rough edges of the dashboard (issue 20): offline-only assets, quiet server, texts that read right."""

from __future__ import annotations

import ast
import io
import re
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import tomllib
import torch
from app_support import app, assert_clean, sample_profile, sample_scan, texts  # noqa: F401
from streamlit.commands.page_config import _get_favicon_string
from streamlit.testing.v1 import AppTest

from analysis.core.criteria import CALIBRATED, CRITERIA
from analysis.core.metric_table import default_metric
from analysis.report import plots
from analysis.store.runs import home
from analysis.workload import samples
from analysis.workload.data import load_data
from ui import format as fmt
from ui import schedules, upload_names
from ui.common import WorkloadSpec

ROOT = Path(__file__).resolve().parent.parent


def test_the_server_runs_without_a_file_watcher():
    config = tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text())
    assert config["server"]["fileWatcherType"] == "none"


def test_the_favicon_needs_no_external_host():
    """A :material/ page icon becomes a fonts.gstatic.com favicon unless a page icon is set before navigation."""
    assert _get_favicon_string(fmt.FAVICON).startswith("emoji:")  # drawn inline by the browser
    calls = [node.func.attr for node in ast.walk(ast.parse((ROOT / "app.py").read_text()))
             if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
             and node.func.attr in ("set_page_config", "navigation")]
    assert calls.index("set_page_config") < calls.index("navigation")
    tree = ast.parse((ROOT / "app.py").read_text())
    [config] = [n for n in ast.walk(tree) if getattr(getattr(n, "func", None), "attr", "") == "set_page_config"]
    assert [k.arg for k in config.keywords] == ["page_icon"]


def test_plurals_read_right():
    assert fmt.plural(1, "layer") == "1 layer"
    assert fmt.plural(21, "layer") == "21 layers"
    assert fmt.plural(1, "point") == "1 point"
    assert fmt.plural(2, "sparsity", "sparsities") == "2 sparsities"


def test_a_delta_that_shows_as_zero_has_no_colour():
    assert fmt.delta_color(0.0, 4) == "off" and fmt.delta_color(3e-6, 4) == "off"  # shown as +0.0000
    assert fmt.delta_color(-0.02, 1, "inverse") == "off"  # +0.0 KB is not worse
    assert fmt.delta_color(-0.5, 4) == "normal" and fmt.delta_color(2.0, 1, "inverse") == "inverse"


def test_a_worse_value_is_named_by_the_metric_direction():
    assert fmt.change_word("accuracy") == "drop" and fmt.change_word("agreement") == "drop"
    assert fmt.change_word("kl") == "increase" and fmt.change_word("loss") == "increase"
    assert "PyTorch" not in fmt.verification_pair(onnx_model=True)
    assert fmt.verification_pair(onnx_model=False) == "ONNX Runtime vs PyTorch"


def _upload_digits(name: str):  # noqa: ANN202
    x, y = samples.digits_split()[2:]
    buf = io.BytesIO()
    np.savez(buf, x=x[:40].numpy(), y=y[:40].numpy())
    at = app("model")
    at.radio(key="data_kind").set_value("Upload tensors (.pt, .npz)")
    at = at.run()
    at.file_uploader[0].upload(name, buf.getvalue())
    at = at.run()
    at.button[0].click()
    return at.run()


def test_an_upload_is_shown_by_its_name_but_stored_and_addressed_by_its_hash():
    at = _upload_digits("digits_40.npz")
    assert_clean(at)
    spec = at.session_state["workload"]
    assert spec.data.startswith(str(home() / "uploads")) and spec.data.endswith("/upload.npz")
    assert re.fullmatch(r"uploaded:[0-9a-f]{16}/upload\.npz", at.query_params["data"])
    assert "Workload: **sample:digits-cnn on digits_40.npz**" in texts(at.caption)
    assert "upload.npz" not in texts(at.caption) + texts(at.success) + texts(at.subheader)


def test_an_upload_name_is_shown_as_a_plain_file_name():
    at = _upload_digits("[a](javascript:x) *b*.npz")
    assert_clean(at)
    assert upload_names.display(at.session_state["workload"].data) == "_a_(javascript_x)__b_.npz"  # no markup left
    assert upload_names.safe_name("../../etc/passwd") == "passwd" and upload_names.safe_name("..") == "upload"
    folder = home() / "uploads" / "0123456789abcdef"
    folder.mkdir(parents=True)
    assert upload_names.display(f"no {folder}/upload.pt") == "no uploaded:0123456789abcdef/upload.pt"  # no name kept


def _sensitivity(spec: WorkloadSpec) -> AppTest:
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120)
    at.session_state["workload"] = spec
    at.switch_page("pages/2_Sensitivity.py")
    return at.run()


def test_unlabelled_data_opens_on_agreement_the_engines_default(workloads):
    at = _sensitivity(WorkloadSpec("sample:digits-mlp", "random:1x8x8", 32))
    at.sidebar.text_input[0].set_value("0.5")
    at.sidebar.multiselect[0].set_value(["fc1"])
    at = at.run()
    at.button[0].click()
    at = at.run()
    assert_clean(at)
    metric = next(s for s in at.selectbox if s.label == "Metric")
    assert metric.value == default_metric(labelled=False) == "agreement"
    at.sidebar.radio[0].set_value("bisect")
    at = at.run()
    decides = next(s for s in at.sidebar.selectbox if s.label == "Metric that decides")
    assert decides.value == "agreement"
    decides.set_value("loss")
    at = at.run()
    assert any(n.label == "Tolerated increase (loss)" for n in at.sidebar.number_input)


def test_onnx_models_are_offered_only_the_criteria_they_can_compute(workloads, tmp_path):
    path = tmp_path / "mlp.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(workloads["digits-mlp"].model, (workloads["digits-mlp"].data.x[:2],), str(path),
                          dynamo=False, input_names=["x"], dynamic_axes={"x": {0: "batch"}})
    at = _sensitivity(WorkloadSpec(str(path), "sample:digits", 32))
    assert_clean(at)
    offered = next(s for s in at.sidebar.selectbox if s.label == "Criterion").options
    assert set(offered) == set(CRITERIA) - CALIBRATED and CALIBRATED <= {"taylor", "activation"} and CALIBRATED
    sample = _sensitivity(WorkloadSpec())
    assert next(s for s in sample.sidebar.selectbox if s.label == "Criterion").options == list(CRITERIA)


def test_the_report_names_an_upload_by_its_name(sample_profile):  # noqa: F811
    folder = home() / "uploads" / "0123456789abcdef"
    folder.mkdir(parents=True)
    upload_names.remember(folder, "resnet18_3cls.pth")
    meta = {**sample_profile.meta, "model": f"torchvision:resnet18={folder}/upload.pt"}
    named = upload_names.named_profile(type(sample_profile)(sample_profile.table, meta))
    assert named.meta["model"] == "torchvision:resnet18=resnet18_3cls.pth"
    assert named.meta["data"] == sample_profile.meta["data"] and named.table is sample_profile.table


def test_random_inputs_are_labelled_by_how_many_are_drawn():
    assert WorkloadSpec("sample:digits-cnn", "random:1x8x8", 32).label == "sample:digits-cnn on 32 random 1x8x8 inputs"
    drawn = len(load_data("random:1x8x8"))
    assert WorkloadSpec("sample:digits-cnn", "random:1x8x8").label.endswith(f" on {drawn} random 1x8x8 inputs")
    assert WorkloadSpec("sample:digits-cnn", "sample:digits", 32).label.endswith("sample:digits (first 32)")


def _compared(**columns) -> pd.DataFrame:  # noqa: ANN003
    return pd.DataFrame({"name": ["a", "b", "c", "d"], "global_sparsity": [0.5, 0.5, 0.52, 0.8], **columns})


def test_schedules_on_one_point_share_a_label_and_neighbours_labels_take_turns():
    table = _compared(predicted=[0.9, 0.9, 0.895, 0.7], measured=[np.nan, 0.91, np.nan, np.nan])
    fig = plots.schedule_tradeoff(table, "accuracy")
    predicted, measured = fig.data
    assert list(predicted.text) == ["a, b", "c", "d"] and list(predicted.y) == [0.9, 0.895, 0.7]
    assert len(set(predicted.textposition[:2])) == 2  # the two close points label on different sides
    assert predicted.cliponaxis is False
    assert list(measured.text) == ["b"] and list(measured.y) == [0.91]
    assert "predicted" in predicted.name and "measured" in measured.name


def test_the_tradeoff_legend_says_the_points_are_predictions_even_when_nothing_is_measured():
    fig = plots.schedule_tradeoff(_compared(predicted=[0.9, 0.8, 0.7, 0.6], measured=[np.nan] * 4), "accuracy")
    assert fig.layout.showlegend is True and len(fig.data) == 1
    assert fig.data[0].name == "predicted (from the sensitivity profile)"


def test_the_compare_table_shows_not_measured_instead_of_none():
    table = _compared(predicted=[0.9, 0.8, 0.7, 0.6], measured=[None, 0.91, None, None]).astype({"measured": float})
    html = schedules.styled_compare(table).to_html()
    assert "not measured" in html and "None" not in html and "0.9100" in html
