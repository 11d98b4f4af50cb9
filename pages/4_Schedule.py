"""Schedule: one sparsity per layer, presets, live totals and predicted metric, measured on demand, saved and compared.

The page is a sequence of sections, each a function that draws one part and returns what the next parts read.
What the sliders drive (presets, sliders, totals, prediction, measure, save, compare) is one ``st.fragment``:
moving a slider reruns that part alone, not the workload, the run picker and the calibration above it.
"""

import json

import pandas as pd
import streamlit as st

from analysis.core.batchnorm import has_batchnorm
from analysis.core.granularity import parse_granularity
from analysis.core.metric_table import HIGHER_IS_BETTER, metric_choices, metric_info
from analysis.core.profile import SensitivityProfile
from analysis.report import plots
from analysis.schedule.allocate import METHODS, TARGET_KINDS, Bounds, allocate, parse_target
from analysis.schedule.calibrate import DEFAULT_METHODS, calibrate, parse_targets
from analysis.schedule.measure import measure_schedule
from analysis.schedule.predict import Prediction, Predictor, calibration_verdict, compared_stage
from analysis.schedule.prune import resolve_schedule
from analysis.schedule.schedule import Schedule
from analysis.schedule.totals import Accountant
from ui import common, live, runs, schedules
from ui import format as fmt

METHOD_WORDS = {"sensitivity": "sensitivity-based (smallest predicted drop)", "uniform": "uniform",
                "global": "global magnitude", "lamp": "LAMP", "erk": "ERK",
                "owl": "OWL (outlier-weighted, per block)"}
TARGET_WORDS = {"sparsity": "global sparsity", "params": "parameters kept", "flops": "FLOPs kept"}


def pick_run(spec: common.WorkloadSpec) -> tuple[int, SensitivityProfile]:
    """The sensitivity run the prediction comes from (the current one unless another complete run is picked)."""
    profile = runs.current_profile(spec)
    if profile is None:
        st.info("No scan of this workload yet: a schedule is predicted from a sensitivity scan. Run one on the "
                "Sensitivity page (a few seconds on the sample).")
        st.page_link("pages/2_Sensitivity.py", label="Go to Sensitivity", icon=":material/thermostat:")
        st.stop()
    run_id = profile.meta["run_id"]
    known = {r.run_id: r.label for r in runs.list_runs(spec) if r.complete or r.run_id == run_id}
    picked = st.selectbox("Sensitivity run the prediction comes from", list(known), index=list(known).index(run_id),
                          format_func=known.get)
    if picked != run_id:
        st.session_state[runs.RUN_ID] = picked
        return picked, runs.load_run(picked)
    return run_id, profile


def calibration_section(spec: common.WorkloadSpec, workload, run_id: int, profile: SensitivityProfile,  # noqa: ANN001
                        metric: str) -> None:
    """Measure a few real schedules and fit how the drops combine; show the stored calibration."""
    st.caption(f"Builds {' and '.join(DEFAULT_METHODS)} schedules from this run at each target, measures each on the "
               "model and fits the calibrated prediction model; the prediction on this page then uses it.")
    targets_text = st.text_input("Target sparsities", "0.3, 0.5, 0.7", key="calibration-targets")
    if st.button("Calibrate", help="a few evaluations of the model; seconds on the sample"):
        try:
            targets = parse_targets(targets_text)
            bar = st.progress(0.0, text="Measuring schedules ...")
            total, measured = len(targets) * len(DEFAULT_METHODS), []

            def on_sample(sample) -> None:  # noqa: ANN001 - an analysis.schedule.calibrate.Sample
                measured.append(sample)
                bar.progress(len(measured) / total, text=f"{len(measured)}/{total} schedules measured · last: "
                             f"{sample.method} at {sample.target:g}: {sample.measured:.4f}")

            with common.holding(spec):
                result = calibrate(profile, workload, targets=targets,
                                   metric=metric if metric_info(metric).bounded else None, progress=on_sample)
            runs.save_calibration(run_id, result)
            schedules.forget_predictors()
            bar.empty()
        except ValueError as exc:
            st.error(f"Cannot calibrate: {exc}")
        else:
            st.success(f"Calibrated on {len(result.samples)} measured schedules: power {result.predictor.power:.3f}.")
    calibrated = runs.stored_calibration(run_id)
    if calibrated is None:
        st.info("Not calibrated yet: the prediction adds the per-layer drops of the profile.")
        return
    _, info, table = calibrated
    mae = info.get("mae", {})
    st.caption(f"Calibrated {info['metric']} ({info.get('stage', 'pruned')}) from {info.get('schedules')} "
               f"schedules: power {info['power']:.3f}; mean absolute error additive {mae.get('additive', 0):.4f}, "
               f"calibrated {mae.get('calibrated', 0):.4f} (leave-one-out)")
    st.markdown(f"**In use:** {calibration_verdict(info)[1]}.")
    st.dataframe(table, hide_index=True, width="stretch")


