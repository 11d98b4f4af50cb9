"""The state every page shares (which workload, which profile) and the cached loaders behind it.

Session state keys (few, well named):
    ``workload``   the ``WorkloadSpec`` picked on the Model & data page (default: the bundled CNN sample)
    ``run_id``     the sensitivity run on show (a folder under ``$PRUNESCOPE_HOME/profiles``)
"""

from __future__ import annotations

from dataclasses import dataclass

import streamlit as st

from analysis.layers import Layer, find_layers, layer_table
from analysis.sensitivity import SensitivityProfile
from analysis.sources import SpecError, Workload, load_workload
from ui import runs
from ui.uploads import prunescope_home

DEFAULT_MODEL = "sample:digits-cnn"
DEFAULT_DATA = "sample:digits"


@dataclass(frozen=True)
class WorkloadSpec:
    """What the user picked: a model spec, a data spec and how many samples to use (``None``: all)."""

    model: str = DEFAULT_MODEL
    data: str = DEFAULT_DATA
    count: int | None = None
    input_size: int = 224

    @property
    def key(self) -> str:
        size = f"|{self.input_size}px" if self.input_size != 224 else ""
        return f"{self.model}|{self.data}|{self.count or 'all'}{size}"

    @property
    def label(self) -> str:
        first = f" (first {self.count})" if self.count else ""
        return f"{_short_spec(self.model)} on {_short_spec(self.data)}{first}"


def _short_spec(spec: str) -> str:
    """Uploads live under a hashed folder; show them as 'upload.pt' rather than the whole path."""
    home = str(prunescope_home())
    return spec.replace(home + "/uploads/", "uploaded:") if home in spec else spec


def current_spec() -> WorkloadSpec:
    if "workload" not in st.session_state:
        st.session_state["workload"] = WorkloadSpec()
    return st.session_state["workload"]


def set_spec(spec: WorkloadSpec) -> None:
    if st.session_state.get("workload") != spec:
        st.session_state["workload"] = spec
        st.session_state.pop("run_id", None)


@st.cache_resource(show_spinner="Loading the model and data ...", max_entries=4)
def cached_workload(spec: WorkloadSpec) -> Workload:
    return load_workload(spec.model, spec.data, count=spec.count, input_size=spec.input_size)


@st.cache_resource(show_spinner=False, max_entries=8)
def cached_layers(spec: WorkloadSpec) -> list[Layer]:
    w = cached_workload(spec)
    return find_layers(w.model, w.data.x[:1])


def try_workload(spec: WorkloadSpec) -> tuple[Workload, list[Layer]]:
    """Load (or reuse) the workload and its layers; raises ``SpecError``/``ValueError`` with a readable message."""
    return cached_workload(spec), cached_layers(spec)


def load_error(exc: Exception) -> str:
    """A readable one-line reason: the engine's own message for input errors, the type too for anything else."""
    text = " ".join(str(exc).split())[:400]
    return text if isinstance(exc, (SpecError, ValueError)) else f"{type(exc).__name__}: {text}"


def workload_or_stop() -> tuple[WorkloadSpec, Workload, list[Layer]]:
    """The current workload, or a readable error and the end of the page when it cannot be loaded."""
    spec = current_spec()
    try:
        w, layers = try_workload(spec)
    except Exception as exc:  # noqa: BLE001 - whatever a user's file does, the page says it and stays up
        st.error(f"Cannot load {spec.label}: {load_error(exc)}")
        st.page_link("pages/1_Model_and_data.py", label="Pick another model or data set")
        st.stop()
    return spec, w, layers


def best_engine() -> str:
    """The fastest scan engine this checkout has (they all give the same numbers)."""
    from analysis.engine import ENGINES

    return "fast" if "fast" in ENGINES else "naive"


@st.cache_data(show_spinner=False)
def torchvision_archs() -> list[str]:
    """torchvision's image classification architectures (the ones a class-score workload fits)."""
    import torchvision

    return sorted(torchvision.models.list_models(module=torchvision.models))


def summary_table(layers: list[Layer]):  # noqa: ANN201 - a pandas Styler-free DataFrame
    df = layer_table(layers)
    df["params_share"] = (df["params_share"] * 100).round(2)
    df["flops_share"] = (df["flops_share"] * 100).round(2)
    return df.rename(columns={"params_share": "params %", "flops_share": "FLOPs %"})


@st.cache_resource(show_spinner=False, max_entries=32)
def _load_run(home: str, run_id: str) -> SensitivityProfile:
    return runs.load_run(run_id)


def load_run(run_id: str) -> SensitivityProfile:
    return _load_run(str(prunescope_home()), run_id)


def current_profile(spec: WorkloadSpec) -> SensitivityProfile | None:
    """The run on show for this workload: the one picked, else the newest complete one, else ``None``."""
    run_id = st.session_state.get("run_id")
    known = {r.run_id: r for r in runs.list_runs(spec.key)}
    if run_id not in known:
        run_id = next((r.run_id for r in known.values() if r.complete), None)
    if run_id is None:
        return None
    st.session_state["run_id"] = run_id
    return load_run(run_id)


def header(title: str) -> WorkloadSpec:
    st.set_page_config(page_title=f"{title} · Prunescope", layout="wide")
    st.title(title)
    spec = current_spec()
    st.caption(f"Workload: **{spec.label}**")
    return spec
