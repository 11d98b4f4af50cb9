"""Browser timings of the dashboard, two checkouts side by side: a slider move, a page switch, Cancel of a scan.

How long does the user wait in the browser? Each checkout (``--app NAME=PATH``, e.g. ``before`` a worktree of
main before a change and ``after`` this one) gets its own ``streamlit run app.py`` (via ``python -m analysis
dashboard``, ``PYTHONPATH=<checkout>``, a fresh ``PRUNESCOPE_HOME``, ``OMP_NUM_THREADS=1``) and the same walk in
Debian's Chromium driven by Playwright:

    OMP_NUM_THREADS=1 python benchmarks/bench_dashboard.py --app before=/work/before --app after=. \\
        [--moves 10] [--cancels 3] [--json dashboard.json]

1. **first load**: a fresh server's first page (the home page, which runs the sample's quick scan), from
   ``goto`` to the script run being over.
2. **page switch**: two rounds through the seven pages by the sidebar's links, from the click to the new page's
   title shown and its script run over.
3. **slider, 4-layer sample** (``sample:digits-cnn``) and **slider, resnet18** (``torchvision:resnet18``, random
   weights, 32 random 3x32x32 inputs, 21 sliders, after a 2-sparsity scan): on the Schedule page after Apply
   preset, ``--moves`` key presses (End and Home in turn) on one focused slider. Timed inside the page
   (``performance.now()``): from the keydown to the "global sparsity" number changing on screen (a
   MutationObserver), and to the run it started being over (``data-test-script-state`` back to ``notRunning``).
   A key press goes the path a pointer's release does (the slider commits its value and the script reruns).
4. **Cancel**: a 9-sparsity scan of resnet18 started, Cancel clicked 3 s later: from the click to the "Scan
   cancelled" line on screen.

Reported: the median (and min-max) of each, per checkout, and the after/before ratio of the medians. The times
are wall-clock on whatever else the machine runs; the checkouts run one after the other, the same walk each.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from browser_support import CHROMIUM, CHROMIUM_ARGS, dashboard, set_sparsities, settle  # noqa: E402 - the tests' server helper

PAGES = ["Model & data", "Sensitivity", "Diagnostics", "Schedule", "Export", "Strategy lab", "Home"]
TITLES = {"Home": "Prunescope"}
RESNET = "model=torchvision:resnet18&data=random:3x32x32&count=32&size=224"
DENSENET = "model=torchvision:densenet121&data=random:3x32x32&count=32&size=224"
CANCEL_GRIDS = ["0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.85", "0.15, 0.25, 0.35, 0.45, 0.55, 0.65, 0.75, 0.85, 0.95",
                "0.05, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9"]
# Resolves, after the next keydown, with [ms to the global sparsity number changing, ms to the run being over].
# Streamlit's sliders (before the browser counted them): the number is an st.metric of the page.
WATCH = """() => { window.__bench = new Promise(resolve => {
  const number = () => [...document.querySelectorAll('[data-testid="stMetric"]')]
      .find(e => e.innerText.includes('global sparsity'))?.querySelector('[data-testid="stMetricValue"]')?.innerText;
  const start = number();
  let t0 = null, shown = null;
  document.addEventListener('keydown', () => { t0 = performance.now(); }, {capture: true, once: true});
  const app = document.querySelector('[data-testid="stApp"]');
  const obs = new MutationObserver(() => {
    if (t0 === null) return;
    if (shown === null && number() !== start) shown = performance.now() - t0;
    if (shown !== null && app.dataset.testScriptState === 'notRunning') {
      obs.disconnect(); resolve([shown, performance.now() - t0]); }
  });
  obs.observe(document.body, {subtree: true, childList: true, characterData: true, attributes: true});
}); }"""
# The browser's sliders (ui/live_sliders, in a frame): in the frame, [epoch ms of the keydown, of the number
# changing]; in the page, [epoch ms of the run the let-go value started being over].
WATCH_FRAME = """() => { window.__bench = new Promise(resolve => {
  const now = () => performance.timeOrigin + performance.now();
  const number = () => [...document.querySelectorAll('[data-testid="liveMetric"]')]
      .find(e => e.innerText.includes('global sparsity'))?.querySelector('[data-testid="liveMetricValue"]')?.innerText;
  const start = number();
  let t0 = null;
  document.addEventListener('keydown', () => { t0 = now(); }, {capture: true, once: true});
  const obs = new MutationObserver(() => {
    if (t0 !== null && number() !== start) { obs.disconnect(); resolve([t0, now()]); } });
  obs.observe(document.body, {subtree: true, childList: true, characterData: true});
}); }"""
WATCH_RUN = """() => { window.__run = new Promise(resolve => {
  const app = document.querySelector('[data-testid="stApp"]');
  let started = false;
  const obs = new MutationObserver(() => {
    if (app.dataset.testScriptState !== 'notRunning') started = true;
    else if (started) { obs.disconnect(); resolve(performance.timeOrigin + performance.now()); }
  });
  obs.observe(app, {attributes: true});
}); }"""
FRAME = 'iframe[src*="live_sliders"]'


def first_load(page, url: str) -> float:  # noqa: ANN001
    """Seconds from opening a fresh server's home page to its first run being over."""
    t0 = time.perf_counter()
    page.goto(url)
    page.wait_for_selector('[data-testid="stApp"]')
    settle(page)
    return time.perf_counter() - t0


