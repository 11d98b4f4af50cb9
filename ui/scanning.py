"""Run a sensitivity scan on a page: a progress bar with time left, the heatmap growing layer by layer.

A finished scan is saved as a run and reopened, never recomputed, when the same config is asked for again.
A scan interrupted by the Cancel button (Streamlit stops the script at its next call) leaves its finished
layers in ``st.session_state['partial_scans']``: the next Run resumes from them, and ``save_cancelled``
keeps them on disk as a cancelled run.
"""

from __future__ import annotations

import streamlit as st

from analysis import engine, plots
from analysis.engine import LayerResult, ScanConfig
from analysis.sensitivity import Progress, build_profile, scan
from analysis.sources import Workload
from ui import runs
from ui.common import WorkloadSpec

PARTIAL = "partial_scans"


def _partial(key: str) -> dict | None:
    return st.session_state.setdefault(PARTIAL, {}).get(key)


def run_scan(spec: WorkloadSpec, workload: Workload, config: ScanConfig, metric: str | None = None) -> tuple[str, bool]:
    """Scan (or reopen) and return ``(run_id, reopened)``; draws progress and the live heatmap meanwhile."""
    key = runs.config_key(spec.key, config)
    existing = runs.find_complete(spec.key, key)
    if existing:
        return existing, True
    state = _partial(key)
    if state is None:
        with st.spinner("Preparing: dense outputs and importance scores ..."):
            ctx = engine.prepare(workload, config)
        state = st.session_state[PARTIAL][key] = {"ctx": ctx, "done": {}, "workload": spec.key}
    ctx, done = state["ctx"], state["done"]
    total = len(ctx.layers)
    bar = st.progress(len(done) / total, text=f"Scanning {total} layers x {len(ctx.config.sparsities)} sparsities")
    live = st.empty()

    def on_result(result: LayerResult) -> None:
        done[result.layer] = result

    def on_progress(p: Progress) -> None:
        eta = "" if p.eta is None else f" · about {p.eta:.0f} s left"
        bar.progress(p.done / p.total, text=f"{p.done}/{p.total} layers · last: {p.layer}{eta}")
        partial = build_profile(ctx, workload, done)
        live.plotly_chart(plots.sensitivity_heatmap(partial, metric), key=f"live-heatmap-{p.done}")

    profile = scan(workload, config, done=dict(done), on_result=on_result, progress=on_progress, context=ctx)
    bar.empty()
    live.empty()
    run_id = runs.save_run(profile, spec.key, key)
    st.session_state[PARTIAL].pop(key, None)
    return run_id, False


def save_cancelled(spec: WorkloadSpec, workload: Workload) -> list[str]:
    """Keep the finished layers of interrupted scans as cancelled runs; return their ids."""
    saved = []
    for key, state in list(st.session_state.get(PARTIAL, {}).items()):
        if state["workload"] == spec.key and state["done"] and not state.get("saved"):
            profile = build_profile(state["ctx"], workload, state["done"])
            saved.append(runs.save_run(profile, spec.key, key))
            state["saved"] = True
    return saved
