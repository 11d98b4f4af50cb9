"""Diagnostics: why a layer is fragile (activation shift downstream, dead neurons, BatchNorm recalibration)."""

import streamlit as st

from analysis.core.criteria import CRITERIA
from analysis.core.granularity import CHOICES as GRANULARITY_CHOICES
from analysis.core.profile import tolerance_table
from analysis.diagnostics.diagnosis import diagnose
from analysis.report import plots
from analysis.sensitivity.config import ScanConfig
from ui import artifacts, common, runs

spec = common.header("Diagnostics")

spec, workload, layers = common.workload_or_stop()
profile = runs.current_profile(spec)
names = [l.name for l in layers]
fragile = tolerance_table(profile)["layer"].iloc[0] if profile is not None else names[0]
settings = profile.meta if profile is not None else {"criterion": "magnitude", "granularity": "unstructured"}

c1, c2, c3, c4 = st.columns(4)
layer = c1.selectbox("Pruned layer", names, index=names.index(fragile) if fragile in names else 0,
                     help="preselected: the most fragile layer of the run on show")
sparsity = c2.select_slider("Sparsity", [round(0.05 * i, 2) for i in range(1, 20)], value=0.5)
criterion = c3.selectbox("Criterion", CRITERIA, index=CRITERIA.index(settings["criterion"]))
granularities = list(GRANULARITY_CHOICES)
granularity = c4.selectbox("Granularity", granularities, index=granularities.index(settings["granularity"])
                           if settings["granularity"] in granularities else 0)
cell = (spec.key, layer, float(sparsity), criterion, granularity)

if st.button("Diagnose", type="primary"):
    try:
        with st.spinner(f"Pruning {layer} to {sparsity:g} and watching every layer after it ..."), \
                common.holding(spec):
            result = diagnose(workload, ScanConfig(criterion, granularity, (float(sparsity),), (layer,)))
    except ValueError as exc:
        st.error(f"Cannot diagnose {layer} at {sparsity:g}: {exc}")
    else:
        artifact_id = artifacts.save(artifacts.DIAGNOSIS, artifacts.diagnosis_name(cell[1:]),
                                     artifacts.diagnosis_payload(spec, cell, result), st.session_state.get(runs.RUN_ID))
        st.session_state["diagnosis"] = {"cell": cell, "result": result, "artifact": artifact_id}

kept = artifacts.listed(artifacts.DIAGNOSIS, spec)
stored = st.session_state.get("diagnosis")


def reopen(a: artifacts.Stored) -> dict:
    diag_cell, diag = artifacts.diagnosis_from(a.payload)
    st.session_state["diagnosis"] = {"cell": (spec.key, *diag_cell), "result": diag, "artifact": a.id}
    return st.session_state["diagnosis"]


if (not stored or stored["cell"][0] != spec.key) and kept:
    stored = reopen(kept[0])
if kept:
    with st.expander(f"Stored diagnoses of this workload ({len(kept)})"):
        by_id = {a.id: a for a in kept}
        c1, c2, c3 = st.columns([3, 1, 1], vertical_alignment="bottom")
        picked = c1.selectbox("Stored diagnosis", list(by_id), format_func=lambda i: f"{by_id[i].created} · "
                              f"{by_id[i].name}", index=list(by_id).index(stored["artifact"])
                              if stored.get("artifact") in by_id else 0)
        if c2.button("Open", help="show this diagnosis again (nothing is recomputed)"):
            stored = reopen(by_id[picked])
        if c3.button("Delete", help="remove this diagnosis from the run store"):
            artifacts.delete(picked)
            if stored.get("artifact") == picked:
                st.session_state.pop("diagnosis", None)
            st.rerun()
if not stored or stored["cell"][0] != spec.key:
    st.info("Pick a layer and a sparsity and press Diagnose (a second or two on the sample).")
    st.stop()
diag = stored["result"]
_, d_layer, d_sparsity, d_criterion, d_granularity = stored["cell"]
if stored["cell"] != cell:
    st.caption("Showing the last diagnosis; press Diagnose for the settings above.")
st.markdown(f"**{d_layer}** pruned to **{d_sparsity:g}** ({d_criterion}, {d_granularity})")



@st.fragment
def shift_section(shift) -> None:  # noqa: ANN001 - the diagnosis's shift table
    """The downstream activation shift by the statistic picked: a fragment, so a new pick redraws this chart only."""
    st.subheader("Activation shift downstream")
    stat = st.selectbox("Statistic", ["rel_l2", "cosine", "cosine_worst_decile", "mean_shift", "std_shift",
                                      "hellinger"],
                        help="rel_l2: relative L2 distance to the dense output; cosine: mean similarity per sample; "
                             "hellinger: distance of per-channel Gaussian fits (0 = unchanged, 1 = disjoint)")
    st.plotly_chart(plots.activation_shift_figure(shift, stat), key="shift")


shift_section(diag.shift)

st.subheader("Dead neurons")
dead = diag.dead
cols = st.columns(2)
for col, kind in zip(cols, ("structural", "functional")):
    col.metric(f"{kind} dead units created", int(dead.loc[dead["kind"] == kind, "created"].sum()))
st.plotly_chart(plots.dead_neurons_figure(dead, d_layer, d_sparsity), key="dead")
st.dataframe(dead[["observed", "kind", "units", "dead_before", "dead_after", "created", "indices_created"]],
             hide_index=True, width="stretch")

st.subheader("BatchNorm recalibration")
recal = diag.summary.get("recalibration", {})
if diag.recalibration.empty:
    st.info(recal.get("reason", "BatchNorm recalibration does not apply to this model."))
else:
    row = diag.recalibration.iloc[0]
    cols = st.columns(3)
    cols[0].metric(f"dense {row['metric']}", f"{row['dense']:.4f}")
    cols[1].metric("pruned", f"{row['pruned']:.4f}", f"{row['pruned'] - row['dense']:+.4f}")
    cols[2].metric("pruned + recalibrated", f"{row['recalibrated']:.4f}", f"{row['recalibrated'] - row['pruned']:+.4f}")
    st.plotly_chart(plots.recalibration_figure(diag.recalibration), key="recal")
    st.caption(recal.get("reason", ""))
