"""The CLI's folders: a scan folder (``sensitivity.csv``, ``scan.json``, ``calibration.json``), a diagnosis folder,
an export's files and a lab folder (``lab.csv``, ``lab.json``), read into the engine's data and written from it.
Only the faces read and write folders; the engine functions take profiles, schedules and workloads.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pandas as pd
from torch import nn

from analysis.core.profile import SensitivityProfile
from analysis.lab.result import LabResult
from analysis.schedule.allocate import ScheduleSetting, needs_data, needs_model, schedule_setting
from analysis.schedule.calibrate import Calibration
from analysis.schedule.predict import Predictor
from analysis.schedule.schedule import Schedule, ScheduleError
from analysis.store import artifacts
from analysis.store.runs import RunStore
from analysis.workload.models import load_model
from analysis.workload.workload import image_channels, load_eval_data, seq_len_of

CALIBRATION_JSON = "calibration.json"
CALIBRATION_CSV = "calibration.csv"


def scan_fingerprint(scan_dir: str | Path) -> str:
    """A digest of a scan folder's ``sensitivity.csv``: a calibration holds for the profile it was fitted on."""
    return hashlib.sha256((Path(scan_dir) / "sensitivity.csv").read_bytes()).hexdigest()[:16]


def read_calibration(scan_dir: str | Path) -> tuple[dict, pd.DataFrame] | None:
    """``calibration.json`` and ``calibration.csv`` of a scan folder, or ``None`` if it was never calibrated."""
    scan_dir = Path(scan_dir)
    json_path, csv_path = scan_dir / CALIBRATION_JSON, scan_dir / CALIBRATION_CSV
    if not json_path.is_file():
        return None
    try:
        info = json.loads(json_path.read_text())
    except ValueError as exc:
        raise ValueError(f"{json_path} is not a calibration file: {exc}") from None
    table = pd.read_csv(csv_path) if csv_path.is_file() else pd.DataFrame()
    return info, table


def save_calibration(scan_dir: str | Path, calibration: Calibration) -> tuple[Path, Path]:
    """Write ``calibration.json`` (with the digest of the profile it was fitted on) and ``calibration.csv``."""
    scan_dir = Path(scan_dir)
    json_path, csv_path = scan_dir / CALIBRATION_JSON, scan_dir / CALIBRATION_CSV
    info = {**calibration.to_dict(), "scan": scan_fingerprint(scan_dir)}
    json_path.write_text(json.dumps(info, indent=2) + "\n")
    calibration.table.to_csv(csv_path, index=False)
    return json_path, csv_path


def current_calibration(scan_dir: str | Path) -> dict | None:
    """The folder's calibration when it was fitted on the profile there now (scanning again makes it stale)."""
    found = read_calibration(scan_dir)
    if found is None:
        return None
    info = found[0]
    if not isinstance(info, dict) or info.get("scan") not in (None, scan_fingerprint(scan_dir)):
        return None
    return info


def predictor_from_scan(scan_dir: str | Path, metric: str | None = None) -> Predictor:
    """The predictor of a scan folder: calibrated if ``calibration.json`` holds for it and its leave-one-out error
    beats additive's, else additive (``Predictor.reason`` says which and why)."""
    try:
        return Predictor.from_profile(SensitivityProfile.load(scan_dir), current_calibration(scan_dir), metric)
    except ValueError as exc:
        if "not a calibration" in str(exc):
            raise ValueError(f"{Path(scan_dir) / CALIBRATION_JSON} is {exc}") from None
        raise


def scan_model(scan_dir: str | Path, profile: SensitivityProfile, model_spec: str | None = None,
               trust_code: bool = False) -> nn.Module:
    """The scanned model, from ``model_spec`` or the spec ``scan.json`` names (a program loads only with
    ``trust_code``: a scan folder may come from someone else)."""
    spec = model_spec or profile.meta.get("model")
    if not spec:
        raise ScheduleError(f"{scan_dir}/scan.json does not name its model; pass --model")
    return load_model(spec, trust_code=trust_code)


