"""Strategy lab: pruning strategies compared on this model, data and target: the drop-and-recovery table, measured."""

import json

import pandas as pd
import streamlit as st

from analysis.core.metric_table import default_metric, drop_scale, drop_text
from analysis.lab.config import LabConfig
from analysis.lab.literature import FAMILIES, SOURCE, TYPICAL
from analysis.lab.result import ROWS
from analysis.lab.strategies import STRATEGIES, STRATEGY_CLASSES
from analysis.report.html import build_report
from analysis.report.lab import recovery_figure
from analysis.schedule.allocate import METHODS, TARGET_KINDS, parse_target
from analysis.schedule.totals import Accountant
from ui import common, lab

spec = common.header("Strategy lab")
spec, workload, layers = common.workload_or_stop()
defaults = LabConfig()
scale, unit = drop_scale(default_metric(workload.data.labelled))

with st.sidebar:
    st.header("Lab settings")
    source, source_error = None, None
    try:
        source = lab.train_source(spec)
    except ValueError as exc:
        source_error = str(exc)
    one_shot = [name for name, cls in STRATEGY_CLASSES.items() if not cls.trains]
    chosen = st.multiselect("Strategies", list(STRATEGIES), default=list(STRATEGIES) if source else one_shot,
                            format_func=lab.strategy_label, help="each one prunes to the target, then recovers with "
                                                                 "its mask fixed")
    kind = st.radio("Target", TARGET_KINDS, horizontal=True,
                    help="sparsity: fraction of prunable weights removed; params/flops: how many to keep")
    value = st.text_input("Target value", "0.8" if kind == "sparsity" else "20%",
                          help="a sparsity in [0, 1); to keep: a count (1.5M) or a percentage (30%)")
    allocation = st.selectbox("Allocation", METHODS, index=METHODS.index(defaults.allocation),
                              help="how the target is spread over the layers (sensitivity: from a one-shot scan)")
    epochs = st.number_input("Recovery epochs (mask fixed)", 0.0, 1000.0, defaults.epochs, step=1.0,
                             help="the same budget for every strategy, so their curves compare")
    with st.expander("Budgets and training"):
        evals = st.number_input("Curve points per epoch", 1, 100, defaults.evals_per_epoch)
        rounds = st.number_input("IMP rounds", 1, 20, defaults.rounds)
        round_epochs = st.number_input("IMP: epochs between rounds", 0.0, 100.0, defaults.round_epochs, step=0.5)
        rewind_epochs = st.number_input("IMP + rewinding: epochs of re-training for the rewinding point", 0.0,
                                        100.0, defaults.rewind_epochs, step=0.5,
                                        help="the CLI's --rewind-checkpoint takes a checkpoint of your training")
        gradual_epochs = st.number_input("Gradual: epochs of pruning", 0.0, 100.0, defaults.gradual_epochs, step=0.5)
        gradual_steps = st.number_input("Gradual: pruning steps", 1, 100, defaults.gradual_steps)
        lr = st.number_input("Learning rate", 1e-5, 10.0, defaults.lr, format="%.4f")
        tolerance = st.number_input(f"Recovered within ({unit})", 0.0, 100.0, defaults.tolerance * scale, step=0.5)
        export = st.checkbox("Export each model to ONNX (size and latency)", value=defaults.export)

config, config_error = None, source_error
try:
    totals = Accountant(layers)
    target = parse_target(kind, value, totals.flops if kind == "flops" else totals.weights)
    config = LabConfig(target, tuple(chosen), allocation, epochs=float(epochs), evals_per_epoch=int(evals),
                       tolerance=float(tolerance) / scale, rounds=int(rounds), round_epochs=float(round_epochs),
                       rewind_epochs=float(rewind_epochs), gradual_epochs=float(gradual_epochs),
                       gradual_steps=int(gradual_steps), lr=float(lr), export=export).validated()
except ValueError as exc:
    config_error = config_error or str(exc)
if not chosen:
    config, config_error = None, "pick at least one strategy"

