"""The state every page shares (which workload), the cached loaders behind it, and the lock on each cached model.

Session state keys (few, well named):
    ``workload``   the ``WorkloadSpec`` picked on the Model & data page (default: the bundled CNN sample)
    ``run_id``     the run store's id of the sensitivity run on show (see ``ui/runs.py``)

A cached model is shared by every browser session, and scans, measurements, diagnoses and exports prune its
weights in place (and restore them) while they run. ``holding(spec)`` is the lock around all of them: one at a
time per model, so no session ever sees another's pruned weights.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import streamlit as st
from streamlit.runtime.pages_manager import PagesManager

from analysis.core.layers import Layer, embedding_layers, find_layers, layer_table
from analysis.store.runs import home as prunescope_home
from analysis.workload import samples
from analysis.workload.data import RANDOM_COUNT, parse_shape
from analysis.workload.errors import SpecError
from analysis.workload.uploads import UploadError, image_root, sniff
from analysis.workload.workload import Workload, load_workload
from ui import upload_names, uploads
from ui.uploads import TENSOR_FILE, WEIGHTS_FILE

DEFAULT_MODEL = "sample:digits-cnn"
DEFAULT_DATA = "sample:digits"


@dataclass(frozen=True)
class WorkloadSpec:
    """What the user picked: a model spec, a data spec and how many samples to use (``None``: all)."""

    model: str = DEFAULT_MODEL
    data: str = DEFAULT_DATA
    count: int | None = None
    input_size: int = 224
    seq_len: int | None = None  # Hugging Face models: tokens per sequence (None: the default)

    @property
    def key(self) -> str:
        size = f"|{self.input_size}px" if self.input_size != 224 else ""
        seq = f"|{self.seq_len}tok" if self.seq_len else ""
        return f"{self.model}|{self.data}|{self.count or 'all'}{size}{seq}"

    @property
    def label(self) -> str:
        if self.data.startswith("random:"):  # random inputs have no "first N": the count is how many are drawn
            return f"{upload_names.display(self.model)} on {random_label(self.data, self.count)}"
        first = f" (first {self.count})" if self.count else ""
        return f"{upload_names.display(self.model)} on {upload_names.display(self.data)}{first}"


def random_label(data: str, count: int | None) -> str:
    """``random:3x64x64`` with a count, in words: ``32 random 3x64x64 inputs`` (256 when no count is set)."""
    return f"{count or RANDOM_COUNT} random {data.removeprefix('random:')} inputs"


def _short_spec(spec: str) -> str:
    """Uploads live under a hashed folder; show them as 'upload.pt' rather than the whole path."""
    home = str(prunescope_home())
    return spec.replace(home + "/uploads/", "uploaded:") if home in spec else spec


def current_spec() -> WorkloadSpec:
    """The workload on show: this session's pick, else the one in the page's address (a reload or a shared link
    keeps it), else the bundled sample. The address is kept up to date on every page."""
    if "workload" not in st.session_state:
        st.session_state["workload"] = spec_from_address(dict(st.query_params)) or WorkloadSpec()
    spec = st.session_state["workload"]
    _to_address(spec)
    return spec


def set_spec(spec: WorkloadSpec) -> None:
    if st.session_state.get("workload") != spec:
        st.session_state["workload"] = spec
        st.session_state.pop("run_id", None)
    _to_address(spec)


ADDRESS_KEYS = ("model", "data", "count", "size", "seq")


def _to_address(spec: WorkloadSpec) -> None:
    wanted = {} if spec == WorkloadSpec() else {
        "model": _short_spec(spec.model), "data": _short_spec(spec.data), "count": str(spec.count or 0),
        "size": str(spec.input_size), **({"seq": str(spec.seq_len)} if spec.seq_len else {})}
    if {k: st.query_params.get(k) for k in ADDRESS_KEYS if k in st.query_params} != wanted:
        for key in ADDRESS_KEYS:
            st.query_params.pop(key, None)
        st.query_params.update(wanted)


def spec_from_address(params: dict[str, str]) -> WorkloadSpec | None:
    """The workload a page address names, or ``None``. Only what the pages themselves write is taken (see
    ``address_model`` and ``address_data``); never a ``file.py:factory`` spec or another path on the server."""
    try:
        count, size = int(params.get("count", "0")), int(params.get("size", "224"))
        seq = int(params["seq"]) if "seq" in params else None
        model, data = address_model(params["model"]), address_data(params["data"], count or RANDOM_COUNT)
    except (KeyError, ValueError):
        return None
    if model is None or data is None or count < 0 or not 8 <= size <= 1024 or not (seq is None or 2 <= seq <= 1 << 16):
        return None
    return WorkloadSpec(model, data, count or None, size, seq)


UPLOAD = re.compile(r"^uploaded:([0-9a-f]{16})/(upload\.(?:onnx|pt|pt2|safetensors|npz|txt|jsonl|csv)|images(?:/[^/]+)?"
                    r"|hf(?:/[^/@]+)?)$")
HF_TASKS = ("causal-lm", "encoder", "classification")


def address_model(text: str) -> str | None:
    """A model spec from a page address: a bundled sample, a torchvision architecture from torchvision's own
    list (with an uploaded state dict or none), or an uploaded model file of a kind this server takes."""
    if text.startswith("sample:"):
        return text if text.removeprefix("sample:") in samples.sample_names() else None
    if text.startswith("torchvision:"):
        arch, eq, weights = text.removeprefix("torchvision:").partition("=")
        if arch not in torchvision_archs():
            return None
        if not eq:
            return text
        path = _upload_file(weights, WEIGHTS_FILE)
        return f"torchvision:{arch}={path}" if path else None
    if text.startswith("hf:"):
        return _upload_hf(text.removeprefix("hf:"))
    path = _upload_file(text, uploads.model_kinds())
    return str(path) if path else None


def _upload_hf(text: str) -> str | None:
    """``hf:`` of an uploaded Hugging Face folder (with its ``@TASK``), when this server extracted it."""
    folder, at, task = text.partition("@")
    match = UPLOAD.match(folder)
    if not match or not match.group(2).startswith("hf") or (at and task not in HF_TASKS):
        return None
    root = prunescope_home() / "uploads" / match.group(1) / "hf"
    path = prunescope_home() / "uploads" / match.group(1) / match.group(2)
    if not (root.is_dir() and path.is_relative_to(root) and (path / "config.json").is_file()):
        return None
    return f"hf:{path}" + (f"@{task}" if at else "")


def address_data(text: str, count: int) -> str | None:
    """A data spec from a page address: the bundled digits, ``random:`` shapes that parse, an uploaded tensor
    file, or the image folder extracted from an uploaded zip."""
    if text in ("sample:digits", "sample:digits-train"):
        return text
    if text.startswith("random:"):
        try:
            parse_shape(text.removeprefix("random:"), count)
        except SpecError:
            return None
        return text
    match = UPLOAD.match(text)
    if match and match.group(2).endswith((".txt", ".jsonl", ".csv")):
        path = prunescope_home() / "uploads" / match.group(1) / match.group(2)
        return str(path) if path.is_file() and not path.is_symlink() else None
    if match and match.group(2).startswith("images"):
        root = prunescope_home() / "uploads" / match.group(1) / "images"
        path = prunescope_home() / "uploads" / match.group(1) / match.group(2)
        return str(path) if root.is_dir() and path == image_root(root) else None
    path = _upload_file(text, TENSOR_FILE)
    return str(path) if path else None


def _upload_file(text: str, kinds: set[str]) -> Path | None:
    """The file ``uploaded:HASH/upload.SUFFIX`` names when it exists and its content is of one of ``kinds``."""
    match = UPLOAD.match(text)
    if not match or match.group(2).startswith(("images", "hf")):
        return None
    path = prunescope_home() / "uploads" / match.group(1) / match.group(2)
    try:
        return path if path.is_file() and not path.is_symlink() and sniff(path) in kinds else None
    except (OSError, UploadError):
        return None


@st.cache_resource(show_spinner="Loading the model and data ...", max_entries=4)
def cached_workload(spec: WorkloadSpec) -> Workload:
    """The workload of ``spec``; programs load only when this server takes them as uploads, and only from its
    uploads folder (the pages never build another program spec)."""
    return load_workload(spec.model, spec.data, count=spec.count, input_size=spec.input_size, seq_len=spec.seq_len,
                         trust_code=uploads.code_uploads_allowed() and is_upload(spec.model))


def is_upload(spec: str) -> bool:
    """Whether a spec names a file of this server's uploads folder."""
    root = (prunescope_home() / "uploads").resolve()
    return Path(spec).resolve().is_relative_to(root)