def presets_section(spec: common.WorkloadSpec, layers: list, profile: SensitivityProfile, names: list[str],
                    accountant: Accountant, metric: str, current: dict) -> None:
    """Allocate a whole schedule to a target with one of the methods and load it into the sliders."""
    st.subheader("Presets")
    criterion, granularity = profile.meta["criterion"], profile.meta["granularity"]
    c1, c2, c3 = st.columns(3)
    method = c1.selectbox("Method", METHODS, format_func=lambda m: METHOD_WORDS.get(m, m))
    kind = c2.radio("Target", TARGET_KINDS, horizontal=True, format_func=TARGET_WORDS.get)
    target_text = c3.text_input("Target value", "0.5" if kind == "sparsity" else "50%", key=f"target-{kind}",
                                help="sparsity: a fraction in [0, 1); parameters or FLOPs kept: a count (120000, "
                                     "1.5M) or a percentage of the total (30%)")
    c1, c2, c3 = st.columns([1, 2, 1])
    max_sparsity = c1.number_input("Per-layer maximum", 0.0, 0.99, 0.95, step=0.05)
    keep_dense = c2.multiselect("Keep dense", names)
    if not c3.button("Apply preset", type="primary"):
        return
    try:
        total = accountant.flops if kind == "flops" else accountant.weights
        schedule = allocate(method, layers, parse_target(kind, target_text, total), granularity=granularity,
                            criterion=criterion, bounds=Bounds(max_sparsity, {}, tuple(keep_dense)),
                            accountant=accountant,
                            weights=schedules.weights(spec) if method in ("global", "lamp") else None,
                            scores=schedules.owl_scores(spec) if method == "owl" else None,
                            profile=profile, metric=metric, allocatable=names)
    except ValueError as exc:
        st.error(f"Cannot apply the {method} preset: {exc}")
    else:
        schedules.set_values(current, {n: round(schedule.sparsities.get(n, 0.0), 3) for n in names},
                             f"{method} to {kind} {target_text.strip()}")


def slider_values(items: list[schedules.SliderItem], values: dict[str, float]) -> None:
    """Write into ``values`` what the sliders will show, before they are drawn: a moved slider's value is in the
    session state already, so the totals and the prediction at the top are drawn first and the numbers change
    on screen before the sliders are sent again."""
    for item in items:
        if item.why:
            continue
        if item.key not in st.session_state:
            st.session_state[item.key] = schedules.snapped(min(values.get(m, 0.0) for m in item.members), item)
        for member in item.members:
            values[member] = st.session_state[item.key]


def sliders_section(items: list[schedules.SliderItem], granularity: str, values: dict[str, float]) -> None:
    """One slider per scanned layer, or for channel pruning per coupled group (grouped by block on large models,
    filtered by name); writes ``values``."""
    structured = parse_granularity(granularity).structured
    st.subheader("Per-group sparsity" if structured else "Per-layer sparsity")
    if structured:
        st.caption("Layers that must lose the same channels (a residual sum, a depthwise convolution, an "
                   "attention's heads) share one slider: it moves every layer of the group, and the export removes "
                   "exactly that.")
    search = st.text_input("Filter layers", placeholder="part of a layer name, e.g. block2 or conv")
    shown = [i for i in items if any(search.strip().lower() in m.lower() for m in i.members)]
    if not shown:
        st.warning(f"No layer name contains {search.strip()!r}.")
    blocks = schedules.groups([i.members[0] for i in shown]) if len(items) > schedules.GROUP_ABOVE else {"": None}
    by_first = {i.members[0]: i for i in shown}
    for block, firsts in blocks.items():
        members = [by_first[f] for f in firsts] if firsts is not None else shown
        what = fmt.plural(len(members), "group" if structured else "layer")
        box = st.expander(f"{block} ({what})", expanded=bool(search.strip()) or len(blocks) <= 3) \
            if block else st.container()
        with box:
            cols = st.columns(2)
            for i, item in enumerate(members):
                item_slider(cols[i % 2], item, values)


