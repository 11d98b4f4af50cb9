"""Sensitivity: prune each layer alone at each sparsity and see what it costs; reopen and compare runs."""

import json

import streamlit as st

from analysis.core.criteria import CRITERIA
from analysis.core.granularity import CHOICES as GRANULARITY_CHOICES
from analysis.core.granularity import check_sparsity
from analysis.core.metric_table import drop_scale, metric_choices
from analysis.core.profile import tolerance_table
from analysis.report import plots
from analysis.sensitivity.backends import cluster_backend
from analysis.sensitivity.config import DEFAULT_SPARSITIES, ScanConfig
from ui import common, runs, scanning
from ui.scanning import SCAN_MODES, adaptive_settings

spec = common.header("Sensitivity")
spec, workload, layers = common.workload_or_stop()

with st.sidebar:
    st.header("Scan settings")
    mode = st.radio("Scan mode", list(SCAN_MODES), format_func=SCAN_MODES.get,
                    help="full grid measures every cell; stop after collapse stops a layer once its metric has "
                         "fallen near chance and fills the rest (marked); bisection searches each layer's largest "
                         "sparsity within a tolerated drop")
    criterion = st.selectbox("Criterion", CRITERIA, help="how the weights to remove are chosen")
    granularity = st.selectbox("Granularity", GRANULARITY_CHOICES,
                               help="single weights, whole output channels, 2 of every 4 weights, or (transformers) "
                                    "whole attention heads or MLP neurons of each block")
    grid_text = st.text_input("Sparsities", ", ".join(f"{s:g}" for s in DEFAULT_SPARSITIES), disabled=mode == "bisect",
                              help="fractions of each layer to remove, comma separated (0 is the dense baseline); "
                                   "bisection searches its own grid (its resolution)")
    chosen = st.multiselect("Layers (none picked: all)", [l.name for l in layers])
    left_out = common.left_out_layers(spec)
    embeddings = bool(left_out) and st.checkbox(
        f"Include embeddings and the output head ({', '.join(left_out)})",
        help="listed but left out by default: pruning an embedding table changes every token's representation")
    adaptive = adaptive_settings(mode, workload.data.y is not None, workload.task)
    cluster = cluster_backend()
    on_cluster = cluster is not None and st.checkbox(f"Run on the Ray cluster at {cluster.address}",
                                                     help="PRUNESCOPE_RAY_ADDRESS or RAY_ADDRESS names it; the "
                                                          "numbers are those of a local scan")

config, config_error = None, None
try:
    sparsities = tuple(check_sparsity(p.strip()) for p in grid_text.split(",") if p.strip())
    config = ScanConfig(criterion, granularity, sparsities if mode != "bisect" else DEFAULT_SPARSITIES,
                        tuple(chosen) or None, engine=common.best_engine(), adaptive=mode,
                        include_embeddings=embeddings, **adaptive).validated()
except ValueError as exc:
    config_error = str(exc)

run_col, cancel_col = st.columns([1, 4])
run = run_col.button("Run scan", type="primary", disabled=config is None)
cancel = cancel_col.button("Cancel", help="stop a running scan; its finished layers are kept and Run resumes")
if config_error:
    st.error(f"Scan settings: {config_error}")
if cancel:
    stopped = scanning.stop(spec)
    if stopped:
        run_id, done, total = stopped
        st.warning(f"Scan cancelled: run {run_id} keeps its {done} of {total} finished layers. Run resumes it.")
        st.session_state[runs.RUN_ID] = run_id
    else:
        st.warning("No scan was running.")
if run and config is not None:
    try:
        run_id, reopened = scanning.run_scan(spec, workload, config, backend=cluster if on_cluster else None)
    except ValueError as exc:
        st.error(f"The scan cannot run: {exc}")
    else:
        st.session_state[runs.RUN_ID] = run_id
        if reopened:
            st.info(f"This exact scan was run before (run {run_id}): reopened it without recomputing.")

known = runs.list_runs(spec)
profile = runs.current_profile(spec)
if profile is None:
    st.info("No scan of this workload yet: choose the settings in the sidebar and press Run scan.")
    st.stop()

