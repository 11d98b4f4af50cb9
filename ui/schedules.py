"""The schedule tuned on the Schedule page, the cached engines behind its live numbers, and saved schedules.

Session state key:
    ``schedule``   ``{"run_id", "values": {layer: sparsity}, "source", "measured"}``: the sliders' schedule for
                   the run on show (reset when another run is picked) and its last measurement

The sliders' schedule is also kept on disk per workload (``schedules/.current/``), so a reload finds it.
Saved schedules are ``Schedule.save`` JSON files under ``$PRUNESCOPE_HOME/schedules/<name>.json``; their
``meta`` names the workload and run they were tuned on, the totals, the prediction and any measurement.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from pathlib import Path

import streamlit as st
import torch

from analysis import criteria, masks
from analysis.allocate import Bounds
from analysis.layers import Layer
from analysis.predict import Predictor
from analysis.schedule import Schedule, ScheduleError
from analysis.sensitivity import SensitivityProfile
from analysis.totals import Accountant
from ui import runs
from ui.common import WorkloadSpec, cached_layers, cached_workload
from ui.uploads import prunescope_home

STATE = "schedule"
SLIDER = "sparsity::"
GROUP_ABOVE = 12
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9 _.-]{0,63}")


# -------------------------------------------------------------------------------------------- cached engines


def predictor(run_id: str, metric: str) -> Predictor:
    """The run's predictor (calibrated when its folder has ``calibration.json``), built once per run and metric."""
    folder = runs.profiles_dir() / run_id
    cal = folder / "calibration.json"
    return _predictor(str(folder), metric, cal.stat().st_mtime if cal.is_file() else 0.0)


@st.cache_resource(show_spinner=False, max_entries=16)
def _predictor(folder: str, metric: str, calibrated_at: float) -> Predictor:
    return Predictor.from_scan(folder, metric)


@st.cache_resource(show_spinner="Tracing the channel graph ...", max_entries=8)
def accountant(spec: WorkloadSpec, criterion: str, granularity: str) -> Accountant:
    """Totals of any schedule on this workload's model, in well under a millisecond once built."""
    w, layers = cached_workload(spec), cached_layers(spec)
    stats = None
    if masks.parse_granularity(granularity).kind == "channel" and criterion in criteria.CALIBRATED:
        n = min(len(w.data), 256)
        stats = criteria.collect_stats(w.model, layers, w.data.x[:n], None if w.data.y is None else w.data.y[:n],
                                       criterion)
    return Accountant.from_model(w.model, w.data.x[:1], layers, criterion, granularity, stats)


@st.cache_resource(show_spinner=False, max_entries=8)
def weights(spec: WorkloadSpec) -> dict[str, torch.Tensor]:
    """Each layer's weight (the global magnitude and LAMP presets rank them)."""
    model = cached_workload(spec).model
    return {l.name: l.weight(model).detach() for l in cached_layers(spec)}


# ------------------------------------------------------------------------------------------ the slider state


def state(run_id: str, workload_key: str) -> dict:
    """The schedule being tuned for ``run_id``: this session's, else the one kept on disk for the workload (so a
    reload or a new tab finds it), else all layers dense."""
    current = st.session_state.get(STATE)
    if current is None or current["run_id"] != run_id:
        kept = _kept(workload_key)
        current = st.session_state[STATE] = {"run_id": run_id, "values": {}, "source": "hand-tuned",
                                             "measured": None, "workload": workload_key}
        if kept and kept["run_id"] == run_id:
            set_values(current, kept["values"], kept["source"])
            current["preset"] = kept.get("preset", {})
        else:
            set_values(current, {}, "hand-tuned")
    return current


def keep(current: dict) -> None:
    """Write the sliders' schedule to disk when it changed, so it outlives the browser session."""
    text = json.dumps({k: current.get(k) for k in ("run_id", "values", "source", "preset")}, sort_keys=True)
    if current.get("kept") != text:
        path = _kept_path(current["workload"])
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        current["kept"] = text


def _kept_path(workload_key: str) -> Path:
    return schedules_dir() / ".current" / f"{hashlib.sha256(workload_key.encode()).hexdigest()[:16]}.json"