def item_slider(col, item: schedules.SliderItem, values: dict[str, float]) -> None:  # noqa: ANN001
    """The slider of one layer or coupled group (a two-stop slider for a fixed-sparsity pattern; a note if it stays
    dense); its value goes to every member."""
    if item.why:
        col.caption(f"{item.label}: {item.why}; stays dense")
        return
    if item.options:
        value = col.select_slider(item.label, list(item.options), key=item.key)
    else:
        value = col.slider(item.label, 0.0, item.limit, step=item.step, format="%.3f", key=item.key)
    for member in item.members:
        values[member] = value


def summary_section(box, schedule: Schedule, totals, predictor: Predictor, prediction: Prediction,  # noqa: ANN001
                    metric: str, source: str, resolved: list[str], numbers: bool = True) -> None:
    """The live totals and the predicted metric with its band, drawn in ``box`` at the top of the page (without
    the numbers when the browser counts them above its sliders); a warning when the eval set is too small for the
    predicted difference to mean anything; ``resolved`` says how a loaded schedule was resolved to the model's
    coupled groups."""
    base, predicted = predictor.baseline, prediction.value
    with box:
        if numbers:
            cols = st.columns(4)
            cols[0].metric("global sparsity", f"{totals.global_sparsity:.4f}")
            cols[1].metric("parameters kept", f"{totals.params_kept_fraction:.4f}",
                           help=f"{totals.params_kept:,} weights")
            cols[2].metric("FLOPs kept", f"{totals.flops_kept_fraction:.4f}",
                           help=f"{totals.flops_kept:,} FLOPs per sample")
            cols[3].metric(f"predicted {metric}", f"{predicted:.4f}", f"{predicted - base:+.4f} vs dense {base:.4f}",
                           delta_color=fmt.delta_color(predicted - base, 4,
                                                       "normal" if HIGHER_IS_BETTER[metric] else "inverse"),
                           help=prediction.band_text())
        if not schedule.sparsities:
            st.info("This schedule prunes nothing: every layer is dense. Apply a preset or move a slider.")
        else:
            st.caption(f"{fmt.plural(len(schedule.sparsities), 'layer')} pruned · {source} · predicted {metric} "
                       f"{prediction.band_text()} (the eval set's sampling error only) · prediction model "
                       f"{prediction.reason}")
            if prediction.warning():
                st.warning(prediction.warning())
        if resolved:
            st.info("Resolved to the model's coupled groups (Measure and the export prune exactly this):\n\n"
                    + "\n".join(f"- {note}" for note in resolved))


def measure_section(spec: common.WorkloadSpec, workload, schedule: Schedule, predictor: Predictor,  # noqa: ANN001
                    predicted: float, metric: str, current: dict) -> dict | None:
    """Prune a copy and evaluate it next to the prediction; returns the measurement of this schedule, if any."""
    st.subheader("Measure for real")
    fp = schedules.fingerprint(schedule)
    bn_model = has_batchnorm(workload.model)
    bn = st.checkbox("Recalibrate BatchNorm statistics after pruning", value=bn_model, disabled=not bn_model,
                     help="re-estimate BatchNorm statistics on the eval inputs" if bn_model
                     else "the model has no BatchNorm")
    if st.button("Measure", disabled=not schedule.sparsities, help="prune a copy of the model and evaluate it"):
        try:
            with st.status(f"Pruning {fmt.plural(len(schedule.sparsities), 'layer')} and evaluating on "
                           f"{len(workload.data)} "
                           "samples ...", expanded=False) as status:
                with common.holding(spec):
                    result = measure_schedule(workload, schedule, bn_recalibrate=bn)
                status.update(label="Measured", state="complete")
        except ValueError as exc:
            st.error(f"Cannot measure this schedule: {exc}")
        else:
            current["measured"] = {"fingerprint": fp, "bn": bn, "result": result.to_dict()}
    measured = current.get("measured")
    if measured and measured["fingerprint"] != fp:
        st.caption("The last measurement was of another schedule; press Measure for this one.")
        return None
    if measured:
        show_measurement(measured["result"], predictor, predicted, metric, bn)
        return measured["result"]
    return None


