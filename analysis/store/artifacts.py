"""Schedules, diagnoses and exports as run store artifacts: one payload format for the CLI and the dashboard.

Each payload is JSON data that names its workload (``workload``: ``"<weights hash>:<data hash>"``, the
fingerprints a run is found by), so the dashboard lists only what was made on the model and data on show,
whether the dashboard or the ``prunescope`` command made it. A schedule's payload is ``Schedule.to_dict()`` with
the workload, name and run in its ``meta`` (``prunescope runs get ID`` writes a schedule file that
``prunescope export`` reads, and ``Schedule.from_dict`` reopens it). Diagnoses and exports rebuild the engine's
own objects (``Diagnosis``, ``ExportReport``) from their payload, so a reopened one is drawn like a new one; an
export keeps its report in the store and its ONNX file on disk (the report holds the file's absolute path).
The dense reference file an export measures against is kept beside the store too (``dense_cache``), one per
model fingerprint, so that a model is exported dense once.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import numpy as np
import pandas as pd

from analysis.deploy.export import DenseCache, ExportReport, FileCost, Verification
from analysis.diagnostics.diagnosis import Diagnosis
from analysis.schedule.schedule import Schedule
from analysis.store.runs import RunStore, StoreError, home

SCHEDULE, DIAGNOSIS, EXPORT, TUNING = "schedule", "diagnostics", "export", "tuning"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9 _.-]{0,63}")


def workload_id(model_fp: str, data_fp: str) -> str:
    """The workload a payload was made on: ``Workload.fingerprint()`` and ``EvalData.fingerprint()``."""
    return f"{model_fp}:{data_fp}"


def workload_of(payload: object) -> str | None:
    """The workload a stored payload names (a schedule names it in its ``meta``), or ``None``."""
    if not isinstance(payload, dict):
        return None
    return payload.get("workload") or (payload.get("meta") or {}).get("workload")


def jsonable(obj: object) -> object:
    """``obj`` as plain JSON data (numpy numbers become Python numbers, anything else its string)."""
    def default(o: object) -> object:
        if isinstance(o, np.generic):
            return o.item()
        if isinstance(o, np.ndarray):
            return o.tolist()
        return str(o)

    return json.loads(json.dumps(obj, default=default, allow_nan=True))


def save(store: RunStore, kind: str, name: str, payload: object, run_id: int | None = None) -> int:
    """Store ``payload`` as JSON data; a run that no longer exists is not linked. Returns the artifact's id."""
    if run_id is not None:
        try:
            store.run(run_id)
        except StoreError:
            run_id = None
    return store.save_artifact(kind, name, jsonable(payload), run_id=run_id)


def replace_older(store: RunStore, kind: str, artifact_id: int) -> list[int]:
    """Delete the artifacts of ``kind`` older than ``artifact_id`` with its name and workload, as the dashboard does
    when it saves a schedule under a name it already has (a payload without a workload replaces nothing).
    Returns the ids deleted."""
    info, payload = store.get_artifact(artifact_id)
    workload = workload_of(payload)
    if workload is None:
        return []
    table = store.artifacts(kind=kind)
    older = [int(i) for i, name in zip(table["id"], table["name"]) if name == info["name"] and int(i) < artifact_id]
    gone = [i for i in older if workload_of(store.get_artifact(i)[1]) == workload]
    for i in gone:
        store.delete_artifact(i)
    return gone


def run_workload(store: RunStore, run_id: int | None) -> str | None:
    """The workload of a stored run (its weights and data hashes), or ``None`` when there is no such run."""
    if run_id is None:
        return None
    try:
        run = store.run(run_id)
    except StoreError:
        return None
    return workload_id(run["model_fp"], run["data_fp"])


def scan_run(store: RunStore, scan_meta: dict) -> int | None:
    """The stored run a scan folder came from (``scan.json``'s ``run_id``, written by ``prunescope scan`` and
    ``prunescope runs show --out``), or ``None``: no id, no such run, or a run of another scan (a folder from
    another store)."""
    run_id = scan_meta.get("run_id")
    if not isinstance(run_id, int) or isinstance(run_id, bool):
        return None
    try:
        run = store.run(run_id)
    except StoreError:
        return None
    ident, meta = run["identity"], run["meta"]
    same = (run["model"] == scan_meta.get("model") and run["data"] == scan_meta.get("data")
            and ident.get("criterion") == scan_meta.get("criterion")
            and ident.get("granularity") == scan_meta.get("granularity")
            and [l["name"] for l in meta.get("layers", [])] == [l["name"] for l in scan_meta.get("layers", [])])
    return run_id if same else None


