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
from dataclasses import dataclass

import pandas as pd
import streamlit as st
import torch

from analysis.core import criteria
from analysis.core.granularity import parse_granularity, schedule_layers
from analysis.core.layers import Layer
from analysis.core.profile import SensitivityProfile
from analysis.schedule.allocate import Bounds, wanda_scores
from analysis.schedule.coupling import CoupledGroup
from analysis.schedule.predict import Predictor, compared_stage
from analysis.schedule.prune import resolve_schedule
from analysis.schedule.schedule import Schedule, ScheduleError
from analysis.schedule.totals import Accountant
from analysis.store import artifacts as artifacts_engine
from analysis.store.runs import default_path
from ui import artifacts, runs
from ui.common import WorkloadSpec, cached_layers, cached_workload, left_out_layers, model_lock

STATE = "schedule"
SLIDER = "sparsity::"
GROUP_ABOVE = 12


# -------------------------------------------------------------------------------------------- cached engines


def predictor(run_id: int, metric: str) -> Predictor:
    """The run's predictor (calibrated when the store keeps a calibration of the run), built once per run, metric
    and calibration."""
    stored = runs.stored_calibration(run_id)
    return _predictor(str(default_path()), run_id, metric, stored[0] if stored else None)


@st.cache_resource(show_spinner=False, max_entries=16)
def _predictor(store_path: str, run_id: int, metric: str, calibration_id: int | None) -> Predictor:
    """Keyed by the store's file too: run ids are per store (a server started on another home, a test)."""
    stored = runs.stored_calibration(run_id) if calibration_id is not None else None
    return Predictor.from_profile(runs.load_run(run_id), stored[1] if stored else None, metric)


def forget_predictors() -> None:
    """Drop the cached predictors (after a calibration, so every page predicts with it at once)."""
    _predictor.clear()


def accountant(spec: WorkloadSpec, profile: SensitivityProfile) -> Accountant:
    """Totals of any schedule of ``profile``'s run on this workload's model, with the run's criterion, granularity,
    calibration size and seed (so channels rank as in ``prunescope schedule``); well under a millisecond once
    built. For channel pruning it holds the model's coupled groups (``accountant.coupling``)."""
    meta, config = profile.meta, profile.meta.get("config") or {}
    return _accountant(spec, meta.get("criterion", "magnitude"), meta.get("granularity", "unstructured"),
                       int(config.get("calib_samples", 256)), int(config.get("seed", 0)), tuple(profile.layers))


def accountant_for(spec: WorkloadSpec, schedule: Schedule, profile: SensitivityProfile | None) -> Accountant:
    """The accountant of ``schedule``'s own criterion and granularity (the run's calibration size and seed when its
    run is known): how the export will resolve and count it."""
    config = (profile.meta.get("config") or {}) if profile is not None else {}
    return _accountant(spec, schedule.criterion, schedule.granularity, int(config.get("calib_samples", 256)),
                       int(config.get("seed", 0)), tuple(sorted(schedule.sparsities)))


def run_layers(spec: WorkloadSpec, profile: SensitivityProfile) -> list[Layer]:
    """The layers a schedule of ``profile``'s run prunes and counts: the model's layers, as the run's granularity
    takes them (a heads or neurons run's coupled attention and MLP layers) with the embeddings it scanned."""
    return _schedule_layers(spec, profile.meta.get("granularity", "unstructured"), tuple(profile.layers))


@st.cache_resource(show_spinner=False, max_entries=16)
def _schedule_layers(spec: WorkloadSpec, granularity: str, names: tuple[str, ...]) -> list[Layer]:
    if not parse_granularity(granularity).coupled and not any(n in left_out_layers(spec) for n in names):
        return cached_layers(spec)
    w = cached_workload(spec)
    with model_lock(spec):
        return schedule_layers(w.model, w.data.x[:1], granularity, names)


@st.cache_resource(show_spinner="Tracing the channel graph ...", max_entries=8)
def _accountant(spec: WorkloadSpec, criterion: str, granularity: str, calib_samples: int, seed: int,
                names: tuple[str, ...] = ()) -> Accountant:
    w, layers = cached_workload(spec), _schedule_layers(spec, granularity, names)
    stats = None
    with model_lock(spec):
        if parse_granularity(granularity).structured and criterion in criteria.CALIBRATED:
            stats = criteria.calibration_stats(w.model, layers, w.data, criterion, calib_samples)
        return Accountant.from_model(w.model, w.data.x[:1], layers, criterion, granularity, stats, seed)


@st.cache_resource(show_spinner=False, max_entries=8)
def owl_scores(spec: WorkloadSpec) -> dict[str, torch.Tensor]:
    """Each layer's Wanda scores on the eval data (the OWL preset reads their outliers)."""
    workload = cached_workload(spec)
    with model_lock(spec):
        return wanda_scores(workload.model, cached_layers(spec), workload.data)


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


def set_values(current: dict, values: dict[str, float], source: str, resolved: list[str] | None = None) -> None:
    """Replace the sliders' values (their widgets pick them up on this run); ``resolved`` says how a loaded
    schedule was resolved to the model's coupled groups (shown until the values are replaced)."""
    current["values"] = {k: float(v) for k, v in values.items()}
    current["source"] = source
    current["resolved"] = list(resolved or [])
    current["preset"] = _pruned(current["values"])
    current["revision"] = current.get("revision", 0) + 1  # the browser's sliders take these values (ui/live.py)
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
    cap = Bounds().limit(layer, parse_granularity(granularity))
    return min(0.99, int(cap * 1000) / 1000)