@st.cache_resource(show_spinner=False, max_entries=8)
def cached_layers(spec: WorkloadSpec) -> list[Layer]:
    w = cached_workload(spec)
    with model_lock(spec):
        return find_layers(w.model, w.data.x[:1])


@st.cache_resource(show_spinner=False, max_entries=8)
def left_out_layers(spec: WorkloadSpec) -> dict[str, str]:
    """The embeddings and vocabulary head of the workload's model, listed but left out of scans by default."""
    w = cached_workload(spec)
    with model_lock(spec):
        return embedding_layers(find_layers(w.model, w.data.x[:1], include_embeddings=True))


@st.cache_resource(show_spinner=False)
def model_lock(spec: WorkloadSpec) -> threading.RLock:
    """The lock of the cached model of ``spec``, shared by all sessions (see ``holding``)."""
    return threading.RLock()


@contextmanager
def holding(spec: WorkloadSpec) -> Iterator[None]:
    """Hold the model's lock for a scan, measurement, diagnosis or export; say so while another session has it."""
    lock = model_lock(spec)
    if not lock.acquire(blocking=False):
        note = st.empty()
        note.info("Another session is scanning or measuring this model; this starts when it is done ...")
        lock.acquire()
        note.empty()
    try:
        yield
    finally:
        lock.release()