def switch(page, title: str) -> float:  # noqa: ANN001
    """Seconds from clicking ``title`` in the sidebar to that page's title shown and its run over."""
    heading = TITLES.get(title, title)
    t0 = time.perf_counter()
    page.locator('[data-testid="stSidebarNav"] a', has_text=title).click()
    page.wait_for_function("""(h) => document.querySelector('h1')?.innerText.trim() === h &&
        document.querySelector('[data-testid="stApp"]').dataset.testScriptState === 'notRunning'""",
                           arg=heading, polling="raf", timeout=120_000)
    return time.perf_counter() - t0


def slider_moves(page, layer: str, moves: int) -> list[tuple[float, float]]:  # noqa: ANN001
    """``moves`` key presses on ``layer``'s slider: (ms to the number changing, ms to the run over) each; the
    browser's sliders when the page has them, else Streamlit's."""
    page.get_by_role("button", name="Apply preset").click()
    settle(page)
    if page.locator(FRAME).count():
        return frame_moves(page, layer, moves)
    for summary in page.locator('[data-testid="stExpander"] details:not([open]) > summary',
                                has_text=layer.split(".")[0]).all():
        summary.click()
    thumb = page.locator('[data-testid="stSlider"]', has_text=f"{layer} (").get_by_role("slider")
    out = []
    for i in range(moves):
        page.evaluate(WATCH)
        thumb.focus()
        thumb.press("End" if i % 2 == 0 else "Home")
        out.append(tuple(page.evaluate("window.__bench")))
        settle(page)
    return out


def frame_moves(page, layer: str, moves: int) -> list[tuple[float, float]]:  # noqa: ANN001
    """``slider_moves`` on the browser's sliders: the number is counted in the frame, the run follows the
    let-go value."""
    frame = page.frame_locator(FRAME)
    for summary in frame.locator("details:not([open]) > summary", has_text=layer.split(".")[0]).all():
        summary.click()
    thumb = frame.get_by_role("slider", name=f"{layer} (")
    content = next(f for f in page.frames if "live_sliders" in f.url)
    out = []
    for i in range(moves):
        content.evaluate(WATCH_FRAME)
        page.evaluate(WATCH_RUN)
        thumb.focus()
        thumb.press("End" if i % 2 == 0 else "Home")
        t0, shown = content.evaluate("window.__bench")
        over = page.evaluate("window.__run")
        out.append((shown - t0, over - t0))
        settle(page)
    return out


