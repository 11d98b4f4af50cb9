"""Shared set-up for the dashboard tests: a stored sample profile, an AppTest factory, plotly specs."""

from __future__ import annotations

import base64
import copy
import json
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

ROOT = Path(__file__).resolve().parent.parent

PAGES = {
    "model": "pages/1_Model_and_data.py",
    "sensitivity": "pages/2_Sensitivity.py",
    "diagnostics": "pages/3_Diagnostics.py",
    "schedule": "pages/4_Schedule.py",
    "export": "pages/5_Export.py",
    "lab": "pages/6_Strategy_lab.py",
}


def app(page: str | None = None, timeout: float = 60) -> AppTest:
    """The dashboard, run once on ``page`` (the home page when ``None``)."""
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=timeout)
    if page:
        at.switch_page(PAGES[page])
    return at.run()


def hf_workload(zipped: bytes, text: str, seq_len: int = 16) -> AppTest:
    """The Model & data page with a zipped Hugging Face folder and a text file uploaded and loaded."""
    at = app("model")
    at.radio(key="model_kind").set_value("Hugging Face folder (.zip)")
    at.radio(key="data_kind").set_value("Upload text (.txt, .jsonl, .csv)")
    at = at.run()
    at.number_input[0].set_value(seq_len)
    at.file_uploader[0].upload("model.zip", zipped)
    at.file_uploader[1].upload("corpus.txt", text.encode())
    at = at.run()
    at.button[0].click()
    return at.run()


def _decode(value):  # noqa: ANN001, ANN202
    """Plotly sends numpy arrays as ``{"dtype", "bdata"[, "shape"]}``; turn them back into lists."""
    if isinstance(value, dict) and "bdata" in value and "dtype" in value:
        arr = np.frombuffer(base64.b64decode(value["bdata"]), dtype=value["dtype"])
        if "shape" in value:
            arr = arr.reshape([int(n) for n in str(value["shape"]).split(",")])
        return arr.tolist()
    if isinstance(value, dict):
        return {k: _decode(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_decode(v) for v in value]
    return value


def plotly_specs(at: AppTest) -> list[dict]:
    """The plotly figures on the page, as the JSON the browser receives (typed arrays decoded)."""
    return [_decode(json.loads(el.proto.spec)) for el in at.get("plotly_chart")]


def texts(elements) -> str:  # noqa: ANN001
    return "\n".join(str(e.value) for e in elements)


def button(at: AppTest, label: str):  # noqa: ANN201 - a streamlit.testing Button
    """The page's button labelled ``label``."""
    return next(b for b in at.button if b.label == label)


def export_verified(at: AppTest):  # noqa: ANN201 - (AppTest, ExportReport)
    """Press the Export page's Export button; check the page is clean and says the verification passed, and return
    the page after the run with the export's report."""
    button(at, "Export").click()
    at = at.run()
    assert_clean(at)
    assert "Verification passed" in texts(at.success)
    return at, at.session_state["export"]["report"]


def assert_clean(at: AppTest) -> None:
    """No exception reached the page."""
    assert not at.exception, [e.value for e in at.exception]


@pytest.fixture(scope="session")
def sample_scan():
    """The default scan (magnitude, unstructured, 0.1..0.9) of the CNN sample, computed once: its context, its
    finished units and its profile."""
    from analysis.sensitivity.config import ScanConfig
    from analysis.sensitivity.context import prepare
    from analysis.sensitivity.driver import scan
    from analysis.workload.workload import load_workload

    workload = load_workload("sample:digits-cnn", "sample:digits")
    ctx = prepare(workload, ScanConfig())
    results = []
    profile = scan(workload, ScanConfig(), on_result=results.append, context=ctx)
    return workload, ctx, results, profile


@pytest.fixture(scope="session")
def sample_profile(sample_scan):  # noqa: ANN001
    return sample_scan[3]


def store_scan(workload, ctx, results, profile) -> int:  # noqa: ANN001
    """Commit finished units to this test's run store as a scan would, and return the run id."""
    from ui import runs

    store = runs.store()
    run = store.open_scan(workload, ctx)
    for result in results:
        store.add_layer(run.id, result, ctx.config)
    store.finish(run.id, {**copy.deepcopy(profile.meta), "run_id": run.id})
    return run.id


@pytest.fixture
def stored_run(prunescope_home, sample_scan) -> int:  # noqa: ANN001
    """The default scan of the sample in this test's run store, as the home page's quick scan would keep it."""
    return store_scan(*sample_scan)


@pytest.fixture
def downloads(monkeypatch):  # noqa: ANN001, ANN201
    """``downloads(button)``: the bytes a download button on an AppTest page serves (from the run's media store)."""
    from streamlit.runtime.memory_media_file_storage import MemoryMediaFileStorage
    from streamlit.testing.v1 import app_test

    stores: list[MemoryMediaFileStorage] = []

    class Recorded(MemoryMediaFileStorage):
        def __init__(self, *args, **kwargs) -> None:  # noqa: ANN002, ANN003
            super().__init__(*args, **kwargs)
            stores.append(self)

    monkeypatch.setattr(app_test, "MemoryMediaFileStorage", Recorded)

    def data(button) -> bytes:  # noqa: ANN001
        name = button.proto.url.rsplit("/", 1)[-1]
        return bytes(stores[-1].get_file(name).content)

    return data
