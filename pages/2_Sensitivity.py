"""Sensitivity: prune each layer alone at each sparsity and see what it costs; reopen and compare runs.

The tabs' own controls (the block views' sparsity, the layers drawn, the tolerated drop, the run overlaid) are
fragments: changing one redraws its tab, not the page."""

import json

import streamlit as st

from analysis.core.criteria import CALIBRATED, CRITERIA
from analysis.core.granularity import CHOICES as GRANULARITY_CHOICES
from analysis.core.granularity import check_sparsity
from analysis.core.metric_table import drop_scale, metric_choices
from analysis.core.profile import tolerance_table
from analysis.report import plots
from analysis.sensitivity.backends import cluster_backend
from analysis.sensitivity.config import DEFAULT_SPARSITIES, SEARCH_MODES, ScanConfig
from analysis.workload.onnx import OnnxModel
from ui import common, runs, scanning
from ui import format as fmt
from ui.scanning import CONFIDENCE_LEVELS, SCAN_MODES, adaptive_settings


@st.fragment
def blocks_section(profile, blocks, metric: str) -> None:  # noqa: ANN001
    """The block views at the sparsity picked: a fragment, so a new pick redraws these charts only."""
    if blocks.empty:
        st.info("No layer of this model sits in a numbered block (such as a transformer's layers.N): the block "
                "views apply to transformers and staged CNNs.")
        return
    measured = sorted(s for s in set(blocks["sparsity"]) if s > 0) or [0.0]
    at = st.select_slider("Sparsity", measured, value=measured[len(measured) // 2], format_func=lambda s: f"{s:g}")
    st.plotly_chart(plots.block_heatmap(profile, at, metric), key="block_heatmap")
    st.plotly_chart(plots.block_curves(profile, metric), key="block_curves")
    st.caption("Rows are the blocks by depth, columns the projections (q, k, v, o; the MLP's gate, up and "
               "down); each cell is that layer pruned alone.")


@st.fragment
def curves_section(profile, metric: str) -> None:  # noqa: ANN001
    """The curves of the layers picked: a fragment, so picking layers redraws this chart only."""
    picked = st.multiselect("Layers to draw (none: all)", profile.layers, key="curve_layers")
    st.plotly_chart(plots.sensitivity_curves(profile, metric, picked or None), key="curves")


@st.fragment
def ranking_section(profile, metric: str, confidence: float) -> None:  # noqa: ANN001
    """The tolerance ranking at the drop typed: a fragment, so a new limit redraws this table only."""
    scale, unit = drop_scale(metric)
    max_drop = st.number_input(
        f"Largest tolerated {fmt.change_word(metric)} ({unit})", min_value=0.0, value=1.0 if scale > 1 else 0.01,
        step=0.5 if scale > 1 else 0.01)
    st.dataframe(tolerance_table(profile, max_drop / scale, metric), hide_index=True, width="stretch")
    st.caption(f"A layer's tolerance is the largest measured sparsity whose drop stays within the limit "
               f"(a drop that recovers at a higher sparsity does not count). Most fragile first. "
               f"max_sparsity_lo is the largest sparsity whose drop is within the limit at {confidence:.0%} "
               f"confidence, max_sparsity_hi the last before a drop beyond it at that confidence: this eval set's "
               f"sampling error puts the answer between the two.")


@st.fragment
def overlay_section(profile, run_id: int, ids: list[int], labels: dict, metric: str,  # noqa: ANN001
                    confidence: float) -> None:
    """The run on show overlaid with another: a fragment, so picking the other run redraws this tab only."""
    others = [i for i in ids if i != run_id]
    if not others:
        st.info("Run a second scan (e.g. another criterion) to overlay the two.")
        return
    other_id = st.selectbox("Overlay with", others, format_func=labels.get)
    other = runs.load_run(other_id).with_confidence(confidence)
    try:
        st.plotly_chart(plots.profile_overlay(profile, other, metric), key="overlay")
    except ValueError as exc:
        st.error(str(exc))
    scanning.show_side_by_side(profile, other)


spec = common.header("Sensitivity")
spec, workload, layers = common.workload_or_stop()

with st.sidebar:
    st.header("Scan settings")
    mode = st.radio("Scan mode", list(SCAN_MODES), format_func=SCAN_MODES.get,
                    help="full grid measures every cell; stop after collapse stops a layer once its metric has "
                         "fallen near chance and fills the rest (marked); bisection searches each layer's largest "
                         "sparsity within a tolerated drop; sequential reads the eval set shard by shard and stops "
                         "sampling a cell once its drop is settled within or beyond the tolerance (marked), alone "
                         "or inside the bisection")
    onnx_model = isinstance(workload.model, OnnxModel)  # run by ONNX Runtime: no gradients nor input norms
    criterion = st.selectbox("Criterion", [c for c in CRITERIA if not (onnx_model and c in CALIBRATED)],
                             help="how the weights to remove are chosen" + (
                                 "; taylor and activation need a PyTorch model" if onnx_model else ""))
    granularity = st.selectbox("Granularity", GRANULARITY_CHOICES,
                               help="single weights, whole output channels, 2 of every 4 weights, or (transformers) "
                                    "whole attention heads or MLP neurons of each block")
    grid_text = st.text_input("Sparsities", ", ".join(f"{s:g}" for s in DEFAULT_SPARSITIES),
                              disabled=mode in SEARCH_MODES,
                              help="fractions of each layer to remove, comma separated (0 is the dense baseline); "
                                   "bisection searches its own grid (its resolution)")
    chosen = st.multiselect("Layers (none picked: all)", [l.name for l in layers])
    left_out = common.left_out_layers(spec)
    embeddings = bool(left_out) and st.checkbox(
        f"Include embeddings and the output head ({', '.join(left_out)})",
        help="listed but left out by default: pruning an embedding table changes every token's representation")
    adaptive = adaptive_settings(mode, workload.data.y is not None, workload.task)
    confidence = st.select_slider("Confidence level", CONFIDENCE_LEVELS, value=0.95, format_func="{:.0%}".format,
                                  help="the level of every cell's interval (heatmap marks, curve bands, the "
                                       "tolerance ranking's bounds, the table's *_lo/*_hi); a sequential scan "
                                       "decides at this level. Intervals cover the eval set's sampling error only")
    cluster = cluster_backend()
    on_cluster = cluster is not None and st.checkbox(f"Run on the Ray cluster at {cluster.address}",
                                                     help="PRUNESCOPE_RAY_ADDRESS or RAY_ADDRESS names it; the "
                                                          "numbers are those of a local scan")

config, config_error = None, None
try:
    sparsities = tuple(check_sparsity(p.strip()) for p in grid_text.split(",") if p.strip())
    config = ScanConfig(criterion, granularity, sparsities if mode not in SEARCH_MODES else DEFAULT_SPARSITIES,
                        tuple(chosen) or None, engine=common.best_engine(), adaptive=mode, confidence=confidence,
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
                  help="its finished layers and the schedules and other artifacts made from it go"):
    runs.delete(run_id)
    st.toast(f"Deleted run {run_id}.")
    st.rerun()
if not profile.meta.get("complete", True):
    st.warning(f"This run is unfinished: {len(profile.layers)} of its "
               f"{fmt.plural(len(profile.meta.get('layers', [])), 'layer')} "
               "were measured. Run the same settings again to resume it.")

profile = profile.with_confidence(confidence)
metrics = list(metric_choices(profile.labelled, task=profile.task))
metric = st.selectbox("Metric", metrics, index=metrics.index(profile.default_metric),
                      help="accuracy needs labels; agreement and KL compare with the dense model; a causal LM's "
                           "perplexity and an encoder's embedding cosine too")
base = profile.baseline(metric)
st.caption(f"Dense {metric}: **{base:.4f}** on {profile.meta['samples']} samples · criterion "
           f"{profile.meta['criterion']} · granularity {profile.meta['granularity']}")
shown_mode = scanning.show_adaptive(profile)

blocks = plots.block_table(profile, metric)
heat_tab, block_tab, curve_tab, rank_tab, table_tab, compare_tab = st.tabs(
    ["Heatmap", "Blocks", "Curves", "Tolerance ranking", "Table", "Compare two runs"])
with heat_tab:
    st.plotly_chart(plots.sensitivity_heatmap(profile, metric), key="heatmap")
    st.caption(f"A dot marks a cell whose drop is not distinguishable from zero: its {confidence:.0%} interval holds "
               "0 on this eval set. Hover a cell for its interval and the samples it used.")
with block_tab:
    blocks_section(profile, blocks, metric)
with curve_tab:
    curves_section(profile, metric)
with rank_tab:
    if shown_mode in SEARCH_MODES:
        scanning.show_bisection(profile)
    ranking_section(profile, metric, confidence)
with table_tab:
    st.dataframe(profile.drop(metric), hide_index=True, width="stretch")
    c1, c2 = st.columns(2)
    c1.download_button("Download CSV", profile.table.to_csv(index=False), "sensitivity.csv", "text/csv",
                        on_click="ignore")
    c2.download_button("Download JSON", json.dumps({"meta": profile.meta, "rows": profile.table.to_dict("records")},
                                                   default=str, indent=1), "sensitivity.json", "application/json",
                        on_click="ignore")
with compare_tab:
    overlay_section(profile, run_id, ids, labels, metric, confidence)
