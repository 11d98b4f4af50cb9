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

from analysis.core.intervals import ERROR_BARS
from analysis.core.metric_table import CLASSIFICATION, default_metric, drop_scale, metric_choices
from analysis.core.profile import SensitivityProfile
from analysis.report import plots
from analysis.sensitivity import adaptive
from analysis.sensitivity.backends import Backend
from analysis.sensitivity.config import SEARCH_MODES, SEQUENTIAL_MODES, ScanConfig
from analysis.sensitivity.driver import Progress
from analysis.store.runs import RunStore, ScanRun
from analysis.store.scanning import scan_into_store as store_scan
from analysis.workload.workload import Workload
from ui import common, runs
from ui.common import WorkloadSpec
from ui.format import change_word, plural

SCANNING = "scanning"  # session key: the run id of the scan this session has in flight
SCAN_MODES = {"off": "full grid", "collapse": "stop after collapse", "bisect": "bisection",
              "sequential": "sequential (stop sampling settled cells)", "sequential-bisect": "sequential + bisection"}
CONFIDENCE_LEVELS = (0.8, 0.9, 0.95, 0.99)


def scan_into_store(store: RunStore, workload: Workload, config: ScanConfig, lock: threading.RLock,
                    on_open: Callable[[int, ScanRun | None, int], None] | None = None,
                    on_progress: Callable[[Progress, Callable[[], SensitivityProfile]], None] | None = None,
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
        grid = plural(len(config.validated().sparsities), "sparsity", "sparsities")
        bar.progress(done / layers, text=f"Scanning {plural(layers, 'layer')} x {grid}")

    def on_progress(p: Progress, partial: Callable[[], SensitivityProfile]) -> None:
        eta = "" if p.eta is None else f" · about {p.eta:.0f} s left"
        profile = partial()
        bar.progress(p.done / p.total, text=f"{p.done}/{p.total} layers · last: {p.layer}{eta}{savings(profile)}")
        live.plotly_chart(plots.sensitivity_heatmap(profile, metric), key=f"live-heatmap-{p.done}")

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


def savings(partial: SensitivityProfile) -> str:
    """`` · K of C cells settled early, S% of sample-evaluations saved`` for a sequential scan in progress."""
    if partial.table.empty or adaptive.mode_of(partial) not in SEQUENTIAL_MODES:
        return ""
    spent = adaptive.sample_evaluations(partial)
    return (f" · {spent['settled_early']} of {spent['cells']} cells settled early, {spent['saved']:.0%} of "
            "sample-evaluations saved")


def adaptive_settings(mode: str, labelled: bool, task: str = CLASSIFICATION) -> dict:
    """The sidebar's inputs for an adaptive ``mode``: the ``ScanConfig`` fields they set (none for the full grid);
    the metrics offered are those measured for the workload's ``task`` (with error bars for a sequential mode)."""
    if mode == "off":
        return {}
    defaults = ScanConfig()
    choices = [m for m in metric_choices(labelled, bounded=mode == "collapse", task=task)
               if mode not in SEQUENTIAL_MODES or m in ERROR_BARS]
    first = default_metric(labelled, task)
    metric = st.selectbox("Metric that decides", choices, index=choices.index(first) if first in choices else 0,
                          help="accuracy needs labels; agreement compares with the dense model")
    points = st.number_input("Sparsities per engine call", 1, 32, defaults.points_per_call,
                             help="measured together in one batched run: more per call, fewer calls")
    if mode == "collapse":
        at = st.slider("Collapsed at (share of the way from dense to chance)", 0.05, 1.0, defaults.collapse_at, 0.05,
                       help="a layer stops once its metric has fallen this far towards chance (1/classes); its "
                            "remaining sparsities are filled with the last measured value and marked")
        return {"collapse_at": float(at), "adaptive_metric": metric, "points_per_call": int(points)}
    scale, unit = drop_scale(metric)
    tolerance = st.number_input(f"Tolerated {change_word(metric)} ({unit})", 0.0, value=defaults.tolerance * scale,
                                step=0.5 if scale > 1 else 0.01)
    chosen = {"tolerance": float(tolerance) / scale, "adaptive_metric": metric}
    if mode in SEQUENTIAL_MODES:
        chosen["shard_size"] = int(st.number_input(
            "Samples per look (shard size)", 1, 100_000, defaults.shard_size,
            help="the eval set is read in this many samples at a time, in a fixed shuffled order; after each shard "
                 "every open cell is tested, and a cell whose drop is settled within or beyond the tolerance at the "
                 "confidence level stops sampling"))
    if mode == "sequential":
        return chosen
    resolution = st.number_input("Resolution (sparsity step searched)", 0.005, 0.5, defaults.resolution, 0.005,
                                 format="%.3f")
    return {**chosen, "resolution": float(resolution), "points_per_call": int(points)}


def show_adaptive(profile: SensitivityProfile) -> str:
    """Say how an adaptive run was measured (cells measured, filled); returns its mode (``off`` for a full scan)."""
    mode = adaptive.mode_of(profile)
    if mode == "collapse":
        cells = adaptive.measured_cells(profile)
        st.caption(f"Stop after collapse (at {profile.meta['adaptive']['collapse_at']:g} of the way to chance): "
                   f"**{cells['measured']}** of {cells['cells']} cells measured, {cells['filled']} filled with the "
                   "last measured value (crossed out on the heatmap, open circles on the curves, measured = False "
                   "in the table).")
    elif mode in SEARCH_MODES:
        info = profile.meta["adaptive"]
        st.caption(f"Bisection: per layer, the largest sparsity whose {info['adaptive_metric']} "
                   f"{change_word(info['adaptive_metric'])} stays within "
                   f"{info['tolerance']:g}, to {info['resolution']:g}; only the points the search measured are "
                   "shown (the Tolerance ranking tab has the answer).")
    if mode in SEQUENTIAL_MODES:
        info, spent = profile.meta["adaptive"], adaptive.sample_evaluations(profile)
        st.caption(f"Sequential: each cell read {info['shard_size']} samples at a time until its "
                   f"{info['adaptive_metric']} drop was settled within or beyond {info['tolerance']:g} at "
                   f"{info['confidence']:.0%} confidence: **{spent['settled_early']}** of {spent['cells']} cells "
                   f"settled early (triangles on the heatmap and the curves, settled_early in the table; their "
                   f"intervals are confidence sequences), {spent['sample_evaluations']:,} sample-evaluations against "
                   f"the full grid's {spent['full_grid']:,} (**{spent['saved']:.0%} saved**).")
    return mode


def show_bisection(profile: SensitivityProfile) -> None:
    """The tolerance table a bisection run found, with its CSV."""
    table = adaptive.bisect_table(profile)
    st.subheader("Bisection result")
    st.dataframe(table, hide_index=True, width="stretch")
    st.download_button("Download tolerance CSV", table.to_csv(index=False), "tolerance.csv", "text/csv",
                       on_click="ignore")
    st.caption(f"{int(table['evaluations'].sum())} pruned evaluations ({int(table['sample_evaluations'].sum()):,} "
               f"sample-evaluations) in all, against {len(table) * (len(profile.meta['sparsities']) - 1)} for the "
               "full grid at this resolution. Below: the same measured points ranked at another drop (coarse: only "
               "the measured points).")


def show_side_by_side(first: SensitivityProfile, second: SensitivityProfile) -> None:
    """An adaptive run next to a full grid of the same pruning (``prunescope compare``'s table), when the two are
    such a pair."""
    modes = [adaptive.mode_of(p) for p in (first, second)]
    same = {(p.meta.get("criterion"), p.meta.get("granularity")) for p in (first, second)}
    if modes.count("off") != 1 or len(same) != 1:
        return
    scan, full = (second, first) if modes[0] == "off" else (first, second)
    table = adaptive.side_by_side(scan, full)
    a, b = table.attrs["scan"], table.attrs["full"]
    st.subheader(f"{modes[modes.index('off') - 1]} vs full grid")
    st.dataframe(table, hide_index=True, width="stretch")
    st.caption(f"Per layer, the largest sparsity whose {table.attrs['metric']} drop is within "
               f"{table.attrs['tolerance']:g}. The full grid's answer lies within the adaptive run's bounds for "
               f"{int(table['inside'].sum())} of {len(table)} layers and equals its answer for "
               f"{int(table['same'].sum())}; {a['sample_evaluations']:,} sample-evaluations against "
               f"{b['sample_evaluations']:,}.")
