"""The Strategy lab page: a lab run from the page with progress into the run store, a stored lab reopened as the
article's table with the literature beside it and the curves on one plot, resume, cancel and one-line errors."""

from __future__ import annotations

import io

import pandas as pd
import torch
from app_support import app, assert_clean, button, plotly_specs, texts

from analysis.lab.config import LabConfig
from analysis.lab.literature import TYPICAL
from analysis.lab.runner import run_lab
from analysis.lab.strategies import get_strategy
from analysis.schedule.allocate import Target
from analysis.store.labs import STATE, lab_into_store, labs, open_lab
from analysis.workload.data import load_data
from ui import runs
from ui.common import WorkloadSpec, cached_workload
from ui.lab import TRAIN_SOURCES

SMALL = dict(epochs=0.5, evals_per_epoch=2, export=False)


def _settings(at, strategies: list[str], epochs: float = 0.5, target: str = "0.6"):  # noqa: ANN001, ANN202
    """The sidebar set to a small lab (the page's other settings at their defaults)."""
    next(m for m in at.multiselect if m.label == "Strategies").set_value(strategies)
    next(t for t in at.text_input if t.label == "Target value").set_value(target)
    next(n for n in at.number_input if n.label.startswith("Recovery epochs")).set_value(epochs)
    next(n for n in at.number_input if n.label == "Curve points per epoch").set_value(2)
    next(c for c in at.checkbox if c.label.startswith("Export each model")).set_value(False)
    return at


def _config(strategies: tuple[str, ...]) -> LabConfig:
    return LabConfig(Target("sparsity", 0.6), strategies, **SMALL)


def test_without_a_lab_the_page_says_how_to_start():
    at = app("lab")
    assert_clean(at)
    assert "No lab of this workload yet" in texts(at.info)


def test_a_lab_run_from_the_page_is_stored_and_shown_with_the_literature_beside_it():
    at = _settings(app("lab", timeout=300), ["unstructured", "structured"])
    at = button(at.run(), "Run lab").click().run()
    assert_clean(at)
    listed = labs(runs.store())
    assert len(listed) == 1 and listed["units_done"].iloc[0] == listed["units"].iloc[0] == 7
    result = open_lab(runs.store(), int(listed["id"].iloc[0]))
    table = at.dataframe[0].value
    titles = [get_strategy(s).title for s in ("unstructured", "structured")]
    assert list(table.columns) == titles
    expected = result.table(literature=True)
    assert table.loc["Initial drop", titles[1]] == expected.loc["Initial drop", titles[1]]
    assert TYPICAL["initial_drop"]["structured"].text in table.loc["Initial drop", titles[1]]
    names = {trace["name"] for spec in plotly_specs(at) for trace in spec["data"]}
    assert set(titles) <= names
    assert runs.store().artifacts(kind=STATE).empty  # a complete lab keeps no model states


def test_run_with_the_same_settings_resumes_a_stopped_lab():
    spec = WorkloadSpec()
    workload, train = cached_workload(spec), load_data("sample:digits-train")
    ticks = iter(range(10**6))
    stopped = lab_into_store(runs.store(), workload, train, _config(("unstructured", "imp")),
                             should_stop=lambda: next(ticks) > 3)
    assert not stopped.result.complete
    done = len(stopped.result.units)
    at = app("lab")
    assert "unfinished" in texts(at.warning)
    at = _settings(at, ["unstructured", "imp"])
    at = button(at.run(), "Run lab").click().run()
    assert_clean(at)
    assert f"resuming: {done} of 6 units already done (lab {stopped.lab_id})" in texts(at.info)
    whole = run_lab(workload, train, _config(("unstructured", "imp")))
    reopened = open_lab(runs.store(), int(labs(runs.store())["id"].iloc[0]))
    pd.testing.assert_frame_equal(reopened.cells(), whole.cells())


def test_cancel_without_a_running_lab_and_bad_settings_are_one_line():
    at = app("lab")
    at = button(at, "Cancel").click().run()
    assert "No lab was running." in texts(at.warning)
    next(r for r in at.radio if r.label.startswith("Training data")).set_value(
        "None: one-shot strategies only, no recovery")
    at = at.run()
    next(m for m in at.multiselect if m.label == "Strategies").set_value(["imp"])
    at = button(at.run(), "Run lab").click().run()
    assert_clean(at)
    assert any("imp trains while pruning and needs training data" in e.value for e in at.error)
    assert labs(runs.store()).empty
    next(t for t in at.text_input if t.label == "Target value").set_value("1.5")
    at = at.run()
    assert any(e.value.startswith("Lab settings:") for e in at.error) and button(at, "Run lab").disabled


def _tensor_bytes(x: torch.Tensor, y: torch.Tensor) -> bytes:
    buf = io.BytesIO()
    torch.save({"x": x, "y": y}, buf)
    return buf.getvalue()


def test_uploaded_training_tensors_train_the_lab_and_a_wrong_shape_is_one_line():
    at = app("lab")
    next(r for r in at.radio if r.label.startswith("Training data")).set_value(TRAIN_SOURCES[1])
    at = at.run()
    at.file_uploader[0].upload("train.pt", _tensor_bytes(torch.zeros(8, 3, 8, 8), torch.zeros(8, dtype=torch.long)))
    at = _settings(at.run(), ["unstructured", "imp"])
    at = button(at.run(), "Run lab").click().run()
    assert_clean(at)
    assert any("The lab cannot run:" in e.value and "has inputs of shape [3, 8, 8]" in e.value for e in at.error)
    assert labs(runs.store()).empty
    train = load_data("sample:digits-train")
    at.file_uploader[0].upload("train.pt", _tensor_bytes(train.x[:128], train.y[:128]))
    at = button(at.run(), "Run lab").click().run()
    assert_clean(at)
    listed = labs(runs.store())
    assert len(listed) == 1 and listed["units_done"].iloc[0] == listed["units"].iloc[0]
    result = open_lab(runs.store(), int(listed["id"].iloc[0]))
    assert result.meta["train"].endswith("upload.pt") and "recover" in set(result.curves()["phase"])