run_col, cancel_col = st.columns([1, 4])
run = run_col.button("Run lab", type="primary", disabled=config is None)
cancel = cancel_col.button("Cancel", help="stop a running lab; its finished units are kept and Run resumes it")
if config_error:
    st.error(f"Lab settings: {config_error}")
if cancel:
    stopped = lab.stop()
    if stopped:
        lab_id, done, total = stopped
        st.warning(f"Lab cancelled: lab {lab_id} keeps its {done} of {total} finished units. Run resumes it.")
        st.session_state[lab.SHOWN] = lab_id
    else:
        st.warning("No lab was running.")
if run and config is not None:
    try:
        stored = lab.run(spec, workload, lab.load_train(spec, workload, source), config)
    except ValueError as exc:
        st.error(f"The lab cannot run: {' '.join(str(exc).split())}")
    else:
        st.session_state[lab.SHOWN] = stored.lab_id

known = lab.listed(spec)
if known.empty:
    st.info("No lab of this workload yet: pick the strategies, the target and the training data in the sidebar and "
            "press Run lab. The samples finish every strategy in a few minutes.")
    st.stop()
labels = {int(r.id): f"lab {r.id} · {r.created} · {r.name} · {r.units_done}/{r.units} units"
          for r in known.itertuples()}
ids = list(labels)
shown = st.session_state.get(lab.SHOWN)
pick_col, delete_col = st.columns([5, 1], vertical_alignment="bottom")
lab_id = pick_col.selectbox("Lab on show (labs of this model and data, also `prunescope lab` ones)", ids,
                            index=ids.index(shown) if shown in ids else 0, format_func=labels.get)
st.session_state[lab.SHOWN] = lab_id
confirm = delete_col.popover("Delete this lab")
if confirm.button(f"Delete lab {lab_id} from the run store", type="primary"):
    lab.delete(lab_id)
    st.session_state.pop(lab.SHOWN, None)
    st.toast(f"Deleted lab {lab_id}.")
    st.rerun()

result = lab.reopen(lab_id)
if not result.complete:
    st.warning(f"This lab is unfinished: {len(result.units)} of its {len(result.meta['units'])} units are done. Run "
               "the same settings again to resume it.")
if not result.strategies:
    st.stop()
c = result.config
st.caption(f"Dense {result.metric}: **{result.dense:.4f}** · target {c.target} · {c.allocation} allocation · "
           f"{c.epochs:g} recovery epochs on {result.meta.get('train') or 'no training data'} · recovered = within "
           f"{drop_text(c.tolerance * scale, unit)} of dense")

table_tab, curve_tab, literature_tab, files_tab = st.tabs(["Table", "Recovery curves", "Literature", "Downloads"])
with table_tab:
    beside = st.toggle("Typical ranges of the literature in each cell", value=True)
    st.dataframe(result.table(literature=beside), width="stretch")
    st.caption(f"Typical ranges: {SOURCE}; within/below/above where both are numbers. The article has no column "
               "for N:M sparsity.")
    for s in result.summary().to_dict(orient="records"):
        for note in s["notes"]:
            st.caption(f"{s['title']}: {note}")
with curve_tab:
    st.plotly_chart(recovery_figure(result), key="recovery")
with literature_tab:
    article = pd.DataFrame({FAMILIES[f]: {ROWS[row]: cells[f].text for row, cells in TYPICAL.items()}
                            for f in FAMILIES})
    st.dataframe(article, width="stretch")
    placed = result.cells().dropna(subset=["place"])
    st.dataframe(placed[["label", "title", "text", "typical", "place"]], hide_index=True, width="stretch")
with files_tab:
    c1, c2, c3 = st.columns(3)
    c1.download_button("Download lab.csv", result.curves().to_csv(index=False), "lab.csv", "text/csv",
                       on_click="ignore")
    c2.download_button("Download lab.json", json.dumps(result.to_dict(), indent=1, default=str), "lab.json",
                       "application/json", on_click="ignore")
    page = build_report(lab.report_profile(result), lab=result, title=f"Strategy lab: {spec.label}")
    c3.download_button("Download HTML report", page, "lab-report.html", "text/html", on_click="ignore")