@st.cache_resource(show_spinner=False, max_entries=8)
def fingerprints(spec: WorkloadSpec) -> tuple[str, str]:
    """``(weights hash, data hash)`` of the workload: the run store finds its runs by them (a CLI scan of the same
    model and data is one of them). Taken under the lock, so never of weights a scan has pruned for the moment."""
    w = cached_workload(spec)
    with model_lock(spec):
        return w.fingerprint(), w.data.fingerprint()


def try_workload(spec: WorkloadSpec) -> tuple[Workload, list[Layer]]:
    """Load (or reuse) the workload and its layers; raises ``SpecError``/``ValueError`` with a readable message."""
    return cached_workload(spec), cached_layers(spec)


def load_error(exc: Exception) -> str:
    """A readable one-line reason: the engine's own message for input errors, the type too for anything else."""
    text = upload_names.display(" ".join(str(exc).split()))[:400]  # uploads by their names, not by server path
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
    from analysis.sensitivity.engines import ENGINES

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


NAVIGATION_CHECKED = "navigation_checked"  # session key: leave_pages_folder_mode has looked at this session


def leave_pages_folder_mode() -> None:
    """Make app.py's navigation the one on show. Streamlit starts a server in its old pages-folder mode (because
    ``pages/`` exists) and leaves it only when ``st.navigation`` in app.py runs. When the first visitor after a
    start opens a page's own address, the page runs without app.py, and the server stays in that mode for every
    session: Streamlit's own page list ("app", no icons, no Home) and no favicon set. So a page that finds the
    mode on turns it off and reruns: app.py runs, with its navigation, and opens the same page. Only on a
    session's first run, which carries no click a rerun could swallow (Streamlit's AppTest turns the mode on
    again before every run)."""
    if PagesManager.uses_pages_directory:
        PagesManager.uses_pages_directory = False
        if not st.session_state.get(NAVIGATION_CHECKED):
            st.session_state[NAVIGATION_CHECKED] = True
            st.rerun()


def header(title: str) -> WorkloadSpec:
    leave_pages_folder_mode()
    st.set_page_config(page_title=f"{title} · Prunescope", layout="wide")
    st.title(title)
    spec = current_spec()
    st.caption(f"Workload: **{spec.label}**")
    return spec
