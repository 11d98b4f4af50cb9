"""Prunescope's dashboard: the page list, and the home page that opens on the bundled sample at once.

Run with ``streamlit run app.py`` (or ``make run``). The pages in ``pages/`` walk the story: model and data,
sensitivity, diagnostics, schedule, export, and the strategy lab. All numbers come from ``analysis/``; this file
only draws them.
"""

import streamlit as st

from analysis.report import plots
from analysis.sensitivity.config import ScanConfig
from ui import common, runs, scanning
from ui import format as fmt


def home() -> None:
    """The sample's layers at once, and the heatmap of a quick scan (about two seconds on the sample)."""
    spec = common.header("Prunescope")
    st.markdown("How much accuracy does each layer lose when it is pruned? Pick a model and data, scan every layer "
                "at every sparsity, read which layers are fragile, tune a per-layer schedule and export the pruned "
                "model to ONNX.")
    spec, workload, layers = common.workload_or_stop()

    table = common.summary_table(layers)
    cols = st.columns(4)
    cols[0].metric("prunable layers", len(layers))
    cols[1].metric("parameters in them", f"{int(table['params'].sum()):,}")
    cols[2].metric("FLOPs per sample", f"{int(table['flops'].sum()):,}")
    cols[3].metric("eval samples", f"{len(workload.data):,}" + ("" if workload.data.labelled else " (no labels)"))
    st.dataframe(table, hide_index=True, width="stretch")

    st.subheader("Sensitivity at a glance")
    profile = runs.current_profile(spec)
    if profile is None:
        quick = spec.model.startswith("sample:") or st.button("Quick scan (magnitude, unstructured)", type="primary")
        if quick:
            run_id, _ = scanning.run_scan(spec, workload, ScanConfig(engine=common.best_engine()))
            st.session_state[runs.RUN_ID] = run_id
            profile = runs.load_run(run_id)
    if profile is not None:
        st.plotly_chart(plots.sensitivity_heatmap(profile), key="home-heatmap")
        st.caption(f"Run {profile.meta.get('run_id', '')} of the run store: {profile.meta['criterion']} criterion, "
                   f"{profile.meta['granularity']} pruning, {fmt.plural(len(profile.layers), 'layer')}. Details and "
                   "other settings on the Sensitivity page.")

    st.divider()
    for path, label, icon in [
        ("pages/1_Model_and_data.py", "Model & data: pick or upload a model and an eval set", "dataset"),
        ("pages/2_Sensitivity.py", "Sensitivity: scan, heatmap, curves, tolerance ranking", "thermostat"),
        ("pages/3_Diagnostics.py", "Diagnostics: why a layer is fragile", "biotech"),
        ("pages/4_Schedule.py", "Schedule: per-layer sliders with predicted accuracy", "tune"),
        ("pages/5_Export.py", "Export: a pruned, verified ONNX model", "deployed_code"),
        ("pages/6_Strategy_lab.py", "Strategy lab: pruning strategies compared, drop and recovery", "science"),
    ]:
        st.page_link(path, label=label, icon=f":material/{icon}:")


# Before the navigation: a page's :material/ icon as favicon would be fetched from an external font host.
st.set_page_config(page_icon=fmt.FAVICON)
st.navigation([
    st.Page(home, title="Home", icon=":material/home:", default=True),
    st.Page("pages/1_Model_and_data.py", title="Model & data", icon=":material/dataset:", url_path="Model_and_data"),
    st.Page("pages/2_Sensitivity.py", title="Sensitivity", icon=":material/thermostat:", url_path="Sensitivity"),
    st.Page("pages/3_Diagnostics.py", title="Diagnostics", icon=":material/biotech:", url_path="Diagnostics"),
    st.Page("pages/4_Schedule.py", title="Schedule", icon=":material/tune:", url_path="Schedule"),
    st.Page("pages/5_Export.py", title="Export", icon=":material/deployed_code:", url_path="Export"),
    st.Page("pages/6_Strategy_lab.py", title="Strategy lab", icon=":material/science:", url_path="Strategy_lab"),
]).run()
