"""Run a sensitivity scan on a page as a run of the run store: progress with time left, the heatmap growing.

The scan takes the path ``prunescope scan`` takes: the store finds the run of this exact scan (same weights,
data and settings) and resumes it, each finished layer is committed the moment it finishes, and the finished
profile closes the run. So a reload, a closed tab, a server restart or the Cancel button (Streamlit stops the
script at its next call) loses at most the layer in flight, and the next Run resumes. A complete run of the same
scan is reopened, never recomputed.

The cached model is shared by all sessions and the scan prunes it in place, so the scan holds the model's lock.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import streamlit as st

from analysis.core.metric_table import CLASSIFICATION, drop_scale, metric_choices
from analysis.core.profile import SensitivityProfile
from analysis.report import plots
from analysis.sensitivity import adaptive
from analysis.sensitivity.backends import Backend
from analysis.sensitivity.config import ScanConfig
from analysis.sensitivity.driver import Progress
from analysis.store.runs import RunStore, ScanRun
from analysis.store.scanning import scan_into_store as store_scan
from analysis.workload.workload import Workload
from ui import common, runs
from ui.common import WorkloadSpec

SCANNING = "scanning"  # session key: the run id of the scan this session has in flight
SCAN_MODES = {"off": "full grid", "collapse": "stop after collapse", "bisect": "bisection"}


def scan_into_store(store: RunStore, workload: Workload, config: ScanConfig, lock: threading.RLock,
                    on_open: Callable[[int, ScanRun | None, int], None] | None = None,
                    on_progress: Callable[[Progress, SensitivityProfile], None] | None = None,
                    backend: Backend | None = None) -> tuple[int, bool]:
    """Scan into ``store`` holding ``lock`` (here, or on ``backend``: a Ray cluster) by the path ``prunescope scan``
    takes (``analysis.store.scanning``); a complete run of this scan is reopened, not recomputed. Returns
    ``(run id, reopened)``. No Streamlit here: the page's ``run_scan`` draws through the callbacks, and tests call
    it from threads."""
    stored = store_scan(store, workload, config, backend, reopen_complete=True, lock=lock, on_open=on_open,
                        progress=on_progress)
    return stored.run_id, stored.reopened


def run_scan(spec: WorkloadSpec, workload: Workload, config: ScanConfig, metric: str | None = None,
             backend: Backend | None = None) -> tuple[int, bool]:
    """Scan (or reopen) and return ``(run_id, reopened)``; draws progress and the live heatmap meanwhile."""
    bar, live = st.empty(), st.empty()
    bar.progress(0.0, text="Preparing: dense outputs and importance scores ...")

    def on_open(run_id: int, resumed: ScanRun | None, layers: int) -> None:
        st.session_state[SCANNING] = run_id
        done = len(resumed.done) if resumed else 0
        if resumed:
            st.info(f"resuming: {done} of {layers} layers already done (run {run_id})")
        bar.progress(done / layers, text=f"Scanning {layers} layers x {len(config.validated().sparsities)} sparsities")

    def on_progress(p: Progress, partial: SensitivityProfile) -> None:
        eta = "" if p.eta is None else f" · about {p.eta:.0f} s left"
        bar.progress(p.done / p.total, text=f"{p.done}/{p.total} layers · last: {p.layer}{eta}")
        live.plotly_chart(plots.sensitivity_heatmap(partial, metric), key=f"live-heatmap-{p.done}")

    try:
        with common.holding(spec):
            run_id, reopened = scan_into_store(runs.store(), workload, config, common.model_lock(spec), on_open,
                                               on_progress, backend)
    except Exception:
        st.session_state.pop(SCANNING, None)
        raise
    finally:
        bar.empty()
        live.empty()
    st.session_state.pop(SCANNING, None)
    return run_id, reopened


def stop(spec: WorkloadSpec) -> tuple[int, int, int] | None:
    """After Cancel: mark this session's interrupted scan as stopped; ``(run id, layers done, layers)`` or ``None``
    when no scan was in flight. Its finished layers are already in the store; Run resumes it."""
    run_id = st.session_state.pop(SCANNING, None)
    if run_id is None:
        return None
    store = runs.store()
    try:
        info = store.run(run_id)
    except runs.StoreError:
        return None
    if info["status"] != "complete":
        store.finish(run_id, {**store.profile(run_id).meta, "complete": False})
    return run_id, info["done_layers"], info["total_layers"]


def adaptive_settings(mode: str, labelled: bool, task: str = CLASSIFICATION) -> dict:
    """The sidebar's inputs for an adaptive ``mode``: the ``ScanConfig`` fields they set (none for the full grid);
    the metrics offered are those measured for the workload's ``task``."""
    if mode == "off":
        return {}
    defaults = ScanConfig()
    choices = list(metric_choices(labelled, bounded=mode == "collapse", task=task))
    metric = st.selectbox("Metric that decides", choices, help="accuracy needs labels; agreement compares with the "
                                                                "dense model")
    points = st.number_input("Sparsities per engine call", 1, 32, defaults.points_per_call,
                             help="measured together in one batched run: more per call, fewer calls")
    if mode == "collapse":
        at = st.slider("Collapsed at (share of the way from dense to chance)", 0.05, 1.0, defaults.collapse_at, 0.05,
                       help="a layer stops once its metric has fallen this far towards chance (1/classes); its "
                            "remaining sparsities are filled with the last measured value and marked")
        return {"collapse_at": float(at), "adaptive_metric": metric, "points_per_call": int(points)}
    scale, unit = drop_scale(metric)
    tolerance = st.number_input(f"Tolerated drop ({unit})", 0.0, value=defaults.tolerance * scale,
                                step=0.5 if scale > 1 else 0.01)
    resolution = st.number_input("Resolution (sparsity step searched)", 0.005, 0.5, defaults.resolution, 0.005,
                                 format="%.3f")
    return {"tolerance": float(tolerance) / scale, "resolution": float(resolution), "adaptive_metric": metric,
            "points_per_call": int(points)}


def show_adaptive(profile: SensitivityProfile) -> str:
    """Say how an adaptive run was measured (cells measured, filled); returns its mode (``off`` for a full scan)."""
    mode = adaptive.mode_of(profile)
    if mode == "collapse":
        cells = adaptive.measured_cells(profile)
        st.caption(f"Stop after collapse (at {profile.meta['adaptive']['collapse_at']:g} of the way to chance): "
                   f"**{cells['measured']}** of {cells['cells']} cells measured, {cells['filled']} filled with the "
                   "last measured value (crossed out on the heatmap, open circles on the curves, measured = False "
                   "in the table).")
    elif mode == "bisect":
        info = profile.meta["adaptive"]
        st.caption(f"Bisection: per layer, the largest sparsity whose {info['adaptive_metric']} drop stays within "
                   f"{info['tolerance']:g}, to {info['resolution']:g}; only the points the search measured are "
                   "shown (the Tolerance ranking tab has the answer).")
    return mode


def show_bisection(profile: SensitivityProfile) -> None:
    """The tolerance table a bisection run found, with its CSV."""
    table = adaptive.bisect_table(profile)
    st.subheader("Bisection result")
    st.dataframe(table, hide_index=True, width="stretch")
    st.download_button("Download tolerance CSV", table.to_csv(index=False), "tolerance.csv", "text/csv",
                       on_click="ignore")
    st.caption(f"{int(table['evaluations'].sum())} pruned evaluations in all, against "
               f"{len(table) * (len(profile.meta['sparsities']) - 1)} for the full grid at this resolution. "
               "Below: the same measured points ranked at another drop (coarse: only the measured points).")