# ------------------------------------------------------------------------------------------------ schedules


def check_name(name: str) -> str:
    """A schedule name (letters, digits, spaces, '_', '.', '-'), or a ``ValueError`` that names the bad value."""
    name = name.strip()
    if not _NAME.fullmatch(name):
        raise ValueError(f"schedule name {name!r} must start with a letter or digit and use only letters, digits, "
                         "spaces, '_', '.' and '-' (at most 64 characters)")
    return name


def name_from_file(path: str | Path) -> str:
    """A schedule name from a file name: its stem, with characters a name cannot hold replaced by '-'."""
    stem = re.sub(r"[^A-Za-z0-9 _.-]", "-", Path(path).stem).lstrip(" _.-")[:64]
    return stem or "schedule"


def schedule_payload(schedule: Schedule, name: str, workload: str | None, run_id: int | None = None,
                     **meta: object) -> dict:
    """``schedule.to_dict()`` with its name, workload, run and the time it was saved in its ``meta``."""
    extra = {"name": check_name(name), "workload": workload, "saved": time.strftime("%Y-%m-%d %H:%M:%S"), **meta}
    if run_id is not None:
        extra["run_id"] = int(run_id)
    d = schedule.to_dict()
    return {**d, "meta": {**d["meta"], **extra}}


# ----------------------------------------------------------------------------------------------- diagnoses


def diagnosis_payload(workload: str | None, cell: tuple | None, diagnosis: Diagnosis) -> dict:
    """A diagnosis: its tables and summary, and ``cell`` (layer, sparsity, criterion, granularity) it shows
    first (default: its first cell)."""
    cell = cell if cell is not None else diagnosis_cell(diagnosis)
    return {"workload": workload, "cell": list(cell), "summary": diagnosis.summary,
            **{k: getattr(diagnosis, k).to_dict(orient="records") for k in ("shift", "dead", "recalibration")}}


def diagnosis_from(payload: dict) -> tuple[tuple, Diagnosis]:
    """``(cell, Diagnosis)`` of a stored diagnosis."""
    tables = {k: pd.DataFrame.from_records(payload[k]) for k in ("shift", "dead", "recalibration")}
    return tuple(payload["cell"]), Diagnosis(**tables, summary=payload.get("summary", {}))


def diagnosis_cell(diagnosis: Diagnosis) -> tuple:
    """``(layer, sparsity, criterion, granularity)`` of a diagnosis's first cell."""
    cells = diagnosis.summary.get("cells") or []
    if not cells:
        raise ValueError("the diagnosis has no (layer, sparsity) cell to store")
    first = cells[0]
    return first["layer"], float(first["sparsity"]), diagnosis.summary["criterion"], diagnosis.summary["granularity"]


def diagnosis_name(cell: tuple, cells: int = 1) -> str:
    layer, sparsity, criterion, granularity = cell
    more = f" and {cells - 1} more cell{'s' if cells > 2 else ''}" if cells > 1 else ""
    return f"{layer} at {sparsity:g}{more} ({criterion}, {granularity})"


# ------------------------------------------------------------------------------------------------- exports


def export_payload(workload: str | None, label: str, report: ExportReport) -> dict:
    """An export's report (its files' absolute paths: the ONNX file stays on disk) and the schedule exported."""
    r = report.to_dict()
    for key in ("onnx_path", "schedule_path", "summary_path"):
        r[key] = str(Path(r[key]).absolute())
    return {"workload": workload, "label": label, "report": r, "schedule": report.schedule.to_dict()}


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
        quality=r["quality"], bn_recalibrated=r["bn_recalibrated"], seconds=r["seconds"], notes=r.get("notes", []),
        kept=r.get("kept", {}), dense_cached=r.get("dense_cached", False))


def dense_cache(model_fp: str) -> DenseCache:
    """Where exports keep the dense reference file of the model with fingerprint ``model_fp``
    (``Workload.fingerprint``): ``$PRUNESCOPE_HOME/dense-onnx``, beside the run store."""
    return DenseCache(home() / "dense-onnx", model_fp)


def export_name(label: str, report: ExportReport) -> str:
    return f"{label} ({report.mode})"