def scan(page, grid: str) -> None:  # noqa: ANN001
    """Set the Sensitivity page's grid and press Run scan (returns at once; the scan runs on)."""
    set_sparsities(page, grid)
    page.get_by_role("button", name="Run scan").click()


def cancel(page, grid: str) -> float:  # noqa: ANN001
    """Seconds from clicking Cancel, 3 s into a scan, to the "Scan cancelled" line on screen."""
    scan(page, grid)
    page.wait_for_timeout(3000)
    t0 = time.perf_counter()
    page.get_by_role("button", name="Cancel").click()
    page.get_by_text("Scan cancelled").wait_for(timeout=120_000)
    took = time.perf_counter() - t0
    settle(page)
    return took


def scanned_moves(page, url: str, query: str, layer: str, moves: int) -> list[list[float]]:  # noqa: ANN001
    """A 2-sparsity scan of the workload ``query`` names, then ``slider_moves`` on its Schedule page."""
    page.goto(f"{url}/Sensitivity?{query}")
    settle(page)
    scan(page, "0.5, 0.9")
    settle(page)
    switch(page, "Schedule")
    return list(map(list, zip(*slider_moves(page, layer, moves))))


def walk(browser, url: str, moves: int, cancels: int,  # noqa: ANN001
         densenet: bool = True) -> dict[str, list[float]]:
    """The whole walk on one server; every measurement in milliseconds."""
    page = browser.new_context(viewport={"width": 1400, "height": 1300}).new_page()
    page.set_default_timeout(120_000)
    out = {"first load": [first_load(page, url) * 1000]}
    out["page switch"] = [switch(page, title) * 1000 for _ in range(2) for title in PAGES]
    switch(page, "Schedule")
    sample = slider_moves(page, "block1.0", moves)
    out["slider, sample: number"], out["slider, sample: run over"] = map(list, zip(*sample))
    models = [("resnet18", RESNET, "layer1.0.conv1")]
    if densenet:
        models.append(("densenet121", DENSENET, "features.denseblock1.denselayer1.conv1"))
    for name, query, layer in models:
        out[f"slider, {name}: number"], out[f"slider, {name}: run over"] = scanned_moves(page, url, query, layer,
                                                                                        moves)
    switch(page, "Sensitivity")
    out["cancel"] = [cancel(page, CANCEL_GRIDS[i % len(CANCEL_GRIDS)]) * 1000 for i in range(cancels)]
    page.context.close()
    return out


def table(results: dict[str, dict[str, list[float]]]) -> str:
    """A markdown table: per measurement, the median (min-max) in ms per checkout, and last/first ratio."""
    names = list(results)
    rows = [f"| measurement | {' | '.join(f'{n}: median (min-max) ms' for n in names)} | "
            f"{names[-1]}/{names[0]} |", "|---" * (len(names) + 2) + "|"]
    for key in results[names[0]]:
        cells = [f"{statistics.median(results[n][key]):.0f} ({min(results[n][key]):.0f}-{max(results[n][key]):.0f})"
                 for n in names]
        ratio = statistics.median(results[names[-1]][key]) / statistics.median(results[names[0]][key])
        rows.append(f"| {key} (n={len(results[names[0]][key])}) | {' | '.join(cells)} | {ratio:.2f} |")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--app", action="append", required=True, help="NAME=PATH of a checkout (repeatable)")
    parser.add_argument("--moves", type=int, default=10, help="slider moves per model")
    parser.add_argument("--cancels", type=int, default=3, help="scans cancelled")
    parser.add_argument("--json", type=Path, help="write every measurement here")
    parser.add_argument("--no-densenet", action="store_true", help="leave out densenet121 (121 sliders)")
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    results = {}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        for name, path in (a.split("=", 1) for a in args.app):
            with dashboard(Path(tempfile.mkdtemp(prefix="bench-dashboard-")), Path(path).resolve()) as url:
                results[name] = walk(browser, url, args.moves, args.cancels, not args.no_densenet)
            print(f"{name}: done", file=sys.stderr)
        browser.close()
    print(table(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
