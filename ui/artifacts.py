"""Schedules, diagnoses and exports of the workload on show, kept as run store artifacts.

The payloads are ``analysis.artifacts``'s, the same the ``prunescope`` command stores, so a page lists and
reopens what the CLI made on the model and data on show, and the CLI's ``runs`` commands what a page made.
This module adds the dashboard's side: the shared store, and the workload of a ``WorkloadSpec``.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from analysis.deploy.export import ExportReport
from analysis.diagnostics.diagnosis import Diagnosis
from analysis.store import artifacts as engine
from analysis.store.artifacts import (
    DIAGNOSIS,
    EXPORT,
    SCHEDULE,
    TUNING,
    diagnosis_from,
    diagnosis_name,
    export_from,
    export_name,
    jsonable,
)
from analysis.store.runs import StoreError
from ui import runs
from ui.common import WorkloadSpec, fingerprints


@dataclass(frozen=True)
class Stored:
    """One stored artifact of the workload on show."""

    id: int
    name: str
    run_id: int | None
    created: str
    payload: dict


def workload_id(spec: WorkloadSpec) -> str:
    return engine.workload_id(*fingerprints(spec))


def listed(kind: str, spec: WorkloadSpec) -> list[Stored]:
    """The artifacts of ``kind`` made on this workload, newest first."""
    s, wid = runs.store(), workload_id(spec)
    out = []
    for row in s.artifacts(kind=kind).itertuples():
        try:
            _, payload = s.get_artifact(int(row.id))
        except StoreError:  # deleted by another session since the listing
            continue
        if engine.workload_of(payload) == wid:
            out.append(Stored(int(row.id), row.name, None if pd.isna(row.run_id) else int(row.run_id), row.created,
                              payload))
    return out


def save(kind: str, name: str, payload: dict, run_id: int | None = None) -> int:
    """Store ``payload`` (it names its workload); a run that no longer exists is not linked."""
    return engine.save(runs.store(), kind, name, payload, run_id)


def delete(artifact_id: int) -> None:
    try:
        runs.store().delete_artifact(artifact_id)
    except StoreError:  # already gone (another session deleted it)
        pass


def diagnosis_payload(spec: WorkloadSpec, cell: tuple, diagnosis: Diagnosis) -> dict:
    """``cell`` is the page's (workload key, layer, sparsity, criterion, granularity)."""
    return engine.diagnosis_payload(workload_id(spec), tuple(cell[1:]), diagnosis)


def export_payload(spec: WorkloadSpec, label: str, report: ExportReport) -> dict:
    return engine.export_payload(workload_id(spec), label, report)


__all__ = ["DIAGNOSIS", "EXPORT", "SCHEDULE", "TUNING", "Stored", "delete", "diagnosis_from", "diagnosis_name",
           "diagnosis_payload", "export_from", "export_name", "export_payload", "jsonable", "listed", "save",
           "workload_id"]
