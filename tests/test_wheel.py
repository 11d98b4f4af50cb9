"""The installable product: a wheel built from this checkout, installed into a fresh virtual environment outside
it, gives a ``prunescope`` whose commands, bundled samples and dashboard work without the checkout.

The new environment reuses this environment's installed dependencies (torch and the rest, no network) through a
``.pth`` file that names this environment's site-packages. A ``.pth`` file's paths are added as plain folders, so
the ``.pth`` files inside them (this environment's editable install of the checkout) are not run: ``analysis`` and
``prunescope_dashboard`` can only come from the wheel, and the first test checks that they do. The wheel is built
from a copy of the checkout, so the build leaves nothing in the checkout and no stale ``build/`` ends up in it.
"""

from __future__ import annotations

import json
import os
import shutil
import site
import subprocess
import sys
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest
from browser_support import free_port, wait_until_healthy

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ("digits-cnn", "digits-mlp", "digits-resnet")
# Not part of a build: version control, environments, build outputs, local run stores (top level) and caches.
TOP_LEVEL_OUTPUTS = {".git", ".venv", "venv", "build", "dist", ".prunescope", "test-artifacts"}
CACHES = {"__pycache__", ".pytest_cache", ".hypothesis", ".ruff_cache", ".mypy_cache"}


@dataclass(frozen=True)
class Install:
    wheel: Path
    venv: Path
    python: Path
    prunescope: Path
    work: Path  # the working directory of every command: neither the checkout nor the environment
    env: dict[str, str]

    def run(self, *args: str | Path, timeout: float = 300) -> subprocess.CompletedProcess:
        return subprocess.run([str(a) for a in args], cwd=self.work, env=self.env, capture_output=True, text=True,
                              timeout=timeout)


def _not_sources(folder: str, names: list[str]) -> set[str]:
    top = Path(folder) == ROOT
    return {n for n in names if n in CACHES or n.endswith((".egg-info", ".pyc")) or (top and n in TOP_LEVEL_OUTPUTS)}


