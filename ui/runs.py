"""Finished and cancelled sensitivity profiles on disk, so earlier runs reopen without recomputing.

A stopgap until the run store (``analysis/store.py``) lands: each run is a profile folder written with
``SensitivityProfile.save`` under ``$PRUNESCOPE_HOME/profiles/<run id>/``, and ``scan.json`` carries the
workload key and the config key that find it again.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from analysis.engine import ScanConfig
from analysis.sensitivity import SensitivityProfile
from ui.uploads import prunescope_home


@dataclass(frozen=True)
class RunInfo:
    """One stored run, as listed in the dashboard."""

    run_id: str
    workload: str
    config_key: str
    criterion: str
    granularity: str
    layers: int
    sparsities: int
    complete: bool
    created: str

    @property
    def label(self) -> str:
        state = "" if self.complete else ", cancelled"
        return (f"{self.created} · {self.criterion} · {self.granularity} · {self.layers} layers x "
                f"{self.sparsities} sparsities{state}")


def profiles_dir() -> Path:
    return prunescope_home() / "profiles"


def config_key(workload_key: str, config: ScanConfig) -> str:
    """A short hash of everything that decides a scan's numbers (device and engine excluded)."""
    cfg = asdict(config.validated())
    cfg.pop("device"), cfg.pop("engine")
    text = json.dumps({"workload": workload_key, "config": cfg}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def save_run(profile: SensitivityProfile, workload_key: str, key: str) -> str:
    """Write ``profile`` as a new run and return its id."""
    now = time.time()
    # Milliseconds too: runs sort by id, and two scans (the fast engine's) can finish within one second.
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(now)) + f"{int(now * 1000) % 1000:03d}"
    run_id = f"{stamp}-{key}"
    n = 1
    while (profiles_dir() / run_id).exists():
        n += 1
        run_id = f"{stamp}-{key}-{n}"
    profile.meta.update({"workload_key": workload_key, "config_key": key, "run_id": run_id,
                         "created": time.strftime("%Y-%m-%d %H:%M:%S")})
    profile.save(profiles_dir() / run_id)
    return run_id


def load_run(run_id: str) -> SensitivityProfile:
    return SensitivityProfile.load(profiles_dir() / run_id)


def list_runs(workload_key: str) -> list[RunInfo]:
    """Runs of one workload, newest first; folders that cannot be read are skipped."""
    runs = []
    if not profiles_dir().is_dir():
        return runs
    for folder in profiles_dir().iterdir():
        try:
            meta = json.loads((folder / "scan.json").read_text())
        except (OSError, ValueError):
            continue
        if meta.get("workload_key") != workload_key:
            continue
        runs.append(RunInfo(folder.name, workload_key, meta.get("config_key", ""), meta.get("criterion", "?"),
                            meta.get("granularity", "?"), len(meta.get("layers", [])),
                            len(meta.get("sparsities", [])), bool(meta.get("complete")), meta.get("created", "")))
    return sorted(runs, key=lambda r: r.run_id, reverse=True)


def find_complete(workload_key: str, key: str) -> str | None:
    """The newest complete run with this config key, if any."""
    return next((r.run_id for r in list_runs(workload_key) if r.config_key == key and r.complete), None)