def _kept(workload_key: str) -> dict | None:
    try:
        record = json.loads(_kept_path(workload_key).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and isinstance(record.get("values"), dict) else None


def set_values(current: dict, values: dict[str, float], source: str) -> None:
    """Replace the sliders' values (their widgets pick them up on this run)."""
    current["values"] = {k: float(v) for k, v in values.items()}
    current["source"] = source
    current["preset"] = _pruned(current["values"])
    for key in [k for k in st.session_state if str(k).startswith(SLIDER)]:
        del st.session_state[key]


def _pruned(values: dict[str, float]) -> dict[str, float]:
    return {k: v for k, v in values.items() if v > 0}


def source(current: dict) -> str:
    """Where the sliders' values come from: the preset or saved schedule applied, or the user's hands."""
    if _pruned(current["values"]) == current.get("preset", {}):
        return current["source"]
    return "hand-tuned" if current["source"] == "hand-tuned" else f"hand-tuned from {current['source']}"


def slider_limit(layer: Layer, granularity: str) -> float:
    """The largest sparsity a slider offers: every unit but one, on a 0.001 grid, at most 0.99."""
    cap = Bounds().limit(layer, masks.parse_granularity(granularity))
    return min(0.99, int(cap * 1000) / 1000)


def groups(names: list[str]) -> dict[str, list[str]]:
    """Layers grouped by the first component of their name (``layer3.1.conv2`` -> ``layer3``), model order."""
    out: dict[str, list[str]] = {}
    for name in names:
        out.setdefault(name.split(".")[0], []).append(name)
    return out


def to_schedule(values: dict[str, float], profile: SensitivityProfile, meta: dict | None = None) -> Schedule:
    """The sliders' schedule: the layers they prune, with the run's criterion and granularity."""
    pruned = {k: v for k, v in values.items() if v > 0}
    return Schedule(pruned, profile.meta.get("criterion", "magnitude"), profile.meta.get("granularity", "unstructured"),
                    dict(meta or {}))


def compared_stage(measured: dict, predictor: Predictor) -> str:
    """The stage of a measurement (``Measurement.to_dict()``) that the prediction stands for, if measured."""
    return predictor.stage if measured.get(predictor.stage) else measured["stage"]


def fingerprint(schedule: Schedule) -> tuple:
    """What decides a measurement: the sparsities, criterion and granularity."""
    return (schedule.criterion, schedule.granularity, tuple(sorted(schedule.sparsities.items())))


def current_schedule(spec: WorkloadSpec) -> tuple[Schedule, SensitivityProfile] | None:
    """The Schedule page's schedule and its run, if one is being tuned for this workload."""
    current = st.session_state.get(STATE)
    if not current or current.get("workload") != spec.key:
        current = _kept(spec.key)
        if current is None:
            return None
    try:
        profile = runs.load_run(current["run_id"])
    except (OSError, ValueError):
        return None
    if profile.meta.get("workload_key") != spec.key:
        return None
    schedule = to_schedule(current["values"], profile, {"method": source(current), "run_id": current["run_id"]})
    measured = current.get("measured")
    if measured and measured["fingerprint"] == fingerprint(schedule):
        schedule.meta["measured"] = measured["result"]
    return schedule, profile


# ------------------------------------------------------------------------------------------ saved schedules


def schedules_dir() -> Path:
    return prunescope_home() / "schedules"


def check_name(name: str) -> str:
    """A schedule name that is also a safe file name, or a ``ValueError`` that names the bad value."""
    name = name.strip()
    if not _NAME.fullmatch(name):
        raise ValueError(f"schedule name {name!r} must start with a letter or digit and use only letters, digits, "
                         "spaces, '_', '.' and '-' (at most 64 characters)")
    return name


def save(name: str, schedule: Schedule, workload_key: str) -> tuple[Path, bool]:
    """Write ``schedule`` as ``<name>.json``; returns the path and whether an older one was replaced."""
    name = check_name(name)
    path = schedules_dir() / f"{name}.json"
    replaced = path.is_file()
    schedule.meta.update({"name": name, "workload_key": workload_key, "saved": time.strftime("%Y-%m-%d %H:%M:%S")})
    schedule.save(path)
    return path, replaced


def list_saved(workload_key: str) -> dict[str, Schedule]:
    """Saved schedules of one workload by name; files that cannot be read are skipped."""
    out = {}
    folder = schedules_dir()
    if not folder.is_dir():
        return out
    for path in sorted(folder.glob("*.json")):
        try:
            schedule = Schedule.load(path)
        except ScheduleError:
            continue
        if schedule.meta.get("workload_key") == workload_key:
            out[schedule.meta.get("name", path.stem)] = schedule
    return out