def measured_stage(result: dict, bn: bool) -> str:
    """The stage the headline shows: after BatchNorm recalibration when the box is ticked and it was measured."""
    return "bn_recalibrated" if bn and result.get("bn_recalibrated") else "pruned"


def show_measurement(result: dict, predictor: Predictor, predicted: float, metric: str, bn: bool) -> None:
    """The measured metric at the stage the BatchNorm box asks for, beside the prediction."""
    row = {"metric": metric, "dense": result["dense"][metric], "predicted": predicted,
           "measured (pruned)": result["pruned"][metric]}
    if result.get("bn_recalibrated"):
        row["measured (BatchNorm recalibrated)"] = result["bn_recalibrated"][metric]
    stage = measured_stage(result, bn)
    value = result[stage][metric]
    same = stage == compared_stage(result, predictor.stage)
    cols = st.columns(3)
    cols[0].metric(f"predicted {metric}", f"{predicted:.4f}")
    cols[1].metric(f"measured {metric}", f"{value:.4f}", f"{value - predicted:+.4f} vs predicted" if same else None,
                   delta_color="off", help=f"on {result.get('samples', '?')} samples, "
                   + ("the shrunk model the export writes" if result.get("shrunk") else "the pruned model"))
    cols[2].metric("stage", stage.replace("_", " "), help="right after pruning, or after BatchNorm recalibration "
                   "when the box above is ticked")
    if not same:
        st.caption(f"The prediction stands for the {compared_stage(result, predictor.stage).replace('_', ' ')} "
                   "stage; the table has both.")
    st.dataframe(pd.DataFrame([row]), hide_index=True, width="stretch")


def save_section(spec: common.WorkloadSpec, run_id: int, profile: SensitivityProfile, values: dict[str, float],
                 schedule: Schedule, totals, predictor: Predictor, predicted: float, metric: str,  # noqa: ANN001
                 source: str, measured: dict | None) -> None:
    """Save the schedule by name in the run store, or download it as JSON."""
    st.subheader("Save and compare")
    c1, c2, c3 = st.columns([2, 1, 1])
    name = c1.text_input("Schedule name", source.split(" ")[0] if schedule.sparsities else "")
    if c2.button("Save", disabled=not schedule.sparsities):
        meta = {"run_id": run_id, "method": source, "totals": totals.fractions(),
                "predicted": predictor.prediction(schedule).recorded()}
        if measured:
            meta["measured"] = measured
        try:
            artifact_id, replaced = schedules.save(name, schedules.to_schedule(values, profile, meta), spec)
        except ValueError as exc:
            st.error(f"Cannot save: {exc}")
        else:
            st.success(f"{'Replaced' if replaced else 'Saved'} schedule {name.strip()!r} in the run store (artifact "
                       f"{artifact_id}; `prunescope runs get {artifact_id} --out schedule.json` writes it as a file).")
    c3.download_button("Download schedule JSON", json.dumps(schedule.to_dict(), indent=2), "schedule.json",
                       "application/json", disabled=not schedule.sparsities, on_click="ignore")


def saved_section(spec: common.WorkloadSpec, profile: SensitivityProfile, names: list[str], current: dict,
                  accountant: Accountant) -> dict:
    """Load a saved schedule into the sliders or delete it; returns the saved schedules by name."""
    saved = schedules.list_saved(spec)
    if not saved:
        st.info("Saved schedules appear here, side by side with the current one.")
        st.stop()
    criterion, granularity = profile.meta["criterion"], profile.meta["granularity"]
    c1, c2, c3 = st.columns([3, 1, 1], vertical_alignment="bottom")
    to_load = c1.selectbox("Load a saved schedule into the sliders", list(saved))
    if c3.button("Delete", help="remove this saved schedule from the run store"):
        schedules.delete_saved(to_load, spec)
        st.rerun()
    if c2.button("Load"):
        chosen = saved[to_load]
        if (chosen.criterion, chosen.granularity) != (criterion, granularity):
            st.error(f"{to_load} was made for {chosen.criterion}/{chosen.granularity} pruning; this run is "
                     f"{criterion}/{granularity}. Pick a run with those settings above.")
        else:
            values, notes = schedules.resolved_values(chosen.sparsities, profile, accountant)
            schedules.set_values(current, {n: values.get(n, 0.0) for n in names}, to_load, notes)
            st.rerun()
    return saved


