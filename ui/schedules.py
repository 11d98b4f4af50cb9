"""The schedule tuned on the Schedule page, the cached engines behind its live numbers, and saved schedules.

Session state key:
    ``schedule``   ``{"run_id", "values": {layer: sparsity}, "source", "measured"}``: the sliders' schedule for
                   the run on show (reset when another run is picked) and its last measurement

The sliders' schedule is also kept in the run store per workload (a ``tuning`` artifact, replaced when it
changes), so a reload, a new tab or a server restart finds it. Saved schedules are ``schedule`` artifacts
(``Schedule.to_dict()``), named, linked to the run they were tuned on; their ``meta`` names the workload, the
totals, the prediction and any measurement.
"""

from __future__ import annotations

import json

import streamlit as st
import torch

from analysis.core import criteria, masks
from analysis.core.layers import Layer
from analysis.core.profile import SensitivityProfile
from analysis.schedule.allocate import Bounds
from analysis.schedule.predict import Predictor
from analysis.schedule.schedule import Schedule, ScheduleError
from analysis.schedule.totals import Accountant
from analysis.store import artifacts as artifacts_engine
from ui import artifacts, runs
from ui.common import WorkloadSpec, cached_layers, cached_workload, model_lock

STATE = "schedule"
SLIDER = "sparsity::"
GROUP_ABOVE = 12


# -------------------------------------------------------------------------------------------- cached engines


def predictor(run_id: int, metric: str) -> Predictor:
    """The run's predictor (calibrated when its scan folder has ``calibration.json``), built once per run, metric
    and calibration."""
    folder = runs.scan_folder(run_id)
    cal = folder / "calibration.json"
    return _predictor(str(folder), metric, cal.stat().st_mtime if cal.is_file() else 0.0)


@st.cache_resource(show_spinner=False, max_entries=16)
def _predictor(folder: str, metric: str, calibrated_at: float) -> Predictor:
    return Predictor.from_scan(folder, metric)


def forget_predictors() -> None:
    """Drop the cached predictors (after a calibration, so every page predicts with it at once)."""
    _predictor.clear()


@st.cache_resource(show_spinner="Tracing the channel graph ...", max_entries=8)
def accountant(spec: WorkloadSpec, criterion: str, granularity: str) -> Accountant:
    """Totals of any schedule on this workload's model, in well under a millisecond once built."""
    w, layers = cached_workload(spec), cached_layers(spec)
    stats = None
    with model_lock(spec):
        if masks.parse_granularity(granularity).kind == "channel" and criterion in criteria.CALIBRATED:
            n = min(len(w.data), 256)
            stats = criteria.collect_stats(w.model, layers, w.data.x[:n], None if w.data.y is None else w.data.y[:n],
                                           criterion)
        return Accountant.from_model(w.model, w.data.x[:1], layers, criterion, granularity, stats)


@st.cache_resource(show_spinner=False, max_entries=8)
def weights(spec: WorkloadSpec) -> dict[str, torch.Tensor]:
    """Each layer's weight (the global magnitude and LAMP presets rank them)."""
    model = cached_workload(spec).model
    with model_lock(spec):
        return {l.name: l.weight(model).detach().clone() for l in cached_layers(spec)}


# ------------------------------------------------------------------------------------------ the slider state


def state(run_id: int, spec: WorkloadSpec) -> dict:
    """The schedule being tuned for ``run_id``: this session's, else the one kept in the store for the workload
    (so a reload or a new tab finds it), else all layers dense."""
    current = st.session_state.get(STATE)
    if current is None or current["run_id"] != run_id:
        kept = _kept(spec)
        current = st.session_state[STATE] = {"run_id": run_id, "values": {}, "source": "hand-tuned",
                                             "measured": None, "workload": spec.key}
        if kept and kept["run_id"] == run_id:
            set_values(current, kept["values"], kept["source"])
            current["preset"] = kept.get("preset", {})
        else:
            set_values(current, {}, "hand-tuned")
    return current


def keep(current: dict, spec: WorkloadSpec) -> None:
    """Keep the sliders' schedule in the store when it changed, so it outlives the browser session."""
    record = {k: current.get(k) for k in ("run_id", "values", "source", "preset")}
    text = json.dumps(record, sort_keys=True)
    if current.get("kept") != text:
        stale = artifacts.listed(artifacts.TUNING, spec)
        artifacts.save(artifacts.TUNING, "sliders", {**record, "workload": artifacts.workload_id(spec)})
        for old in stale:
            artifacts.delete(old.id)
        current["kept"] = text


def _kept(spec: WorkloadSpec) -> dict | None:
    stored = artifacts.listed(artifacts.TUNING, spec)
    record = stored[0].payload if stored else None
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
        current = _kept(spec)
        if current is None:
            return None
    if current["run_id"] not in {r.run_id for r in runs.list_runs(spec)}:
        return None
    profile = runs.load_run(current["run_id"])
    schedule = to_schedule(current["values"], profile, {"method": source(current), "run_id": current["run_id"]})
    measured = current.get("measured")
    if measured and measured["fingerprint"] == fingerprint(schedule):
        schedule.meta["measured"] = measured["result"]
    return schedule, profile


# ------------------------------------------------------------------------------------------ saved schedules


def check_name(name: str) -> str:
    """A schedule name (letters, digits, spaces, '_', '.', '-'), or a ``ValueError`` that names the bad value."""
    return artifacts_engine.check_name(name)


def save(name: str, schedule: Schedule, spec: WorkloadSpec) -> tuple[int, bool]:
    """Store ``schedule`` under ``name`` for this workload; returns its artifact id and whether an older schedule
    of that name was replaced."""
    name = check_name(name)
    older = [a for a in artifacts.listed(artifacts.SCHEDULE, spec) if a.name == name]
    run_id = schedule.meta.get("run_id")
    payload = artifacts_engine.schedule_payload(schedule, name, artifacts.workload_id(spec), run_id,
                                                workload_key=spec.key)
    schedule.meta.update(payload["meta"])
    artifact_id = artifacts.save(artifacts.SCHEDULE, name, payload, run_id=run_id)
    for a in older:
        artifacts.delete(a.id)
    return artifact_id, bool(older)


def list_saved(spec: WorkloadSpec) -> dict[str, Schedule]:
    """Saved schedules of this workload by name, newest first; payloads that are not schedules are skipped."""
    out = {}
    for a in artifacts.listed(artifacts.SCHEDULE, spec):
        try:
            out.setdefault(a.name, Schedule.from_dict(a.payload))
        except (ScheduleError, ValueError, KeyError, TypeError):
            continue
    return out


def delete_saved(name: str, spec: WorkloadSpec) -> None:
    for a in artifacts.listed(artifacts.SCHEDULE, spec):
        if a.name == name:
            artifacts.delete(a.id)

