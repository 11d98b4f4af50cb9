"""The dashboard in a real browser: start ``streamlit run app.py``, walk the story, save a screenshot per page.

Three walks: the bundled sample (every page, the README's screenshots), a torchvision resnet18 with uploaded
weights and a zip of image folders, and an uploaded ONNX model on random inputs. Every request the browser makes
must go to the dashboard's own server (the offline promise): any other host fails the walk.

Chromium comes from Debian (``/usr/bin/chromium``; ``make test`` installs it), never from ``playwright
install``. Without it the test is skipped on a workstation and fails in CI (``CI=true``). Screenshots go to
``test-artifacts/``; with ``PRUNESCOPE_UPDATE_SCREENSHOTS=1`` the sample walk's also replace ``docs/screenshots/``.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from browser_support import CHROMIUM, CHROMIUM_ARGS, dashboard, set_sparsities, settle

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "test-artifacts"
SCREENSHOTS = ROOT / "docs" / "screenshots"

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One dashboard for the walks of this module, with its own PRUNESCOPE_HOME."""
    with dashboard(tmp_path_factory.mktemp("e2e-home")) as url:
        yield url


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


def foreign(url: str, server: str) -> bool:
    """Whether the browser's request for ``url`` leaves the dashboard's server (``data:``/``blob:`` stay inside)."""
    parts = urllib.parse.urlsplit(url)
    return parts.scheme in ("http", "https", "ws", "wss") and parts.netloc != urllib.parse.urlsplit(server).netloc


@pytest.fixture
def page(browser, server):  # noqa: ANN001, ANN201
    """A fresh browser tab on the dashboard; requests to any other host are refused and kept in ``page.foreign``."""
    context = browser.new_context(viewport={"width": 1400, "height": 1300}, accept_downloads=True)
    pg = context.new_page()
    pg.foreign = []
    context.on("request", lambda r: pg.foreign.append(r.url) if foreign(r.url, server) else None)
    context.route(lambda url: foreign(url, server), lambda route: route.abort())
    pg.set_default_timeout(60_000)
    pg.base_url = server
    yield pg
    context.close()


def live(page):  # noqa: ANN001, ANN201
    """The Schedule page's sliders, drawn in the browser (``ui/live_sliders``, in its frame)."""
    return page.frame_locator('iframe[src*="live_sliders"]')


def offline(page) -> None:  # noqa: ANN001
    """The walk needed nothing outside the machine: no request went to a host other than the dashboard's."""
    assert page.foreign == [], f"requests to other hosts: {sorted(set(page.foreign))[:10]}"


def open_page(page, path: str) -> None:  # noqa: ANN001
    page.goto(f"{page.base_url}/{path}")
    page.wait_for_selector('[data-testid="stApp"]')
    settle(page)


def heatmap_tab(page):  # noqa: ANN001, ANN201
    """The Sensitivity page's Heatmap tab (the Blocks tab draws heatmaps too)."""
    return page.get_by_role("tabpanel", name="Heatmap")


def nav(page, title: str) -> None:  # noqa: ANN001
    """Switch page by the sidebar's navigation (the session, and so the chosen workload, stays)."""
    page.locator('[data-testid="stSidebarNav"] a', has_text=title).click()
    settle(page)


CUT_LABELS = """() => [...document.querySelectorAll(
    '[data-testid="stCheckbox"] label, [data-testid="stCheckbox"] label *, [data-testid="stWidgetLabel"] *')]
  .filter(e => e.offsetParent !== null && e.scrollWidth > e.clientWidth + 1
          && getComputedStyle(e).textOverflow === 'ellipsis').map(e => e.innerText)"""


def cut_labels(page) -> list[str]:  # noqa: ANN001
    """The widget labels shown cut off with an ellipsis at this window's width (a checkbox label in a narrow
    column, say)."""
    return page.evaluate(CUT_LABELS)