labels = {r.run_id: r.label for r in known}
ids = list(labels)
pick_col, delete_col = st.columns([5, 1], vertical_alignment="bottom")
run_id = pick_col.selectbox("Run on show (earlier runs, also `prunescope scan` runs of this model and data, reopen "
                            "without recomputing)", ids, index=ids.index(profile.meta["run_id"]),
                            format_func=labels.get)
if run_id != profile.meta["run_id"]:
    st.session_state[runs.RUN_ID] = run_id
    profile = runs.load_run(run_id)
confirm = delete_col.popover("Delete this run")
if confirm.button(f"Delete run {run_id} from the run store", type="primary",
                  help="its finished layers go; schedules and other artifacts made from it stay"):
    runs.delete(run_id)
    st.toast(f"Deleted run {run_id}.")
    st.rerun()
if not profile.meta.get("complete", True):
    st.warning(f"This run is unfinished: {len(profile.layers)} of its {len(profile.meta.get('layers', []))} layers "
               "were measured. Run the same settings again to resume it.")

metrics = list(metric_choices(profile.labelled, task=profile.task))
metric = st.selectbox("Metric", metrics, help="accuracy needs labels; agreement and KL compare with the dense model; "
                                              "a causal LM's perplexity and an encoder's embedding cosine too")
base = profile.baseline(metric)
st.caption(f"Dense {metric}: **{base:.4f}** on {profile.meta['samples']} samples · criterion "
           f"{profile.meta['criterion']} · granularity {profile.meta['granularity']}")
shown_mode = scanning.show_adaptive(profile)

blocks = plots.block_table(profile, metric)
heat_tab, block_tab, curve_tab, rank_tab, table_tab, compare_tab = st.tabs(
    ["Heatmap", "Blocks", "Curves", "Tolerance ranking", "Table", "Compare two runs"])
with heat_tab:
    st.plotly_chart(plots.sensitivity_heatmap(profile, metric), key="heatmap")
with block_tab:
    if blocks.empty:
        st.info("No layer of this model sits in a numbered block (such as a transformer's layers.N): the block "
                "views apply to transformers and staged CNNs.")
    else:
        measured = sorted(s for s in set(blocks["sparsity"]) if s > 0) or [0.0]
        at = st.select_slider("Sparsity", measured, value=measured[len(measured) // 2], format_func=lambda s: f"{s:g}")
        st.plotly_chart(plots.block_heatmap(profile, at, metric), key="block_heatmap")
        st.plotly_chart(plots.block_curves(profile, metric), key="block_curves")
        st.caption("Rows are the blocks by depth, columns the projections (q, k, v, o; the MLP's gate, up and "
                   "down); each cell is that layer pruned alone.")
with curve_tab:
    picked = st.multiselect("Layers to draw (none: all)", profile.layers, key="curve_layers")
    st.plotly_chart(plots.sensitivity_curves(profile, metric, picked or None), key="curves")
with rank_tab:
    if shown_mode == "bisect":
        scanning.show_bisection(profile)
    scale, unit = drop_scale(metric)
    max_drop = st.number_input(f"Largest tolerated drop ({unit})", min_value=0.0, value=1.0 if scale > 1 else 0.01,
                               step=0.5 if scale > 1 else 0.01)
    st.dataframe(tolerance_table(profile, max_drop / scale, metric), hide_index=True, width="stretch")
    st.caption("A layer's tolerance is the largest measured sparsity whose drop stays within the limit "
               "(a drop that recovers at a higher sparsity does not count). Most fragile first.")
with table_tab:
    st.dataframe(profile.drop(metric), hide_index=True, width="stretch")
    c1, c2 = st.columns(2)
    c1.download_button("Download CSV", profile.table.to_csv(index=False), "sensitivity.csv", "text/csv",
                        on_click="ignore")
    c2.download_button("Download JSON", json.dumps({"meta": profile.meta, "rows": profile.table.to_dict("records")},
                                                   default=str, indent=1), "sensitivity.json", "application/json",
                        on_click="ignore")
with compare_tab:
    others = [i for i in ids if i != run_id]
    if not others:
        st.info("Run a second scan (e.g. another criterion) to overlay the two.")
    else:
        other_id = st.selectbox("Overlay with", others, format_func=labels.get)
        other = runs.load_run(other_id)
        try:
            st.plotly_chart(plots.profile_overlay(profile, other, metric), key="overlay")
        except ValueError as exc:
            st.error(str(exc))
