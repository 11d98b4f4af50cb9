"""The public Python API: every name resolves, ``import analysis`` is cheap, every example in the API's docstrings
runs, and the README's notebook-style walk-through runs as written."""

from __future__ import annotations

import doctest
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import analysis
from tests.conftest import ROOT, cli_env

WITH_EXAMPLES = ["load_workload", "load_model", "load_data", "prepare", "scan", "iter_scan", "run_scan",
                 "tolerance_table", "diagnose", "compare_criteria", "allocate", "schedule_setting", "schedule_for",
                 "Coupling", "resolve_schedule",
                 "calibrate", "measure_schedule", "export", "sensitivity_heatmap", "build_report", "scan_into_store",
                 "LabConfig", "run_lab", "lab_into_store", "open_lab", "recovery_figure", "Predictor", "side_by_side",
                 "Owl", "block_heatmap", "block_curves"]


def test_every_public_name_resolves() -> None:
    for name in analysis.__all__:
        assert getattr(analysis, name) is not None, name
    assert set(WITH_EXAMPLES) <= set(analysis.__all__)
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        analysis.nothing  # noqa: B018


def test_importing_the_package_and_asking_for_help_load_no_torch() -> None:
    code = ("import sys, analysis; from analysis.cli import main\n"
            "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "assert 'torch' not in sys.modules, sorted(m for m in sys.modules if m.startswith('torch'))[:5]")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=cli_env(), capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert "scan" in done.stdout and "dashboard" in done.stdout


@pytest.mark.parametrize("name", WITH_EXAMPLES)
def test_the_docstring_example_runs(name: str, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    member = getattr(analysis, name)
    assert ">>>" in (member.__doc__ or ""), f"{name} has no example"
    finder, runner = doctest.DocTestFinder(recurse=False), doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    for test in finder.find(member, name, globs={}):
        runner.run(test)
    assert runner.failures == 0 and runner.tries > 0


def test_the_package_docstring_example_runs() -> None:
    results = doctest.testmod(analysis, extraglobs={}, optionflags=doctest.ELLIPSIS, verbose=False)
    assert results.failed == 0 and results.attempted > 0


def readme_walkthrough() -> str:
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Python API"):]
    section = section[: section.index("\n## ", 1)]
    return "\n".join(re.findall(r"```python\n(.*?)```", section, flags=re.S))


def test_the_readme_walkthrough_runs(tmp_path: Path) -> None:
    code = readme_walkthrough()
    assert "scan(" in code and "sensitivity_heatmap" in code and "schedule_for" in code and "export(" in code
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path,
                          env=cli_env(PRUNESCOPE_HOME=str(tmp_path / "home")), capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert any(p.suffix == ".onnx" for p in tmp_path.rglob("*")), os.listdir(tmp_path)