def shot(page, name: str, readme: bool = True) -> None:  # noqa: ANN001
    """A full-height screenshot into ``test-artifacts/`` (and ``docs/screenshots/`` when asked, for the README),
    once no widget label is cut off on the page."""
    assert cut_labels(page) == [], f"{name}: labels cut off: {cut_labels(page)}"
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
    if readme and os.environ.get("PRUNESCOPE_UPDATE_SCREENSHOTS") == "1":
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
    expect(heatmap_tab(page).locator(".heatmaplayer")).to_have_count(1)
    page.get_by_role("button", name="Run scan").click()
    settle(page)
    expect(page.get_by_text("reopened it without recomputing")).to_be_visible()
    set_sparsities(page, "0.5, 0.9")
    page.get_by_role("button", name="Run scan").click()
    settle(page)
    expect(heatmap_tab(page).locator(".heatmaplayer")).to_have_count(1)
    heatmap = heatmap_tab(page).locator(".js-plotly-plot")
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
        metric = live(page).locator('[data-testid="liveMetric"]', has_text="predicted accuracy").first
        return metric.locator('[data-testid="liveMetricValue"]').inner_text()

    before = predicted()
    thumb = live(page).get_by_role("slider", name="block1.0 (")
    thumb.focus()
    thumb.press("End")
    settle(page)
    expect(live(page).locator(".item", has_text="block1.0")).to_contain_text("0.990")
    assert predicted() != before
    expect(page.get_by_text("hand-tuned from sensitivity")).to_be_visible()
    # The sliders count in the browser and send the schedule when let go; what the page offers below follows.
    with page.expect_download() as download:
        page.get_by_role("button", name="Download schedule JSON").click()
    assert json.loads(Path(download.value.path()).read_text())["sparsities"]["block1.0"] == 0.99
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

    # Strategy lab: its settings and the literature's typical numbers, before anything is run.
    open_page(page, "Strategy_lab")
    expect(page.get_by_role("heading", name="Strategy lab")).to_be_visible()
    no_exception(page)
    shot(page, "strategy_lab")
    offline(page)


def _image_zip(path: Path) -> Path:
    """A zip of an image folder: 3 class folders of 6 small PNGs each, a different colour per class."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    with zipfile.ZipFile(path, "w") as z:
        for c, name in enumerate(("circle", "square", "star")):
            for i in range(6):
                pixels = rng.integers(0, 60, (40, 40, 3)) + np.array([80 * c, 40, 200 - 80 * c])
                buf = io.BytesIO()
                Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(buf, format="PNG")
                z.writestr(f"shapes/{name}/{i}.png", buf.getvalue())
    return path


def _choose(page, model: str, data: str) -> None:  # noqa: ANN001
    """Pick the model and data sources by their radio buttons on the Model & data page."""
    for option in (model, data):
        page.locator('[data-testid="stRadio"] label', has_text=option).click()
        settle(page)


def _upload(page, index: int, path: Path) -> None:  # noqa: ANN001
    page.locator('[data-testid="stFileUploader"] input[type="file"]').nth(index).set_input_files(str(path))
    settle(page)


def _number(page, label: str, value: str) -> None:  # noqa: ANN001
    box = page.get_by_label(label, exact=True).and_(page.locator("input"))
    box.fill(value)
    box.press("Enter")
    settle(page)


def _use(page, name: str) -> None:  # noqa: ANN001
    """Press "Use this model and data" and see the new workload named by the uploaded file's name."""
    from playwright.sync_api import expect

    page.get_by_role("button", name="Use this model and data").click()
    settle(page)
    expect(page.get_by_text("Now analysing")).to_contain_text(name)
    assert "/upload." not in page.inner_text("body")  # never the stored uploaded:<hash>/upload.pt
    no_exception(page)


def _scan(page, sparsities: str) -> None:  # noqa: ANN001
    """Scan every layer of the workload on show at ``sparsities`` from the Sensitivity page."""
    from playwright.sync_api import expect

    nav(page, "Sensitivity")
    set_sparsities(page, sparsities)
    page.get_by_role("button", name="Run scan").click()
    settle(page)
    expect(heatmap_tab(page).locator(".heatmaplayer")).to_have_count(1)
    no_exception(page)


def _schedule_and_export(page, prefix: str, layers: int) -> None:  # noqa: ANN001
    """Apply the default preset, check ``layers`` sliders and a prediction, then export and verify."""
    from playwright.sync_api import expect

    nav(page, "Schedule")
    page.get_by_role("button", name="Apply preset").click()
    settle(page)
    expect(live(page).locator('input[type="range"]')).to_have_count(layers)
    closed = live(page).locator("details:not([open]) > summary")
    while closed.count():  # open every block group (each click takes one out of this list)
        closed.first.click()
    expect(live(page).locator('[data-testid="liveMetric"]', has_text="predicted")).to_be_visible()
    no_exception(page)
    shot(page, f"{prefix}_schedule", readme=False)
    nav(page, "Export")
    page.get_by_role("button", name="Export", exact=True).click()
    settle(page)
    expect(page.get_by_text("Verification passed")).to_be_visible()
    no_exception(page)
    shot(page, f"{prefix}_export", readme=False)