def scan_data(profile: SensitivityProfile, model: nn.Module):  # noqa: ANN201 - EvalData
    """The scanned eval data, read again for ``model`` as the scan read it (an image folder at the scan's size and
    channels, text in sequences of the scan's length)."""
    meta = profile.meta
    shape = meta.get("input_shape") or []
    channels = image_channels(shape)
    return load_eval_data(model, meta.get("model", ""), meta["data"], count=meta.get("samples"),
                          input_size=shape[1] if channels else 224, channels=channels,
                          seq_len=seq_len_of(shape, meta.get("input_dtype", "float32")))


def scan_setting(scan_dir: str | Path, methods: tuple[str, ...] = ("sensitivity",), model_spec: str | None = None,
                 trust_code: bool = False, model: nn.Module | None = None) -> ScheduleSetting:
    """The allocation setting of a scan folder, loading the model (and data) only when ``methods`` need them."""
    profile = SensitivityProfile.load(scan_dir)
    if not needs_model(profile, methods):
        return schedule_setting(profile)
    model = model if model is not None else scan_model(scan_dir, profile, model_spec, trust_code)
    return schedule_setting(profile, model, scan_data(profile, model) if needs_data(profile, methods) else None)


def folder_run(store: RunStore, scan: str | Path) -> int | None:
    """The run a scan folder came from (its ``scan.json`` names it), when the folder and the run are still there."""
    try:
        return artifacts.scan_run(store, json.loads((Path(scan) / "scan.json").read_text()))
    except (OSError, ValueError):
        return None


def schedule_run(store: RunStore, schedule: Schedule) -> int | None:
    """The run a schedule came from: the one its ``meta`` names, else the run of the scan folder it was made
    from (``prunescope schedule`` records the folder)."""
    run_id = schedule.meta.get("run_id")
    if isinstance(run_id, int) and not isinstance(run_id, bool):
        return run_id
    scan = schedule.meta.get("scan")
    return folder_run(store, scan) if isinstance(scan, str) else None


def load_export(folder: str | Path) -> dict | str:
    """What an export folder says about its export: ``NAME.export.json`` (the report's ``to_dict``) if there,
    else the Markdown summary ``NAME.md`` that ``prunescope export`` writes next to ``NAME.onnx``."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"export folder {folder} does not exist")
    onnx_files = sorted(p for p in folder.glob("*.onnx") if not p.name.endswith(".rejected.onnx"))
    if not onnx_files:
        raise ValueError(f"export folder {folder} holds no .onnx file")
    stem = onnx_files[0].with_suffix("")
    as_json, as_md = stem.with_suffix(".export.json"), stem.with_suffix(".md")
    if as_json.is_file():
        return json.loads(as_json.read_text())
    if as_md.is_file():
        return as_md.read_text()
    raise ValueError(f"export folder {folder} has {onnx_files[0].name} but neither {as_json.name} nor {as_md.name}")


def write_lab(folder: str | Path, result: LabResult) -> tuple[Path, Path]:
    """A lab's folder: ``lab.csv`` (every measured point, one row per strategy and step) and ``lab.json``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    csv, as_json = folder / "lab.csv", folder / "lab.json"
    result.curves().to_csv(csv, index=False)
    as_json.write_text(json.dumps(result.to_dict(), indent=1, default=str) + "\n")
    return csv, as_json


def load_lab(folder: str | Path) -> LabResult:
    """The lab a ``prunescope lab`` folder holds (``lab.json``)."""
    path = Path(folder) / "lab.json"
    if not path.is_file():
        raise ValueError(f"{folder} is not a lab folder: it has no lab.json (prunescope lab --out writes one)")
    try:
        return LabResult.from_dict(json.loads(path.read_text()))
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{path} is not a lab written by prunescope lab: {exc}") from None
