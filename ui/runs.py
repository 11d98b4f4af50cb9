"""The dashboard's view of the run store (``analysis/store``): the runs of the workload on show, their profiles and
their calibrations.

Every scan is a run in ``$PRUNESCOPE_HOME/runs.sqlite``, whether the dashboard or ``prunescope scan`` made it. A
workload's runs are those of the same weights and the same eval data (by hash, not by file name), so a CLI
scan of the model on show is listed too. A run's calibration is a ``calibration`` artifact of the run.

One ``RunStore`` per store file is shared by every session: its connection is safe across threads (a lock
keeps their transactions apart), and other processes (a CLI scan) write beside it through SQLite's WAL.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import pandas as pd
import streamlit as st

from analysis.core.profile import SensitivityProfile
from analysis.schedule.calibrate import Calibration
from analysis.store.runs import RunStore, StoreError, default_path
from ui.common import WorkloadSpec, fingerprints
from ui.format import plural

RUN_ID = "run_id"
CALIBRATION = "calibration"


@st.cache_resource(show_spinner=False, max_entries=4)
def _shared(path: str) -> RunStore:
    return RunStore(path)


def store() -> RunStore:
    """The run store of ``$PRUNESCOPE_HOME``, one instance per file shared by all sessions."""
    return _shared(str(default_path()))


@dataclass(frozen=True)
class RunInfo:
    """One run, as the pages list it."""

    run_id: int
    status: str
    criterion: str
    granularity: str
    layers_done: int
    layers: int
    sparsities: int
    created: str
    model: str

    @property
    def complete(self) -> bool:
        return self.status == "complete"

    @property
    def label(self) -> str:
        state = "" if self.complete else f", {self.layers_done} of {self.layers} layers ({self.status})"
        return (f"run {self.run_id} · {self.created} · {self.criterion} · {self.granularity} · "
                f"{plural(self.layers, 'layer')} x {plural(self.sparsities, 'sparsity', 'sparsities')}{state}")


def list_runs(spec: WorkloadSpec) -> list[RunInfo]:
    """Runs of this workload's weights on its eval data, newest first (scans started from the CLI included)."""
    model_fp, data_fp = fingerprints(spec)
    df = store().runs(model_fp=model_fp, data_fp=data_fp)
    return [RunInfo(int(r.id), r.status, r.criterion, r.granularity, int(r.layers_done), int(r.layers),
                    int(r.sparsities), r.created, r.model) for r in df.itertuples()]


@st.cache_resource(show_spinner=False, max_entries=32)
def _profile(path: str, run_id: int, updated: float) -> SensitivityProfile:
    return store().profile(run_id)


def load_run(run_id: int) -> SensitivityProfile:
    """A run's profile from the store, built once per run and change (a resumed run is rebuilt)."""
    return _profile(str(default_path()), int(run_id), store().run(run_id)["updated"])


def current_profile(spec: WorkloadSpec) -> SensitivityProfile | None:
    """The run on show for this workload: the one picked, else the newest complete one, else ``None``."""
    run_id = st.session_state.get(RUN_ID)
    known = list_runs(spec)
    if run_id not in {r.run_id for r in known}:
        run_id = next((r.run_id for r in known if r.complete), None)
    if run_id is None:
        return None
    st.session_state[RUN_ID] = run_id
    return load_run(run_id)


def delete(run_id: int) -> None:
    """Delete a run (with its artifacts) and forget it in this session."""
    store().delete_run(run_id)
    if st.session_state.get(RUN_ID) == run_id:
        st.session_state.pop(RUN_ID)


# ----------------------------------------------------------------------------------------- calibrations


def save_calibration(run_id: int, calibration: Calibration) -> int:
    """Keep a calibration in the store as a ``calibration`` artifact of the run (the run's predictions use it from
    then on); returns its artifact id."""
    payload = {"calibration": calibration.to_dict(), "table": calibration.table.to_dict(orient="records")}
    return store().save_artifact(CALIBRATION, f"run {int(run_id)}", json.loads(json.dumps(payload, default=float)),
                                 run_id=run_id)


def stored_calibration(run_id: int) -> tuple[int, dict, pd.DataFrame] | None:
    """The run's latest calibration: ``(artifact id, its settings, its table)``, or ``None``."""
    stored = store().artifacts(kind=CALIBRATION, run_id=run_id)
    if not len(stored):
        return None
    artifact_id = int(stored["id"].iloc[0])
    _, payload = store().get_artifact(artifact_id)
    return artifact_id, payload["calibration"], pd.DataFrame.from_records(payload["table"])


__all__ = ["RunInfo", "StoreError", "current_profile", "delete", "list_runs", "load_run", "save_calibration",
           "store", "stored_calibration"]