def test_resnet18_with_uploaded_weights_and_an_image_zip(page, tmp_path):  # noqa: ANN001
    """A torchvision resnet18 (3 classes, random weights saved as a state dict) on a zip of 3 class folders."""
    import torch
    import torchvision
    from playwright.sync_api import expect

    torch.manual_seed(0)
    weights = tmp_path / "resnet18_3cls.pth"
    torch.save(torchvision.models.resnet18(num_classes=3).state_dict(), weights)
    images = _image_zip(tmp_path / "shapes.zip")

    open_page(page, "Model_and_data")
    _choose(page, "torchvision architecture", "Upload images (.zip of class folders)")
    _upload(page, 0, weights)
    _upload(page, 1, images)
    _number(page, "Resize and crop to (pixels)", "32")
    _use(page, "resnet18_3cls.pth")
    expect(page.get_by_text("Prunable layers of torchvision:resnet18=resnet18_3cls.pth")).to_be_visible()
    expect(page.locator('[data-testid="stMetric"]', has_text="prunable layers")).to_contain_text("21")
    expect(page.locator('[data-testid="stMetric"]', has_text="classes")).to_contain_text("3")
    expect(page.locator('[data-testid="stMetric"]', has_text="eval samples")).to_contain_text("18")
    shot(page, "resnet18_model_and_data", readme=False)

    _scan(page, "0.5, 0.9")
    heatmap = heatmap_tab(page).locator(".js-plotly-plot")
    assert "fc" in heatmap.locator(".ytick text").all_text_contents()
    shot(page, "resnet18_sensitivity", readme=False)
    _schedule_and_export(page, "resnet18", 21)
    offline(page)


def test_uploaded_onnx_model_on_random_inputs(page, tmp_path):  # noqa: ANN001
    """An ONNX model exported here (a small conv net), uploaded, scanned on random inputs, scheduled, exported."""
    import torch
    from playwright.sync_api import expect

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(8, 16, 3),
                              torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                              torch.nn.Linear(16, 5)).eval()
    model = tmp_path / "tiny_convnet.onnx"
    torch.onnx.export(net, (torch.randn(2, 3, 16, 16),), str(model), dynamo=False, input_names=["x"],
                      dynamic_axes={"x": {0: "batch"}})

    open_page(page, "Model_and_data")
    _choose(page, "Upload a model file", "Random inputs (no labels)")
    _upload(page, 0, model)
    _number(page, "Input shape (CxHxW)", "3x16x16")
    _number(page, "Samples to use (0 = all; random inputs: how many)", "64")
    _use(page, "tiny_convnet.onnx")
    expect(page.get_by_text("Prunable layers of tiny_convnet.onnx on 64 random 3x16x16 inputs")).to_be_visible()
    expect(page.locator('[data-testid="stMetric"]', has_text="eval samples")).to_contain_text("(no labels)")

    _scan(page, "0.5, 0.9")
    expect(page.get_by_text("Dense agreement")).to_be_visible()  # unlabelled: agreement, not loss
    ticks = page.locator(".js-plotly-plot .colorbar text").all_text_contents()
    assert ticks and not [t for t in ticks if t.endswith("n")], ticks  # no "1n / 0.5n / -1n" colour bar
    shot(page, "onnx_sensitivity", readme=False)
    _schedule_and_export(page, "onnx", 3)
    offline(page)


def test_a_fresh_server_first_opened_on_a_page_address_shows_the_apps_navigation(browser, tmp_path):  # noqa: ANN001
    """Streamlit's pages-folder mode (its own page list: "app", no icons) must not outlive the first visit."""
    from playwright.sync_api import expect

    with dashboard(tmp_path) as url:
        context = browser.new_context(viewport={"width": 1400, "height": 1300})
        page = context.new_page()
        page.base_url = url
        open_page(page, "Sensitivity")
        expect(page.get_by_role("heading", name="Sensitivity")).to_be_visible()
        sidebar = page.locator('[data-testid="stSidebarNav"]')
        expect(sidebar.locator("a", has_text="Model & data")).to_have_count(1)
        expect(sidebar.locator("a", has_text="Home")).to_have_count(1)
        expect(sidebar.locator("a", has_text="app")).to_have_count(0)
        context.close()
