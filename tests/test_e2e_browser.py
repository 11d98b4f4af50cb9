"""The dashboard in a real browser: start ``streamlit run app.py``, walk the story, save a screenshot per page.

Chromium comes from Debian (``/usr/bin/chromium``; ``make test`` installs it), never from ``playwright
install``. Without it the test is skipped on a workstation and fails in CI (``CI=true``). Screenshots go to
``test-artifacts/``; with ``PRUNESCOPE_UPDATE_SCREENSHOTS=1`` they also replace ``docs/screenshots/``.
"""

from __future__ import annotations

import csv
import io
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "test-artifacts"
SCREENSHOTS = ROOT / "docs" / "screenshots"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
IDLE = '[data-testid="stApp"][data-test-script-state="notRunning"]'

pytestmark = pytest.mark.browser


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``prunescope dashboard`` (``streamlit run app.py``) on a free localhost port with its own PRUNESCOPE_HOME."""
    port = _free_port()
    home = tmp_path_factory.mktemp("e2e-home")
    env = dict(os.environ, PRUNESCOPE_HOME=str(home), OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
               PYTHONPATH=str(ROOT))
    log = open(home / "streamlit.log", "w")  # noqa: SIM115 - closed after the server stops
    proc = subprocess.Popen(
        [sys.executable, "-m", "analysis", "dashboard", "--port", str(port), "--", "--server.headless", "true",
         "--browser.gatherUsageStats", "false", "--server.fileWatcherType", "none"],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                    if r.read().strip() == b"ok":
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"streamlit did not start: {(home / 'streamlit.log').read_text()[-2000:]}")
            time.sleep(0.3)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@pytest.fixture(scope="module")
def browser():  # noqa: ANN201
    if not Path(CHROMIUM).exists():
        message = f"{CHROMIUM} is missing; install Debian's chromium (make test does it)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser, server):  # noqa: ANN001, ANN201
    context = browser.new_context(viewport={"width": 1400, "height": 1300}, accept_downloads=True)
    pg = context.new_page()
    pg.set_default_timeout(60_000)
    pg.base_url = server
    yield pg
    context.close()


def settle(page, started: float = 3.0) -> None:  # noqa: ANN001
    """Wait for the script run an action triggers to finish (it may start a moment after the action)."""
    try:
        page.wait_for_selector('[data-testid="stApp"]:not([data-test-script-state="notRunning"])',
                               timeout=started * 1000)
    except Exception:  # noqa: BLE001 - the run was over before we looked
        pass
    page.wait_for_selector(IDLE, timeout=120_000)


def open_page(page, path: str) -> None:  # noqa: ANN001
    page.goto(f"{page.base_url}/{path}")
    page.wait_for_selector('[data-testid="stApp"]')
    settle(page)


def shot(page, name: str) -> None:  # noqa: ANN001
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    # The app scrolls inside its main block, so a full-page shot is a viewport as tall as that block.
    height = page.evaluate("() => document.querySelector('[data-testid=\"stMainBlockContainer\"]')?.scrollHeight ?? 0")
    size = page.viewport_size
    page.mouse.move(0, 0)
    page.set_viewport_size({"width": size["width"], "height": max(size["height"], min(int(height) + 80, 5000))})
    page.wait_for_timeout(500)
    page.screenshot(path=str(path), full_page=True)
    page.set_viewport_size(size)
    if os.environ.get("PRUNESCOPE_UPDATE_SCREENSHOTS") == "1":
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, SCREENSHOTS / path.name)


def no_exception(page) -> None:  # noqa: ANN001
    assert page.locator('[data-testid="stException"]').count() == 0, page.inner_text("body")[:2000]


def test_the_whole_story_in_a_browser(page):  # noqa: ANN001
    from playwright.sync_api import expect

    # Home: the sample's layers at once, the quick scan's heatmap after it.
    open_page(page, "")
    expect(page.locator('[data-testid="stDataFrame"]')).to_be_visible()
    expect(page.locator('[data-testid="stDataFrame"] td', has_text="block3.0")).to_have_count(1)
    expect(page.locator('[data-testid="stPlotlyChart"]')).to_have_count(1)
    expect(page.locator(".js-plotly-plot .heatmaplayer")).to_have_count(1)
    no_exception(page)
    shot(page, "home")

    # Model & data: the sample is preselected and its layers are summarised.
    open_page(page, "Model_and_data")
    expect(page.get_by_text("Prunable layers of sample:digits-cnn on sample:digits")).to_be_visible()
    expect(page.locator(".js-plotly-plot .barlayer")).to_have_count(1)
    no_exception(page)
    shot(page, "model_and_data")

    # Sensitivity: the home page's scan reopens; a second run with another criterion is scanned and overlaid.
    open_page(page, "Sensitivity")
    expect(page.locator(".js-plotly-plot .heatmaplayer")).to_have_count(1)
    page.get_by_role("button", name="Run scan").click()
    settle(page)
    expect(page.get_by_text("reopened it without recomputing")).to_be_visible()
    sidebar = page.locator('[data-testid="stSidebar"]')
    sidebar.get_by_label("Sparsities", exact=True).and_(sidebar.locator("input")).fill("0.5, 0.9")
    sidebar.get_by_label("Sparsities", exact=True).and_(sidebar.locator("input")).press("Enter")
    settle(page)
    page.get_by_role("button", name="Run scan").click()
    settle(page)
    expect(page.locator(".js-plotly-plot .heatmaplayer")).to_have_count(1)
    heatmap = page.locator(".js-plotly-plot", has=page.locator(".heatmaplayer"))
    assert heatmap.locator(".xtick text").all_text_contents() == ["0", "0.5", "0.9"]
    no_exception(page)
    shot(page, "sensitivity")

    page.get_by_role("tab", name="Table").click()
    with page.expect_download() as download:
        page.get_by_role("button", name="Download CSV").click()
    settle(page)
    rows = list(csv.DictReader(io.StringIO(Path(download.value.path()).read_text())))
    assert {r["layer"] for r in rows} == {"block1.0", "block2.0", "block3.0", "fc"}
    assert sorted({float(r["sparsity"]) for r in rows}) == [0.0, 0.5, 0.9]

    page.get_by_role("tab", name="Compare two runs").click()
    expect(page.get_by_role("tabpanel", name="Compare two runs").get_by_text("(solid) vs")).to_be_visible()

    # Diagnostics: the most fragile layer of the run on show, diagnosed at 0.5.
    open_page(page, "Diagnostics")
    page.get_by_role("button", name="Diagnose").click()
    settle(page)
    expect(page.locator('[data-testid="stPlotlyChart"]')).to_have_count(3)
    expect(page.get_by_text("Activation shift downstream (rel_l2)")).to_be_visible()
    no_exception(page)
    shot(page, "diagnostics")

    # Schedule: a preset, then one slider moved: the prediction follows without evaluating; then measured.
    open_page(page, "Schedule")
    page.get_by_role("button", name="Apply preset").click()
    settle(page)

    def predicted() -> str:
        metric = page.locator('[data-testid="stMetric"]', has_text="predicted accuracy").first
        return metric.locator('[data-testid="stMetricValue"]').inner_text()

    before = predicted()
    thumb = page.locator('[data-testid="stSlider"]', has_text="block1.0").get_by_role("slider")
    thumb.focus()
    thumb.press("End")
    settle(page)
    expect(page.locator('[data-testid="stSlider"]', has_text="block1.0")).to_contain_text("0.990")
    assert predicted() != before
    expect(page.get_by_text("hand-tuned from sensitivity")).to_be_visible()
    page.get_by_role("button", name="Measure", exact=True).click()
    settle(page)
    expect(page.locator('[data-testid="stMetric"]', has_text="measured accuracy")).to_be_visible()
    page.get_by_role("button", name="Save", exact=True).click()
    settle(page)
    expect(page.get_by_text("Saved schedule 'hand-tuned' in the run store")).to_be_visible()
    expect(page.locator(".js-plotly-plot .barlayer")).to_have_count(2)
    no_exception(page)
    shot(page, "schedule")

    # Export: the tuned schedule, verified in ONNX Runtime; the downloaded file runs.
    open_page(page, "Export")
    expect(page.get_by_text("4 layers pruned", exact=False)).to_contain_text("hand-tuned from sensitivity")
    page.get_by_role("button", name="Export", exact=True).click()
    settle(page)
    expect(page.get_by_text("Verification passed")).to_be_visible()
    expect(page.get_by_role("button", name="Download the HTML report")).to_be_visible()
    no_exception(page)
    shot(page, "export")
    with page.expect_download() as download:
        page.get_by_role("button", name="Download the ONNX model").click()
    settle(page)
    import numpy as np
    import onnxruntime as ort

    session = ort.InferenceSession(download.value.path(), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal((5, 1, 8, 8)).astype(np.float32)
    [logits] = session.run(None, {session.get_inputs()[0].name: x})
    assert logits.shape == (5, 10) and np.isfinite(logits).all()