FINE_GRID = 100  # a group of at most this many positions per block gets a slider with one stop per position


@dataclass(frozen=True)
class SliderItem:
    """One slider of the page: a layer, or a coupled group moving all its ``members``; ``why`` (no slider) says why
    it stays dense."""

    key: str
    label: str
    members: tuple[str, ...]
    limit: float = 0.0
    step: float = 0.001
    options: tuple[float, ...] = ()
    why: str = ""


def slider_items(by_name: dict[str, Layer], names: list[str], granularity: str,
                 accountant: Accountant) -> list[SliderItem]:
    """The sliders of the scanned layers ``names``: one per layer, or for channel pruning one per coupled group
    (named by its layers; a group whose layers were not all scanned, or that is kept whole, gets a reason)."""
    gran = parse_granularity(granularity)
    if not gran.structured:
        fixed = gran.fixed_sparsity
        return [_layer_item(by_name[n], granularity, fixed) for n in names]
    scanned, items = set(names), []
    for group in accountant.coupling.groups:
        if scanned.intersection(group.layers):
            items.append(_group_item(group, by_name, scanned))
    alone = accountant.coupling.alone
    items += [SliderItem(SLIDER + n, n, (n,), why=f"not pruned by channel: {alone[n]}") for n in names if n in alone]
    return items


def _layer_item(layer: Layer, granularity: str, fixed: float | None) -> SliderItem:
    label = f"{layer.name} ({layer.kind}, {layer.params:,} weights)"
    limit = slider_limit(layer, granularity)
    if limit <= 0:
        return SliderItem(SLIDER + layer.name, layer.name, (layer.name,), why=f"cannot take {granularity} pruning")
    return SliderItem(SLIDER + layer.name, label, (layer.name,), limit, options=(0.0, fixed) if fixed else ())


def _group_item(group: CoupledGroup, by_name: dict[str, Layer], scanned: set[str]) -> SliderItem:
    members = tuple(group.layers)
    weights = sum(by_name[n].params for n in members)
    coupled = f"{len(members)} layers coupled, " if len(members) > 1 else ""
    label = f"{group.label} ({coupled}{group.size}, {weights:,} weights)"
    if group.kept or not group.prunable:
        return SliderItem(SLIDER + group.key, group.label, members, why=f"kept whole: {group.kept or 'one channel'}")
    missing = [n for n in members if n not in scanned]
    if missing:
        return SliderItem(SLIDER + group.key, group.label, members,
                          why=f"coupled with {missing[0]}, which the scan did not measure")
    units = group.per_block
    limit = min(0.99, (units - 1) / units)
    step = 1 / units if units <= FINE_GRID else 0.001
    return SliderItem(SLIDER + group.key, label, members, limit if units <= FINE_GRID else int(limit * 1000) / 1000,
                      step)


def snapped(value: float, item: SliderItem) -> float:
    """``value`` on the slider's grid and within its range (where a group's slider starts: the smallest value of
    its members, as a schedule is resolved)."""
    value = min(max(value, 0.0), item.limit)
    if item.options:
        return min(item.options, key=lambda o: abs(o - value))
    return round(round(value / item.step) * item.step, 6)


def resolved_values(values: dict[str, float], profile: SensitivityProfile,
                    accountant: Accountant) -> tuple[dict[str, float], list[str]]:
    """Slider values as the model takes them (a channel schedule resolved to its coupled groups) and how."""
    effective, notes = resolve_schedule(to_schedule(values, profile), accountant)
    return dict(effective.sparsities), notes


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



def compare_table(chosen: dict[str, Schedule], profile: SensitivityProfile, names: list[str], accountant: Accountant,
                  predictor: Predictor, metric: str, measured: dict[str, dict]) -> pd.DataFrame:
    """One row per schedule: method, totals, predicted and measured ``metric``. A schedule of this run's criterion,
    granularity and layers is counted and predicted live; any other shows the figures saved with it."""
    rows = []
    for label, sch in chosen.items():
        same = (sch.criterion, sch.granularity) == (profile.meta["criterion"], profile.meta["granularity"]) \
            and set(sch.sparsities) <= set(names)
        t = accountant.totals(sch).fractions() if same else sch.meta.get("totals", {})
        result = measured.get(label, sch.meta.get("measured"))
        rows.append({"name": label, "method": sch.meta.get("method", sch.meta.get("source", "")),
                     "criterion": sch.criterion, "granularity": sch.granularity,
                     "layers pruned": len(sch.sparsities), "global_sparsity": t.get("global_sparsity"),
                     "params_kept": t.get("params_kept"), "flops_kept": t.get("flops_kept"),
                     "predicted": predictor.predict(resolve_schedule(sch, accountant)[0]) if same
                     else sch.meta.get("predicted", {}).get(metric),
                     "measured": result[compared_stage(result, predictor.stage)].get(metric) if result else None})
    numbers = ["global_sparsity", "params_kept", "flops_kept", "predicted", "measured"]
    return pd.DataFrame(rows).astype({c: float for c in numbers})  # NaN, not None, where a figure is missing


def styled_compare(table: pd.DataFrame):  # noqa: ANN201 - a pandas Styler
    """``compare_table`` for the page: 4 decimals, "not measured" in the measured column (not "None")."""
    return (table.style.format(precision=4, na_rep="-")
            .format(precision=4, na_rep="not measured", subset=["measured"]))
