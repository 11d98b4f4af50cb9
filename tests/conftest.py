"""Shared test set-up: one torch thread, a private PRUNESCOPE_HOME, and a CLI runner."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent

# CI runs pytest, Streamlit and Chromium side by side on 2 cores: an oversubscribed torch is many times slower.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def prunescope_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets its own run store so no test reads or writes the user's ~/.prunescope; the Schedule page's
    sliders are Streamlit's (the browser tests' server sets ``PRUNESCOPE_SLIDERS`` itself)."""
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("PRUNESCOPE_HOME", str(home))
    monkeypatch.setenv("PRUNESCOPE_SLIDERS", "server")  # AppTest drives Streamlit's sliders, not a component
    return home


def cli_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update({"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"})
    env.update(extra)
    return env


def run_cli(*args: str, timeout: float = 300, **env: str) -> subprocess.CompletedProcess:
    """Run ``python -m analysis ARGS`` from this checkout and capture its output."""
    return subprocess.run([sys.executable, "-m", "analysis", *map(str, args)], cwd=ROOT, env=cli_env(**env),
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="session")
def digits():
    from analysis.workload.data import load_data

    return load_data("sample:digits")


@pytest.fixture(scope="session")
def workloads():
    """The three bundled samples on their held-out split, loaded once per session (treat as read-only)."""
    from analysis.workload.workload import load_workload

    return {name: load_workload(f"sample:{name}", "sample:digits") for name in ("digits-cnn", "digits-resnet", "digits-mlp")}
