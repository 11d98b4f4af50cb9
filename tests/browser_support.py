"""The dashboard served for a browser: start ``prunescope dashboard`` on a free port, wait for a script run to end.

Shared by the browser test (``tests/test_e2e_browser.py``), the browser benchmark
(``benchmarks/bench_dashboard.py``) and the installed dashboard's test (``tests/test_wheel.py``:
``wait_until_healthy``).
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
IDLE = '[data-testid="stApp"][data-test-script-state="notRunning"]'


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_healthy(url: str, proc: subprocess.Popen, log: Path, timeout_s: float) -> None:
    """Poll the Streamlit server at ``url`` until its ``/_stcore/health`` answers ``ok``; raise ``RuntimeError``
    with the tail of its ``log`` if the process ``proc`` ends first or ``timeout_s`` seconds pass."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                if r.read().strip() == b"ok":
                    return
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            why = "exited" if proc.poll() is not None else f"did not come up in {timeout_s:g} s"
            raise RuntimeError(f"streamlit {why}:\n{log.read_text()[-3000:]}")
        time.sleep(0.3)


@contextlib.contextmanager
def dashboard(home: Path, root: Path = ROOT, sliders: str = "browser") -> Iterator[str]:
    """``prunescope dashboard`` (``streamlit run app.py``) of the checkout ``root`` on a free localhost port with
    ``home`` as its PRUNESCOPE_HOME and the Schedule page's ``sliders`` (``browser``, the default, or
    ``server``); yields its URL."""
    port = free_port()
    env = dict(os.environ, PRUNESCOPE_HOME=str(home), OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
               PYTHONPATH=str(root), PRUNESCOPE_SLIDERS=sliders)
    log = open(home / "streamlit.log", "w")  # noqa: SIM115 - closed after the server stops
    proc = subprocess.Popen(
        [sys.executable, "-m", "analysis", "dashboard", "--port", str(port), "--", "--server.headless", "true",
         "--browser.gatherUsageStats", "false", "--server.fileWatcherType", "none"],
        cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_healthy(url, proc, home / "streamlit.log", 60)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def settle(page, started: float = 3.0) -> None:  # noqa: ANN001
    """Wait for the script run an action triggers to finish (it may start a moment after the action)."""
    try:
        page.wait_for_selector('[data-testid="stApp"]:not([data-test-script-state="notRunning"])',
                               timeout=started * 1000)
    except Exception:  # noqa: BLE001 - the run was over before we looked
        pass
    page.wait_for_selector(IDLE, timeout=120_000)


def set_sparsities(page, grid: str) -> None:  # noqa: ANN001
    """Type ``grid`` into the Sensitivity page's Sparsities box in the sidebar and wait for the run it starts."""
    sidebar = page.locator('[data-testid="stSidebar"]')
    box = sidebar.get_by_label("Sparsities", exact=True).and_(sidebar.locator("input"))
    box.fill(grid)
    box.press("Enter")
    settle(page)
