"""Schedules, diagnoses and exports of the workload on show, kept as run store artifacts.

Each payload is JSON data that names its workload (``workload``: the weights and data hashes of
``ui.common.fingerprints``), so a page lists only what was made on the model and data on show. A schedule's
payload is ``Schedule.to_dict()`` with the workload in its ``meta`` (``prunescope runs get ID`` writes a
schedule file that ``prunescope export`` reads). Diagnoses and exports rebuild the engine's own objects
(``Diagnosis``, ``ExportReport``) from their payload, so a page draws a reopened one exactly like a new one.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from analysis.diagnostics import Diagnosis
from analysis.export import ExportReport, FileCost, Verification
from analysis.schedule import Schedule
from analysis.store import StoreError
from ui import runs
from ui.common import WorkloadSpec, fingerprints

SCHEDULE, DIAGNOSIS, EXPORT, TUNING = "schedule", "diagnostics", "export", "tuning"


@dataclass(frozen=True)
class Stored:
    """One stored artifact of the workload on show."""

    id: int
    name: str
    run_id: int | None
    created: str
    payload: dict


def workload_id(spec: WorkloadSpec) -> str:
    return ":".join(fingerprints(spec))


def jsonable(obj: object) -> object:
    """``obj`` as plain JSON data (numpy numbers become Python numbers, anything else its string)."""
    def default(o: object) -> object:
        if isinstance(o, np.generic):
            return o.item()
        if isinstance(o, np.ndarray):
            return o.tolist()
        return str(o)

    return json.loads(json.dumps(obj, default=default, allow_nan=True))


def _workload_of(payload: object) -> str | None:
    if not isinstance(payload, dict):
        return None
    return payload.get("workload") or (payload.get("meta") or {}).get("workload")


def listed(kind: str, spec: WorkloadSpec) -> list[Stored]:
    """The artifacts of ``kind`` made on this workload, newest first."""
    s, wid = runs.store(), workload_id(spec)
    out = []
    for row in s.artifacts(kind=kind).itertuples():
        try:
            _, payload = s.get_artifact(int(row.id))
        except StoreError:  # deleted by another session since the listing
            continue
        if _workload_of(payload) == wid:
            out.append(Stored(int(row.id), row.name, None if pd.isna(row.run_id) else int(row.run_id), row.created,
                              payload))
    return out


def save(kind: str, name: str, payload: dict, run_id: int | None = None) -> int:
    """Store ``payload`` (it names its workload); a run that no longer exists is not linked."""
    s = runs.store()
    if run_id is not None:
        try:
            s.run(run_id)
        except StoreError:
            run_id = None
    return s.save_artifact(kind, name, jsonable(payload), run_id=run_id)


def delete(artifact_id: int) -> None:
    try:
        runs.store().delete_artifact(artifact_id)
    except StoreError:  # already gone (another session deleted it)
        pass


# ---------------------------------------------------------------------------------------------- diagnoses


def diagnosis_payload(spec: WorkloadSpec, cell: tuple, diagnosis: Diagnosis) -> dict:
    return {"workload": workload_id(spec), "cell": list(cell[1:]), "summary": diagnosis.summary,
            **{k: getattr(diagnosis, k).to_dict(orient="records") for k in ("shift", "dead", "recalibration")}}


def diagnosis_from(payload: dict) -> tuple[tuple, Diagnosis]:
    """``(cell without the workload, Diagnosis)`` of a stored diagnosis."""
    tables = {k: pd.DataFrame.from_records(payload[k]) for k in ("shift", "dead", "recalibration")}
    return tuple(payload["cell"]), Diagnosis(**tables, summary=payload.get("summary", {}))


def diagnosis_name(cell: tuple) -> str:
    layer, sparsity, criterion, granularity = cell
    return f"{layer} at {sparsity:g} ({criterion}, {granularity})"


# ------------------------------------------------------------------------------------------------ exports


def export_payload(spec: WorkloadSpec, label: str, report: ExportReport) -> dict:
    return {"workload": workload_id(spec), "label": label, "report": report.to_dict(),
            "schedule": report.schedule.to_dict()}


def export_from(payload: dict) -> ExportReport:
    """The ``ExportReport`` of a stored export (its channel groups are not kept; the page does not show them)."""
    r = payload["report"]
    latency = None if r.get("latency") is None else pd.DataFrame.from_records(r["latency"])
    return ExportReport(
        onnx_path=Path(r["onnx_path"]), schedule_path=Path(r["schedule_path"]), summary_path=Path(r["summary_path"]),
        model_spec=r["model"], data_spec=r["data"], mode=r["mode"], criterion=r["criterion"],
        granularity=r["granularity"], exporter=r["exporter"], schedule=Schedule.from_dict(payload["schedule"]),
        requested=r["requested"], layers=pd.DataFrame.from_records(r["layers"]), groups=[],
        verifications=[Verification(**{k: v for k, v in d.items() if k != "passed"}) for d in r["verifications"]],
        dense=FileCost(**r["dense"]), pruned=FileCost(**r["pruned"]), latency=latency, threads=r["threads"],
        quality=r["quality"], bn_recalibrated=r["bn_recalibrated"], seconds=r["seconds"], notes=r.get("notes", []))