def _check(done: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert done.returncode == 0, f"{done.args} exited {done.returncode}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Install:
    tmp = tmp_path_factory.mktemp("wheel")
    src, dist, venv, work = tmp / "src", tmp / "dist", tmp / "venv", tmp / "work"
    shutil.copytree(ROOT, src, ignore=_not_sources, symlinks=True)
    quiet = {"capture_output": True, "text": True, "timeout": 300}
    _check(subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                           "-w", str(dist), str(src)], **quiet))
    (wheel,) = dist.glob("prunescope-*.whl")

    _check(subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], **quiet))
    bin_dir = venv / ("Scripts" if os.name == "nt" else "bin")
    python = bin_dir / ("python.exe" if os.name == "nt" else "python")
    # pip runs inside the new environment (--python), which sees nothing of this one yet.
    _check(subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps",
                           "--no-index", str(wheel)], **quiet))
    purelib = _check(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                                    **quiet)).stdout.strip()
    deps = [p for p in dict.fromkeys(site.getsitepackages()) if Path(p).is_dir()]
    (Path(purelib) / "_prunescope_test_dependencies.pth").write_text("".join(f"{p}\n" for p in deps))

    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP")}
    env.update(PRUNESCOPE_HOME=str(tmp / "home"), PYTHONNOUSERSITE="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    return Install(wheel, venv, python, bin_dir / "prunescope", work, env)


def test_the_wheel_ships_the_engine_the_samples_and_the_dashboard(installed):
    names = set(zipfile.ZipFile(installed.wheel).namelist())
    for sample in SAMPLES:
        assert {f"analysis/sample_models/{sample}.pt", f"analysis/sample_models/{sample}.json"} <= names
    dashboard = ["app.py", ".streamlit/config.toml", "ui/live_sliders/index.html", "ui/live_sliders/live.js",
                 *(p.relative_to(ROOT).as_posix() for folder in ("pages", "ui") for p in (ROOT / folder).glob("*.py"))]
    assert {f"prunescope_dashboard/{name}" for name in dashboard} <= names
    engine = {p.relative_to(ROOT).as_posix() for p in (ROOT / "analysis").rglob("*.py")}
    assert engine <= names
    assert not {n for n in names if n.startswith(("tests/", "benchmarks/", "docs/"))}


WHERE = """
import importlib.util, json, sys
import analysis
from analysis.cli.dashboard import dashboard_app
from analysis.workload import samples
print(json.dumps({
    "analysis": analysis.__file__,
    "dashboard": list(importlib.util.find_spec("prunescope_dashboard").submodule_search_locations),
    "app": str(dashboard_app()),
    "samples": str(samples.SAMPLE_DIR),
    "sample_names": samples.sample_names(),
    "editable": [repr(f) for f in sys.meta_path if "editable" in repr(f).lower()]
                + [m for m in sys.modules if "editable" in m],
}))
"""


def test_everything_comes_from_the_installed_wheel(installed):
    where = json.loads(_check(installed.run(installed.python, "-c", WHERE)).stdout)
    venv = installed.venv.resolve()
    for key in ("analysis", "app", "samples"):
        assert Path(where[key]).resolve().is_relative_to(venv), (key, where[key])
    assert all(Path(p).resolve().is_relative_to(venv) for p in where["dashboard"]), where["dashboard"]
    assert sorted(where["sample_names"]) == sorted(SAMPLES)
    assert where["editable"] == []


def test_the_command_scans_a_bundled_sample_from_elsewhere(installed):
    version = _check(installed.run(installed.prunescope, "--version"))
    assert version.stdout.strip().startswith("prunescope ")
    _check(installed.run(installed.prunescope, "scan", "--model", "sample:digits-mlp", "--data", "sample:digits",
                         "--count", "64", "--sparsities", "0.5", "--no-store", "--out", "o"))
    assert (installed.work / "o" / "sensitivity.csv").is_file()
    assert (installed.work / "o" / "scan.json").is_file()


# Every other command, run once each through the console script's entry point in one process (each command's own
# process would cost the import of torch again and again).
COMMANDS = """
import sys
from analysis.cli import main

M = ["--model", "sample:digits-mlp", "--data", "sample:digits", "--count", "64"]
STEPS = [
    ["scan", *M, "--sparsities", "0.3,0.6", "--quiet", "--out", "s1"],
    ["scan", *M, "--sparsities", "0.3,0.6", "--criterion", "random", "--quiet", "--no-store", "--out", "s2"],
    ["compare", "--scan", "s1", "--scan", "s2", "--out", "compare.csv"],
    ["diagnose", *M, "--layer", "fc1", "--sparsity", "0.5", "--quiet", "--out", "diagnosis"],
    ["schedule", "--scan", "s1", "--target-sparsity", "0.4", "--quiet", "--out", "schedule.json"],
    ["evaluate", *M, "--schedule", "schedule.json", "--quiet"],
    ["calibrate", "--scan", "s1", "--targets", "0.3,0.5", "--methods", "uniform", "--quiet"],
    ["export", *M, "--schedule", "schedule.json", "--no-latency", "--verify-samples", "8", "--out", "model.onnx"],
    ["lab", *M, "--target-sparsity", "0.5", "--strategies", "unstructured,2:4", "--no-export", "--quiet", "--out",
     "lab"],
    ["report", "--scan", "s1", "--schedule", "schedule.json", "--diagnosis", "diagnosis", "--lab", "lab", "--out",
     "report.html"],
    ["runs", "list"],
    ["runs", "artifacts"],
    ["runs", "check"],
]
for argv in STEPS:
    code = main(argv)
    if code != 0:
        sys.exit(f"prunescope {' '.join(argv)} exited {code}")
"""


def test_every_command_works_installed(installed):
    _check(installed.run(installed.python, "-c", COMMANDS))
    for made in ("compare.csv", "diagnosis/diagnose.json", "schedule.json", "s1/calibration.json", "model.onnx",
                 "lab/lab.csv", "report.html"):
        assert (installed.work / made).is_file(), made


def test_the_dashboard_serves_from_the_install(installed):
    port = free_port()
    log = installed.work / "dashboard.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([str(installed.prunescope), "dashboard", "--port", str(port), "--",
                                 "--server.fileWatcherType", "none"],
                                cwd=installed.work, env=installed.env, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_until_healthy(f"http://127.0.0.1:{port}", proc, log, 90)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as r:
            assert b"<title>" in r.read()
        if Path(f"/proc/{proc.pid}/cwd").exists():  # Linux: the server runs in the installed app's folder, so the
            cwd = Path(os.readlink(f"/proc/{proc.pid}/cwd"))  # .streamlit/config.toml shipped next to it applies
            assert cwd.resolve().is_relative_to(installed.venv.resolve()), cwd
            assert (cwd / "app.py").is_file() and (cwd / ".streamlit" / "config.toml").is_file()
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# The health endpoint answers before any page runs: run the installed home page and every page once (as a browser
# session would) so a page that cannot import ``ui`` or a sample from the install fails here.
PAGES = """
import importlib.util, json, sys
from pathlib import Path
from streamlit.testing.v1 import AppTest

app = Path(importlib.util.find_spec("prunescope_dashboard").submodule_search_locations[0]) / "app.py"
pages = sorted(p.relative_to(app.parent).as_posix() for p in (app.parent / "pages").glob("*.py"))
failed = {}
for page in [None, *pages]:
    at = AppTest.from_file(str(app), default_timeout=120)
    if page:
        at.switch_page(page)
    at.run()
    if at.exception:
        failed[page or "app.py"] = [e.value for e in at.exception]
print(json.dumps({"pages": pages, "failed": failed, "ui": sys.modules["ui"].__file__}))
"""


def test_the_installed_pages_run(installed):
    done = json.loads(_check(installed.run(installed.python, "-c", PAGES)).stdout.strip().splitlines()[-1])
    assert done["failed"] == {}
    assert len(done["pages"]) == len(list((ROOT / "pages").glob("*.py")))
    assert Path(done["ui"]).resolve().is_relative_to(installed.venv.resolve())