def compare_section(saved: dict, schedule: Schedule, profile: SensitivityProfile, names: list[str],
                    accountant: Accountant, predictor: Predictor, metric: str, measured: dict | None) -> None:
    """The current schedule beside the saved ones: a table, per-layer bars and metric against sparsity."""
    compared = st.multiselect("Compare", list(saved), default=list(saved)[:4])
    chosen = {"current": schedule, **{n: saved[n] for n in compared}}
    table = schedules.compare_table(chosen, profile, names, accountant, predictor, metric,
                                    {"current": measured} if measured else {})
    st.dataframe(schedules.styled_compare(table), hide_index=True, width="stretch")
    left, right = st.columns(2)
    left.plotly_chart(plots.schedule_bars({k: s.sparsities for k, s in chosen.items()}, names), key="compare-bars")
    right.plotly_chart(plots.schedule_tradeoff(table.dropna(subset=["global_sparsity", "predicted"]), metric),
                       key="compare-tradeoff")


def main() -> None:
    """The page: the workload, the run and the metric the prediction comes from, then the live section."""
    spec = common.header("Schedule")
    spec, workload, _ = common.workload_or_stop()
    run_id, profile = pick_run(spec)
    layers = schedules.run_layers(spec, profile)
    metrics = [m for m in metric_choices(profile.labelled, task=profile.task) if m in profile.meta.get("baseline", {})]
    metric = st.selectbox("Predicted metric", metrics,
                          index=metrics.index(profile.default_metric) if profile.default_metric in metrics else 0)
    with st.expander("Calibrate the prediction: measure a few real schedules and fit how the drops combine"):
        calibration_section(spec, workload, run_id, profile, metric)
    predictor = schedules.predictor(run_id, metric)
    accountant = schedules.accountant(spec, profile)
    st.caption(f"{profile.meta['criterion']} criterion · {profile.meta['granularity']} granularity (from the run) · "
               f"prediction from the stored profile, no evaluation of the model ({predictor.reason}) · layers the run "
               "did not scan stay dense")
    live_section(spec, workload, layers, run_id, profile, predictor, accountant, metric)


@st.fragment
def live_section(spec: common.WorkloadSpec, workload, layers: list, run_id: int,  # noqa: ANN001
                 profile: SensitivityProfile, predictor: Predictor, accountant: Accountant, metric: str) -> None:
    """Everything a slider, a preset or a saved schedule changes: a fragment, so moving a slider reruns this part
    alone (not the workload, the run picker nor the calibration above it). Its buttons that change what is above
    (Load, Delete) rerun the whole page."""
    current = schedules.state(run_id, spec)
    by_name = {l.name: l for l in layers}
    names = [n for n in profile.layers if n in by_name]
    granularity = profile.meta["granularity"]
    browser = live.in_browser(granularity)
    summary = None if browser else st.container(border=True)
    presets_section(spec, layers, profile, names, accountant, metric, current)
    values = current["values"]
    items = schedules.slider_items(by_name, names, granularity, accountant)
    if browser:  # the numbers above the sliders, counted in the browser; the server's notes below them
        st.subheader("Per-layer sparsity")
        live.sliders(items, accountant.layers, granularity, predictor, values, current.get("revision", 0),
                     f"live-sliders-{run_id}")
        summary = st.container(border=True)
    else:
        slider_values(items, values)

    source = schedules.source(current)
    schedule = schedules.to_schedule(values, profile, {"source": source})
    totals = accountant.totals(schedule)
    effective, _ = resolve_schedule(schedule, accountant)
    prediction = predictor.prediction(effective)
    predicted = prediction.value
    summary_section(summary, schedule, totals, predictor, prediction, metric, source,
                    current.get("resolved", []) if current.get("preset") == {k: v for k, v in values.items() if v > 0}
                    else [], numbers=not browser)
    if not browser:
        sliders_section(items, granularity, values)
    schedules.keep(current, spec)  # after the numbers: the store's write does not delay them
    if schedule.sparsities:
        st.plotly_chart(plots.schedule_bars({"current": schedule.sparsities}, names), key="current-bars")
    measured = measure_section(spec, workload, schedule, predictor, predicted, metric, current)
    save_section(spec, run_id, profile, values, schedule, totals, predictor, predicted, metric, source, measured)
    saved = saved_section(spec, profile, names, current, accountant)
    compare_section(saved, schedule, profile, names, accountant, predictor, metric, measured)


main()
