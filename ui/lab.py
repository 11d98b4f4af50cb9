"""The Strategy lab page's helpers: its training data, a lab run into the store with progress, and the labs of
the workload on show.

A lab runs by the path ``prunescope lab`` takes (``analysis.store.labs``): the store finds the lab of these exact
settings and resumes it, each finished unit (strategy x phase) is committed the moment it finishes. So a reload, a
closed tab, a server restart or Cancel (Streamlit stops the script at its next call) loses at most the unit in
flight, and Run with the same settings resumes. The lab copies the cached model, but its one-shot scans prune the
shared model in place for a moment, so it holds the model's lock.
"""

from __future__ import annotations

import time

import pandas as pd
import streamlit as st

from analysis.core.data import EvalData
from analysis.core.profile import SensitivityProfile
from analysis.lab.config import LabConfig
from analysis.lab.result import LabResult
from analysis.lab.runner import LabProgress
from analysis.lab.strategies import STRATEGY_CLASSES
from analysis.store import labs as stored_labs
from analysis.store.labs import StoredLab
from analysis.workload.data import load_data
from analysis.workload.workload import Workload, image_channels
from ui import artifacts, common, runs, uploads
from ui.common import WorkloadSpec

RUNNING = "lab_running"  # session key: the id of the lab this session has in flight
SHOWN = "lab_id"  # session key: the lab on show
SAMPLE_TRAIN = "sample:digits-train"
TRAIN_SOURCES = ("The samples' training split", "Upload tensors (.pt, .npz)", "Upload images (.zip of class folders)",
                 "None: one-shot strategies only, no recovery")


def train_source(spec: WorkloadSpec) -> str | None:
    """The sidebar's training data: a spec (the samples' training split, an upload) or ``None``; an upload the
    checks refuse is a ``ValueError`` the page shows."""
    offered = TRAIN_SOURCES if spec.data.startswith("sample:digits") else TRAIN_SOURCES[1:]
    choice = st.radio("Training data (fine-tuning, and the strategies that train)", offered,
                      help="never the eval set: the recovery is measured on it")
    if choice == TRAIN_SOURCES[0]:
        return SAMPLE_TRAIN
    if choice == TRAIN_SOURCES[3]:
        return None
    role = "tensors" if choice == TRAIN_SOURCES[1] else "images"
    upload = st.file_uploader("Training data: " + ("a tensor x (N, ...) or a dict with x and optional labels y"
                                                   if role == "tensors" else "a zip of an image folder"))
    if upload is None:
        return None
    if role == "tensors":
        return str(uploads.save_upload(upload.name, upload.getvalue(), "tensors"))
    return str(uploads.save_image_zip(upload.name, upload.getvalue()))


@st.cache_resource(show_spinner="Loading the training data ...", max_entries=4)
def training_data(source: str, input_size: int, channels: int | None) -> EvalData:
    """The training data of ``source``, read as the eval set was read (an image folder at its size and channels)."""
    return load_data(source, input_size=input_size, channels=channels)


def load_train(spec: WorkloadSpec, workload: Workload, source: str | None) -> EvalData | None:
    return None if source is None else training_data(source, spec.input_size, image_channels(workload.input_shape))


def strategy_label(name: str) -> str:
    cls = STRATEGY_CLASSES[name]
    return f"{cls.title} ({name})"


def run(spec: WorkloadSpec, workload: Workload, train: EvalData | None, config: LabConfig) -> StoredLab:
    """Run (or resume, or reopen) the lab into the store, drawing its progress and time left."""
    bar = st.empty()
    bar.progress(0.0, text="Preparing: the dense model and the one-shot scans ...")
    shown = [0.0]

    def on_open(lab_id: int, done: int, units: int) -> None:
        st.session_state[RUNNING] = lab_id
        if done:
            st.info(f"resuming: {done} of {units} units already done (lab {lab_id})")

    def on_progress(p: LabProgress) -> None:
        if time.monotonic() - shown[0] < 0.25 and p.fraction < 1.0:
            return
        shown[0] = time.monotonic()
        eta = "" if p.eta_s is None else f" · about {p.eta_s:.0f} s left"
        bar.progress(p.fraction, text=f"{p.units_done}/{p.units} units · now: {p.unit}{eta}")

    try:
        with common.holding(spec):
            stored = stored_labs.lab_into_store(runs.store(), workload, train, config, lock=common.model_lock(spec),
                                                on_open=on_open, progress=on_progress)
    finally:
        bar.empty()
        st.session_state.pop(RUNNING, None)
    return stored


def stop() -> tuple[int, int, int] | None:
    """After Cancel: ``(lab id, units done, units)`` of this session's interrupted lab, or ``None`` when none was in
    flight. Its finished units are in the store already; Run with the same settings resumes it."""
    lab_id = st.session_state.pop(RUNNING, None)
    if lab_id is None:
        return None
    listed = stored_labs.labs(runs.store())
    row = listed[listed["id"] == lab_id]
    return (lab_id, int(row["units_done"].iloc[0]), int(row["units"].iloc[0])) if len(row) else None


def listed(spec: WorkloadSpec) -> pd.DataFrame:
    """The labs of the workload on show, newest first (``analysis.store.labs.labs``)."""
    return stored_labs.labs(runs.store(), artifacts.workload_id(spec))


def reopen(lab_id: int) -> LabResult:
    return stored_labs.open_lab(runs.store(), lab_id)


def delete(lab_id: int) -> None:
    stored_labs.delete_lab(runs.store(), lab_id)


def report_profile(result: LabResult) -> SensitivityProfile:
    """The profile the lab's HTML report opens with: the lab's own one-shot scan of its first strategy."""
    return result.scan_profile(STRATEGY_CLASSES[result.strategies[0]]().scan)
