"""Export a pruned model to ONNX, verify it in ONNX Runtime, and measure what pruning saved.

``export()`` prunes the model as Measure does (``schedule.prune``: masks baked into the weights; a channel schedule
resolved to the model's coupled groups, its channels removed for real with ``shrink=True``), optionally
recalibrates BatchNorm (``batchnorm.recalibrate`` with its defaults, as Measure does), and writes one
self-contained ``.onnx`` file with a dynamic batch dimension. Then, always:

- it runs the file in ONNX Runtime on the eval set (all of it unless ``verify_samples`` says fewer; every figure
  states the count) and compares with the PyTorch pruned model (max absolute and relative difference, top-1
  agreement), and a shrunk model with its masked reference; past ``tolerance`` the export fails
  (``VerificationError``). The accuracy it reports is the file's own, from those ONNX Runtime outputs. These
  passes run in batches sized from the input (``batch_size_for``), so a big image model's activations stay modest;
- it reads the weights back from the ONNX initializers: their sparsity, their channel counts, the N:M pattern,
  and the layer weights kept (stored and non-zero) with their FLOPs: the twins of the schedule's totals;
- it reports file size, gzip size, stored and non-zero parameters and ONNX Runtime latency at batch 1 and 32 (a
  smaller second batch where 32 would not fit the time budget, with a note) next to the dense model (interleaved
  repeats; median and interquartile range; a speed-up is called one only when the ranges do not overlap). The
  dense reference file is exported once per model and kept (``DenseCache``: the faces keep it with the run store,
  by the model's fingerprint); it is made first, while the export holds nothing else, and the pruned file's ONNX
  Runtime session serves both the verification and the latency run;
- it writes the schedule that was exported (``NAME.schedule.json``) and a Markdown summary (``NAME.md``) next
  to the ``.onnx``, and returns an ``ExportReport``.

Exporter: torch 2.14 has two. The ``torch.export``-based one (``dynamo=True``, the default since 2.9) keeps
parameter names as initializer names; it takes a few seconds. The legacy TorchScript one (``dynamo=False``) is
deprecated and renames folded weights, but it is several times faster and exports TorchScript models.
``exporter="auto"`` (``auto_order``) takes the TorchScript one first for models without attention and the
``torch.export`` one first for attention models, each falling back to the other.
"""

from __future__ import annotations

import ctypes
import gc
import json
import math
import os
import struct
import tempfile
import time
import warnings
import zlib
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from analysis.core import batchnorm, criteria
from analysis.core.data import EvalData
from analysis.core.granularity import CoupledLayer, parse_granularity, schedule_layers
from analysis.core.layers import Layer, find_layers
from analysis.core.metric_table import CLASSIFICATION, METRICS, applies, metric_info, metric_label, task_metrics
from analysis.core.metrics import as_class_scores, predict, sums_from_logits
from analysis.core.modules import copy_model
from analysis.schedule.coupling import CoupledGroup, ShrinkError
from analysis.schedule.prune import Pruned, prune
from analysis.schedule.schedule import Schedule
from analysis.schedule.totals import Accountant
from analysis.schedule.units import shrink_units
from analysis.workload.onnx import fixed_batch, run_batched

EXPORTERS = ("auto", "dynamo", "torchscript")
LATENCY_BATCHES = (1, 32)
BATCH_ENTRIES = 1 << 21  # input entries in one batch of the verification and reference passes (see batch_size_for)
MIN_REPEATS = 5  # latency repeats that always run, whatever the time budget: enough for a median and quartiles


class ExportError(ValueError):
    """An export that cannot be made as asked (the message says why and what to do)."""


class VerificationError(RuntimeError):
    """The exported file does not compute what the PyTorch pruned model computes."""


@dataclass
class Verification:
    """One comparison of outputs: ``candidate`` against ``reference`` on ``samples`` inputs."""

    candidate: str
    reference: str
    samples: int
    max_abs: float
    max_rel: float
    top1_agreement: float
    tolerance: float

    @property
    def passed(self) -> bool:
        return self.max_rel <= self.tolerance

    def to_dict(self) -> dict:
        return {**asdict(self), "passed": self.passed}


@dataclass
class FileCost:
    """What one ONNX file costs: bytes on disk and gzipped, floating-point parameters stored and non-zero, and of
    those the prunable layers' weights (``weights``, ``nonzero_weights``; -1 where the file was not read for them)."""

    file_bytes: int
    gzip_bytes: int
    params: int
    nonzero_params: int
    weights: int = -1
    nonzero_weights: int = -1


@dataclass(frozen=True)
class DenseCache:
    """Where dense reference files are kept between exports: ``folder``, one file per model ``fingerprint``,
    exporter and input shape, with its ``FileCost`` beside it."""

    folder: Path
    fingerprint: str

    def path(self, exporter: str, example: torch.Tensor) -> Path:
        shape = "x".join(map(str, example.shape[1:]))
        return Path(self.folder) / f"{self.fingerprint}-{exporter}-{shape}-{str(example.dtype).split('.')[-1]}.onnx"


@dataclass
class ExportReport:
    """Everything an export did and measured; ``to_dict`` for JSON, ``to_markdown`` for the summary file.

    ``kept`` holds the layer weights and FLOPs the file keeps (``weights``, ``flops``: counted on the exported
    model, out of ``weights_total`` and ``flops_total``), the twins of the schedule's totals."""

    onnx_path: Path
    schedule_path: Path
    summary_path: Path
    model_spec: str
    data_spec: str
    mode: str
    criterion: str
    granularity: str
    exporter: str
    schedule: Schedule
    requested: dict[str, float]
    layers: pd.DataFrame
    groups: list[CoupledGroup]
    verifications: list[Verification]
    dense: FileCost
    pruned: FileCost
    latency: pd.DataFrame | None
    threads: int
    quality: dict[str, float | None]
    bn_recalibrated: int
    seconds: dict[str, float]
    notes: list[str] = field(default_factory=list)
    kept: dict[str, int] = field(default_factory=dict)
    dense_cached: bool = False

    def to_dict(self) -> dict:
        return {
            "onnx_path": str(self.onnx_path), "schedule_path": str(self.schedule_path),
            "summary_path": str(self.summary_path), "model": self.model_spec, "data": self.data_spec,
            "mode": self.mode, "criterion": self.criterion, "granularity": self.granularity,
            "exporter": self.exporter, "requested": self.requested, "exported": self.schedule.sparsities,
            "layers": self.layers.to_dict(orient="records"),
            "groups": [{"key": g.key, "layers": g.layers, "channels": g.channels, "kept": g.kept} for g in self.groups],
            "verifications": [v.to_dict() for v in self.verifications], "dense": asdict(self.dense),
            "pruned": asdict(self.pruned), "threads": self.threads,
            "latency": None if self.latency is None else self.latency.to_dict(orient="records"),
            "quality": self.quality, "bn_recalibrated": self.bn_recalibrated, "seconds": self.seconds,
            "notes": self.notes, "kept": self.kept, "dense_cached": self.dense_cached,
        }

    def to_markdown(self) -> str:
        return _markdown(self)


def check_shrinkable(schedule: Schedule) -> None:
    """Only a structured schedule (channels) or a coupled one (heads, neurons) can be shrunk; anything else is
    exported masked."""
    gran = parse_granularity(schedule.granularity)
    if not (gran.structured or gran.coupled):
        raise ExportError(f"--shrink removes whole channels, attention heads or MLP neurons and needs channel "
                          f"granularity (or heads, neurons); this schedule has {schedule.granularity}. Export it "
                          "masked (without --shrink)")


# ---------------------------------------------------------------------------------------------------- ONNX


def to_onnx(model: nn.Module, example: torch.Tensor, path: str | Path, exporter: str = "auto",
            full_check: bool = True) -> str:
    """Write ``model`` to ``path`` as one ONNX file with a dynamic batch dimension; return the exporter used.
    ``full_check=False`` skips the checker's shape inference (a copy of the whole graph): for an internal reference
    file that ONNX Runtime loads and runs anyway, never for the file a user gets."""
    path = Path(path)
    if callable(getattr(model, "to_onnx", None)):  # an ONNX file run in ONNX Runtime: its own graph, new weights
        import onnx

        path.parent.mkdir(parents=True, exist_ok=True)
        onnx.save(model.to_onnx(), str(path))
        _check_file(path)
        return "onnx-graph"
    path.parent.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    tried = exporters_to_try(model, exporter)
    failures = []
    for name in tried:
        try:
            _write(model, example.cpu(), path, name)
            _check_file(path, full_check)
            return name
        except ExportError:
            raise
        except Exception as exc:  # noqa: BLE001 - an exporter failure: try the next one, report all
            failures.append(f"{name}: {type(exc).__name__}: {' '.join(str(exc).split())[:300]}")
    raise ExportError("the model could not be exported to ONNX (" + "; ".join(failures) + ")")


def exporters_to_try(model: nn.Module, exporter: str) -> list[str]:
    """The exporters ``to_onnx`` tries for ``model``, in order: ``auto_order`` for ``auto``, else ``exporter``; an
    ONNX file run in ONNX Runtime is written as its own graph (``onnx-graph``)."""
    if callable(getattr(model, "to_onnx", None)):
        return ["onnx-graph"]
    if exporter not in EXPORTERS:
        raise ExportError(f"unknown exporter {exporter!r}; choose one of {', '.join(EXPORTERS)}")
    return auto_order(model) if exporter == "auto" else [exporter]


def auto_order(model: nn.Module) -> list[str]:
    """The exporters ``auto`` tries, in order. A TorchScript model has only the TorchScript exporter. A model with
    attention (a module whose class name says so: ``nn.MultiheadAttention``, a transformer's attention) goes through
    dynamo first, whose initializers keep the parameter names the weight check looks for (packed and tied
    projections). Any other model goes through the TorchScript exporter first: several times faster, and it falls
    back to dynamo where tracing cannot write the graph (an adaptive pooling that does not divide its input)."""
    if isinstance(model, torch.jit.ScriptModule):
        return ["torchscript"]
    if any("Attention" in type(m).__name__ for m in model.modules()):
        return ["dynamo", "torchscript"]
    return ["torchscript", "dynamo"]


def _write(model: nn.Module, example: torch.Tensor, path: Path, exporter: str) -> None:
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        if exporter == "dynamo":
            torch.onnx.export(model, (example,), str(path), input_names=["input"], output_names=["logits"],
                              dynamo=True, dynamic_shapes=({0: torch.export.Dim("batch")},),
                              external_data=False, verbose=False)
        else:
            torch.onnx.export(model, (example,), str(path), input_names=["input"], output_names=["logits"],
                              dynamo=False, opset_version=18,
                              dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})


def _check_file(path: Path, full_check: bool = True) -> None:
    import onnx

    stray = [p.name for p in path.parent.glob(path.name + "*.data")] + [
        p.name for p in path.parent.glob(path.stem + ".onnx.data")]
    if stray:
        raise ExportError(f"the exporter wrote external data ({', '.join(sorted(set(stray)))}) next to {path}; "
                          "expected one self-contained file")
    onnx.checker.check_model(str(path), full_check=full_check)


def _load(path: str | Path):  # noqa: ANN202 - an onnx.ModelProto
    import onnx

    return onnx.load(str(path))


def onnx_weights(path: str | Path, layers: list[Layer], shapes: dict[str, tuple[int, ...]],
                 proto: object | None = None) -> dict[str, np.ndarray]:
    """The weight of each layer as stored in the ONNX file, in PyTorch's (out, in, ...) layout.

    Found by parameter name (the dynamo exporter keeps them); otherwise, for exporters that rename folded
    weights, by position: the weight inputs of the Conv/Gemm/MatMul nodes in graph order, matched to the
    layers in execution order where the shapes agree. Layers that cannot be found are left out. ``proto`` is the
    file already loaded, if it is.
    """
    proto = proto if proto is not None else _load(path)
    inits = {i.name: i for i in proto.graph.initializer}  # converted to arrays only when returned
    found: dict[str, np.ndarray] = {}
    for layer in layers:
        if layer.param_name in inits:
            array = _fitted(inits[layer.param_name], shapes[layer.name])
            if array is not None:
                found[layer.name] = array
    rest = [l for l in layers if l.name not in found]
    if rest:
        used = {l.param_name for l in layers if l.name in found}
        candidates = [inits[n.input[1]] for n in proto.graph.node
                      if n.op_type in ("Conv", "Gemm", "MatMul") and len(n.input) > 1 and n.input[1] in inits
                      and n.input[1] not in used]
        i = 0
        for layer in rest:
            while i < len(candidates) and not _fits(candidates[i], shapes[layer.name]):
                i += 1
            if i == len(candidates):
                break
            found[layer.name] = _fitted(candidates[i], shapes[layer.name])
            i += 1
    return found


def _fits(init, shape: tuple[int, ...]) -> bool:  # noqa: ANN001 - an onnx.TensorProto
    """Whether the initializer ``init`` holds a weight of ``shape`` (a 2-D one possibly transposed), read from its
    dimensions alone."""
    dims = tuple(init.dims)
    return dims == tuple(shape) or (len(dims) == 2 and dims[::-1] == tuple(shape))


def _fitted(init, shape: tuple[int, ...]) -> np.ndarray | None:  # noqa: ANN001 - an onnx.TensorProto
    """The initializer ``init`` as an array of ``shape`` (a 2-D one transposed if that fits); ``None`` if it does
    not fit."""
    from onnx import numpy_helper

    if not _fits(init, shape):
        return None
    array = numpy_helper.to_array(init)
    return array if tuple(array.shape) == tuple(shape) else array.T


def session(path: str | Path, threads: int = 1):  # noqa: ANN201 - an onnxruntime.InferenceSession
    """An ONNX Runtime CPU session of the file with ``threads`` intra-op threads. Its CPU memory arena is off: an
    arena keeps the largest batch's activations for the session's life (hundreds of MB for a big image model),
    and a dense and a pruned session are open side by side during the latency run."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    options.enable_cpu_mem_arena = False
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def run_onnx(path: str | Path, x: torch.Tensor, batch_size: int = 32, threads: int = 1,
             runner: object | None = None) -> torch.Tensor:
    """The file's first output for ``x`` in ONNX Runtime, batched (a graph exported for a fixed batch size runs
    in batches of that size); ``runner`` is an open session of the file, if there is one."""
    s = runner if runner is not None else session(path, threads)
    name = s.get_inputs()[0].name
    out = run_batched(lambda xb: s.run(None, {name: xb})[0], x.cpu().numpy(), fixed_batch(s), batch_size)
    return as_class_scores(torch.from_numpy(out).float())


def batch_size_for(x: torch.Tensor, most: int = 64) -> int:
    """Samples per batch for the verification and reference passes over ``x``: as many as keep one batch's input
    under ``BATCH_ENTRIES`` entries, at most ``most``. An image model's activations grow with its input, so a big
    input (a 224x224 image: 13 per batch) runs in small batches and the peak memory stays modest."""
    per_sample = max(1, x[0].numel()) if len(x) else 1
    return max(1, min(most, BATCH_ENTRIES // per_sample))


def compare(candidate: torch.Tensor, reference: torch.Tensor, tolerance: float, what: tuple[str, str]) -> Verification:
    """Max absolute difference, the same relative to the largest reference output, and top-1 agreement."""
    if candidate.shape != reference.shape:
        raise VerificationError(f"{what[0]} returned outputs of shape {list(candidate.shape)}, "
                                f"{what[1]} {list(reference.shape)}")
    diff = (candidate.double() - reference.double()).abs()
    max_abs = float(diff.max()) if diff.numel() else 0.0
    scale = float(reference.double().abs().max()) if reference.numel() else 0.0
    max_rel = max_abs / scale if scale > 0 else (0.0 if max_abs == 0 else math.inf)
    if not math.isfinite(max_abs):
        max_rel = math.inf
    agree = float((candidate.argmax(-1) == reference.argmax(-1)).float().mean()) if reference.numel() else 1.0
    return Verification(what[0], what[1], int(reference.shape[0]), max_abs, max_rel, agree, tolerance)


# -------------------------------------------------------------------------------------------- size and speed


def file_cost(path: str | Path, weights: dict[str, np.ndarray] | None = None, proto: object | None = None) -> FileCost:
    """Bytes, gzip bytes (level 1: what zeros save on the wire, quickly) and floating-point parameters of the file
    (its float initializers that are tensors: an exporter's scalar constants, such as a 0.0 for masking, are not
    parameters); ``weights`` are its layer weights (``onnx_weights``) when they should be counted too. The file is
    read in pieces and the initializers one at a time, so a big file is never held twice."""
    from onnx import numpy_helper

    params = nonzero = 0
    for init in (proto if proto is not None else _load(path)).graph.initializer:
        array = numpy_helper.to_array(init)
        if np.issubdtype(array.dtype, np.floating) and array.ndim > 0:
            params += array.size
            nonzero += int(np.count_nonzero(array))
    stored = sum(w.size for w in weights.values()) if weights is not None else -1
    alive = sum(int(np.count_nonzero(w)) for w in weights.values()) if weights is not None else -1
    return FileCost(Path(path).stat().st_size, gzip_size(path), params, nonzero, stored, alive)


def gzip_size(path: str | Path, chunk: int = 1 << 24, threads: int | None = None) -> int:
    """Bytes of the file gzipped at level 1 (``gzip_pieces``: one valid gzip file, its pieces compressed in
    parallel), counted, never held."""
    return sum(len(piece) for piece in gzip_pieces(path, chunk, threads))


def gzip_pieces(path: str | Path, chunk: int = 1 << 24, threads: int | None = None) -> Iterator[bytes]:
    """The file as one gzip file at level 1, piece by piece: the header, each ``chunk`` bytes deflated on their own
    (a full flush ends each, so the pieces join into one valid stream, as ``pigz --independent`` writes it), the
    trailer. Joined, they are a file any gunzip reads back to the original. Independent pieces compress on
    ``threads`` threads at once (default: every CPU; zlib lets go of the GIL), at most two per thread in memory:
    level-1 deflate runs at a few tens of MB/s on float weights, so one thread would take longer than the export."""
    threads = max(1, threads or os.cpu_count() or 1)
    crc, size, pending = 0, 0, deque()
    yield _GZIP_HEADER
    with open(path, "rb") as f, ThreadPoolExecutor(threads) as pool:
        block = f.read(chunk)
        while True:
            following = f.read(chunk) if block else b""
            crc, size = zlib.crc32(block, crc), size + len(block)
            pending.append(pool.submit(_deflated, block, not following))
            while len(pending) > threads or (not following and pending):
                yield pending.popleft().result()
            if not following:
                break
            block = following
    yield struct.pack("<II", crc & 0xFFFFFFFF, size & 0xFFFFFFFF)


_GZIP_HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x04\xff"  # deflate, no name, no time, fastest, unknown OS


def _deflated(block: bytes, last: bool) -> bytes:
    packer = zlib.compressobj(1, zlib.DEFLATED, -15)  # raw deflate: the gzip header and trailer are written once
    return packer.compress(block) + packer.flush(zlib.Z_FINISH if last else zlib.Z_FULL_FLUSH)


def latency(runners: dict[str, object], inputs: np.ndarray, batches: tuple[int, ...] = LATENCY_BATCHES,
            threads: int = 1, repeats: int = 20, warmup: int = 3, budget_s: float | None = None) -> pd.DataFrame:
    """ONNX Runtime latency of each model at each batch size, the models run interleaved.

    ``runners`` maps a name to an ONNX file or an open session of one. ``inputs`` are real rows of the eval set
    (their dtype is the model's: token ids stay integers), repeated to fill a batch. Each repeat runs every model
    once, in an order that alternates between repeats, so a slow spell of the machine hits all of them alike.
    ``budget_s`` (per batch size, warm-up included) stops after fewer repeats, at least ``MIN_REPEATS``, when a
    batch size takes long; ``repeats`` says how many ran. With a budget, a batch size whose warm-up and
    ``MIN_REPEATS`` rounds would pass it (estimated from the smaller batch just measured) is halved until they fit
    (``fitting_batch``; a big image model measures at batch 8 rather than spend minutes at 32); the table's ``batch``
    is the size measured and ``attrs["notes"]`` says why. Returns
    columns ``model, batch, median_ms, q1_ms, q3_ms, min_ms, repeats, threads``.
    """
    sessions = {name: r if hasattr(r, "run") else session(r, threads) for name, r in runners.items()}
    fixed = {fixed_batch(s) for s in sessions.values()} - {None}
    rows, notes, per_sample = [], [], None
    for asked in sorted(fixed) or batches:  # a graph exported for a fixed batch size runs at that size only
        batch = asked
        if budget_s is not None and per_sample is not None and not fixed:
            batch = fitting_batch(asked, (warmup + MIN_REPEATS) * per_sample, budget_s)
        if batch != asked:
            notes.append(f"latency measured at batch {batch}, not {asked}: {warmup + MIN_REPEATS} rounds of every "
                         f"model at batch {asked} would take about {(warmup + MIN_REPEATS) * asked * per_sample:.0f} "
                         f"s, past the {budget_s:g} s budget")
        x = np.ascontiguousarray(inputs[np.arange(batch) % len(inputs)])
        times = _interleaved(sessions, x, repeats, warmup, budget_s)
        per_sample = sum(float(np.median(ts)) for ts in times.values()) / batch
        for name, ts in times.items():
            q1, median, q3 = np.percentile(np.asarray(ts) * 1e3, [25, 50, 75])
            rows.append({"model": name, "batch": batch, "median_ms": float(median), "q1_ms": float(q1),
                         "q3_ms": float(q3), "min_ms": 1e3 * min(ts), "repeats": len(ts), "threads": threads})
    table = pd.DataFrame(rows)
    table.attrs["notes"] = notes
    return table


def fitting_batch(batch: int, seconds_per_sample: float, budget_s: float) -> int:
    """``batch``, halved while ``seconds_per_sample`` times it passes ``budget_s`` (never below 2: a batch of 1 is
    measured on its own)."""
    while batch > 2 and batch * seconds_per_sample > budget_s:
        batch //= 2
    return batch


def _interleaved(sessions: dict, x: np.ndarray, repeats: int, warmup: int,
                 budget_s: float | None) -> dict[str, list[float]]:
    feeds = {name: {s.get_inputs()[0].name: x} for name, s in sessions.items()}
    times: dict[str, list[float]] = {name: [] for name in sessions}
    order, start = list(sessions), time.perf_counter()
    for r in range(warmup + repeats):
        if budget_s is not None and r >= warmup + MIN_REPEATS and time.perf_counter() - start > budget_s:
            break
        for name in order if r % 2 == 0 else order[::-1]:
            t = time.perf_counter()
            sessions[name].run(None, feeds[name])
            if r >= warmup:
                times[name].append(time.perf_counter() - t)
    return times


def speedups(table: pd.DataFrame) -> pd.DataFrame:
    """Dense against pruned per batch size: the medians with their interquartile ranges, the ratio of medians,
    and ``verdict``: ``speed-up``/``slow-down`` only when the two ranges do not overlap, else ``within noise``."""
    rows = []
    for batch, part in table.groupby("batch"):
        d, p = (part[part["model"] == m].iloc[0] for m in ("dense", "pruned"))
        verdict = ("speed-up" if p["q3_ms"] < d["q1_ms"] else "slow-down" if p["q1_ms"] > d["q3_ms"]
                   else "within noise")
        rows.append({"batch": int(batch), "dense ms": _spread(d), "pruned ms": _spread(p),
                     "ratio": d["median_ms"] / p["median_ms"], "verdict": verdict, "repeats": int(p["repeats"])})
    return pd.DataFrame(rows)


def _spread(row: pd.Series) -> str:
    return f"{row['median_ms']:.3g} ({row['q1_ms']:.3g}-{row['q3_ms']:.3g})"


def format_bytes(n: float) -> str:
    """``n`` bytes in B, KB, MB or GB (1024-based), whichever reads best."""
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    return str(n)


# -------------------------------------------------------------------------------------------------- export


@dataclass(frozen=True)
class ExportOptions:
    """How an export runs; checked at the door (``checked``).

    ``shrink_channels`` removes a channel schedule's channels (a heads or neurons schedule's heads or neurons,
    ``schedule.units``; where the model's attention code cannot take that, it is exported masked with a note) for
    real; ``bn_recalibrate`` re-estimates BatchNorm statistics after pruning (``batchnorm.recalibrate``, as Measure
    does); ``exporter`` is ``auto`` (``auto_order``: TorchScript first, dynamo first for attention models),
    ``dynamo`` or ``torchscript``; verification compares the outputs on ``verify_samples`` samples (``None``: the
    whole eval set) and fails past ``tolerance`` (relative to the largest output); latency runs one warm-up round,
    then up to ``repeats`` interleaved repeats on ``threads`` ONNX Runtime threads unless ``measure_latency`` is
    off: fewer (at least ``MIN_REPEATS``) past ``latency_budget_s`` seconds per batch size, and a smaller batch than
    32 where even those would not fit (``latency``; the report says how many and which); the taylor and activation
    criteria rank weights on ``calib_samples`` samples. ``dense_cache`` keeps the dense reference file between
    exports."""

    shrink_channels: bool = False
    bn_recalibrate: bool = False
    exporter: str = "auto"
    tolerance: float = 1e-3
    verify_samples: int | None = None
    measure_latency: bool = True
    threads: int = 1
    repeats: int = 20
    latency_budget_s: float | None = 15.0
    calib_samples: int = 256
    seed: int = 0
    device: str | torch.device = "cpu"
    dense_cache: DenseCache | None = None

    def checked(self, out: Path, data: EvalData) -> "ExportOptions":
        if out.suffix != ".onnx":
            raise ExportError(f"the output file must end in .onnx, got {out}")
        if self.exporter not in EXPORTERS:
            raise ExportError(f"unknown exporter {self.exporter!r}; choose one of {', '.join(EXPORTERS)}")
        if not (self.tolerance >= 0):
            raise ExportError(f"tolerance must be a non-negative number, got {self.tolerance!r}")
        if len(data) == 0:
            raise ExportError(f"the data {data.spec} holds no samples")
        if self.verify_samples is not None and self.verify_samples < 1:
            raise ExportError(f"verify_samples must be at least 1, got {self.verify_samples}")
        return self


@dataclass
class _Pruned:
    """What pruning gave: the model to export, the masked reference a shrunk one is checked against, the schedule
    exported, the coupled groups, the layers of the exported model, what the user should know and whether the
    model was shrunk."""

    model: nn.Module
    reference: nn.Module | None
    schedule: Schedule
    groups: list[CoupledGroup]
    layers: list[Layer]
    bn_count: int
    notes: list[str]
    shrunk: bool = False


class _Clock:
    """Seconds per step of an export, for the report."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._start = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.seconds[name] = round(now - self._start, 3)
        self._start = now


def export(model: nn.Module, schedule: Schedule, data: EvalData, out: str | Path, *, model_spec: str = "",
           **options: object) -> ExportReport:
    """Export ``model`` pruned by ``schedule`` to ``out`` (``.onnx``), verify it, measure it, write the summary.

    ``options`` are ``ExportOptions``'s fields. ``model`` is not changed. ``data`` supplies the example input, the
    calibration batches (taylor and activation criteria, BatchNorm recalibration) and the verification batches.
    Raises ``ExportError`` (or ``ScheduleError``/``ShrinkError``) for what cannot be exported and
    ``VerificationError`` when the file does not match the PyTorch pruned model within the tolerance; the rejected
    file is then moved aside to ``NAME.rejected.onnx``.

    Example::

        >>> import tempfile
        >>> from pathlib import Path
        >>> from analysis import Schedule, export, load_workload
        >>> workload = load_workload("sample:digits-mlp", "sample:digits", count=64)
        >>> out = Path(tempfile.mkdtemp()) / "mlp.onnx"
        >>> report = export(workload.model, Schedule({"fc1": 0.5}), workload.data, out, measure_latency=False)
        >>> report.mode, all(v.passed for v in report.verifications), out.is_file(), report.quality["samples"]
        ('masked', True, True, 64)
    """
    out = Path(out)
    opts = ExportOptions(**options).checked(out, data)
    clock = _Clock()
    example = data.x[:2] if len(data) > 1 else data.x[:1].repeat(2, *([1] * (data.x.dim() - 1)))
    layers = find_layers(model, example[:1].to(opts.device))
    units = schedule_layers(model, example[:1].to(opts.device), schedule.granularity, schedule.sparsities)
    schedule.validate(units)
    if opts.shrink_channels:
        check_shrinkable(schedule)
    x = data.x[:opts.verify_samples or len(data)]
    batch = batch_size_for(x)
    setup = _setup(model, units, schedule, data, example, opts)
    clock.lap("prepare")
    with tempfile.TemporaryDirectory(prefix="prunescope-export-") as tmp:
        # the dense reference first, while nothing else is held: its export is the biggest moment of memory
        dense = _dense_reference(model, example, opts.exporter, opts, Path(tmp), layers)
        dense_out = predict(model, x, batch_size=batch)
        _give_back_memory()
        clock.lap("dense reference, its size and outputs")
        pruned = _prune(model, layers, units, schedule, setup, data, example, opts)
        reference_out = None if pruned.reference is None else predict(pruned.reference, x, batch_size=batch)
        pruned.reference = None  # only its outputs are needed: its memory back before the file is made
        _give_back_memory()
        clock.lap("prune")
        used = to_onnx(pruned.model, example, out, opts.exporter)
        if used != dense.exporter:  # auto fell back: the reference is made the same way
            dense = _dense_reference(model, example, used, opts, Path(tmp), layers)
        clock.lap("export")
        runner = session(out, opts.threads)  # serves the verification and the latency run
        onnx_logits = run_onnx(out, x, min(batch, 32), runner=runner)
        verifications = _verify(onnx_logits, run_onnx(out, x[:1], 1, runner=runner), pruned.model, reference_out,
                                x, batch, opts.tolerance)
        proto = _load(out)
        stored = onnx_weights(out, pruned.layers, {l.name: l.shape for l in pruned.layers}, proto)
        table = _layer_table(stored, layers, by_weight(schedule, units), by_weight(pruned.schedule, units), pruned,
                             pruned.shrunk)
        _reject_failures(out, verifications, _weight_problems(table, schedule))
        pruned_cost = file_cost(out, stored, proto)
        del proto
        clock.lap("verify and size")
        timing = None
        if opts.measure_latency:
            timing = latency({"dense": dense.path, "pruned": runner}, data.x[:max(LATENCY_BATCHES)].numpy(),
                             threads=opts.threads, repeats=opts.repeats, warmup=1, budget_s=opts.latency_budget_s)
            clock.lap("latency")
    runner = None
    quality = _quality(dense_out, onnx_logits, None if data.y is None else data.y[:len(x)], len(data), data.task)
    report = ExportReport(
        onnx_path=out, schedule_path=out.with_suffix(".schedule.json"), summary_path=out.with_suffix(".md"),
        model_spec=model_spec, data_spec=data.spec, mode="shrunk" if pruned.shrunk else "masked",
        criterion=schedule.criterion, granularity=schedule.granularity, exporter=used, schedule=pruned.schedule,
        requested=dict(schedule.sparsities), layers=table, groups=pruned.groups, verifications=verifications,
        dense=dense.cost, pruned=pruned_cost, latency=timing, threads=opts.threads, quality=quality,
        bn_recalibrated=pruned.bn_count, seconds=clock.seconds,
        notes=pruned.notes + ([] if timing is None else timing.attrs.get("notes", [])),
        kept=_kept(pruned.layers, stored, _counted(layers, units), pruned.shrunk), dense_cached=dense.cached)
    pruned.schedule.save(report.schedule_path)
    report.summary_path.write_text(report.to_markdown())
    return report


def by_weight(schedule: Schedule, units: list[Layer]) -> Schedule:
    """``schedule`` by weight: a coupled layer's sparsity (a share of its heads or neurons) given to each of its
    parts, whose rows or columns it zeroes in that share; other layers as they are."""
    spread = {p.layer.name: schedule.sparsities[u.name] for u in units if isinstance(u, CoupledLayer)
              and u.name in schedule.sparsities for p in u.parts}
    if not spread:
        return schedule
    return Schedule({**schedule.sparsities, **spread}, schedule.criterion, schedule.granularity, schedule.meta)


@dataclass
class _Setup:
    """How the schedule will be applied: the calibration statistics the criterion needs and the model's accountant
    (its coupled groups and how each is pruned)."""

    stats: criteria.CalibrationStats | None
    accountant: Accountant


def _setup(model: nn.Module, units: list[Layer], schedule: Schedule, data: EvalData, example: torch.Tensor,
           opts: ExportOptions) -> _Setup:
    """The criterion's statistics and the accountant; raises ``ShrinkError`` for a shrink the model cannot take
    before anything long runs."""
    stats = None
    if schedule.criterion in criteria.CALIBRATED:
        stats = criteria.calibration_stats(model, units, data, schedule.criterion, opts.calib_samples,
                                           device=opts.device)
    accountant = Accountant.from_model(model, example[:1].to(opts.device), units, schedule.criterion,
                                       schedule.granularity, stats, opts.seed)
    if opts.shrink_channels and parse_granularity(schedule.granularity).structured and accountant.coupling.shrinkable:
        raise ShrinkError(accountant.coupling.shrinkable)
    return _Setup(stats, accountant)


def _prune(model: nn.Module, layers: list[Layer], units: list[Layer], schedule: Schedule, setup: _Setup,
           data: EvalData, example: torch.Tensor, opts: ExportOptions) -> _Pruned:
    """``model`` pruned as Measure prunes it, recalibrated if asked: masked, or (``shrink_channels``) shrunk next to
    its masked reference. ``units`` are what the schedule names: a transformer's coupled heads or neurons, else
    ``layers``."""
    pruned = prune(model, units, schedule, setup.accountant, setup.stats, opts.seed, shrink=False)
    work = pruned.model.to(opts.device)
    bn_count = batchnorm.recalibrate(work, data.x, device=opts.device) if opts.bn_recalibrate else 0
    work = work.cpu().eval()
    exported, refused = _shrunk(work, units, pruned, example, opts)
    shrunk = exported is not work
    exported_layers = _same_layers(exported, example[:1], layers) if shrunk else layers
    notes = pruned.notes + _bn_notes(opts, bn_count) + refused
    meta = {**pruned.schedule.meta, "export": {"mode": "shrunk" if shrunk else "masked",
                                               "requested": dict(schedule.sparsities), "resolved": pruned.notes}}
    applied = Schedule(pruned.schedule.sparsities, schedule.criterion, schedule.granularity, meta)
    groups = [g for g in setup.accountant.coupling.groups if len(g.layers) > 1 or g.kept or g.unit == "head"] \
        if parse_granularity(schedule.granularity).structured else []
    return _Pruned(exported, work if shrunk else None, applied, groups, exported_layers, bn_count, notes, shrunk)


def _same_layers(model: nn.Module, example: torch.Tensor, layers: list[Layer]) -> list[Layer]:
    """The layers of the shrunk ``model`` that ``layers`` were before shrinking (found by name: a shrunk weight may
    take an embedding's shape, which ``find_layers`` alone would leave out as the vocabulary head)."""
    names = {l.name for l in layers}
    return [l for l in find_layers(model, example, include_embeddings=True) if l.name in names]


def _shrunk(work: nn.Module, units: list[Layer], pruned: Pruned, example: torch.Tensor,
            opts: ExportOptions) -> tuple[nn.Module, list[str]]:
    """The model to export: ``work`` (the masked model) shrunk when asked (channels by the shrink plan, heads and
    neurons by ``shrink_units``), else ``work`` itself; and the one-line reason when heads or neurons could not be
    cut out (the export is then masked)."""
    if not opts.shrink_channels:
        return work, []
    if pruned.plan is not None:
        return pruned.plan.build(work), []
    try:
        return shrink_units(work, units, pruned.keep, example.cpu()), []
    except ShrinkError as exc:
        return work, [f"not shrunk, exported masked: {exc}"]


def _bn_notes(opts: ExportOptions, bn_count: int) -> list[str]:
    return ["the model has no BatchNorm: recalibration did not apply"] if opts.bn_recalibrate and not bn_count else []


def _verify(onnx_logits: torch.Tensor, onnx_one: torch.Tensor, model: nn.Module, reference_out: torch.Tensor | None,
            x: torch.Tensor, batch: int, tolerance: float) -> list[Verification]:
    """The file in ONNX Runtime against the PyTorch pruned ``model`` (batched, and at batch 1), and a shrunk model
    against its masked reference's outputs ``reference_out``; the PyTorch model runs ``batch`` samples at a time."""
    torch_logits = predict(model, x, batch_size=batch)
    checks = [compare(onnx_logits, torch_logits, tolerance, ("onnxruntime", "pytorch pruned model")),
              compare(onnx_one, torch_logits[:1], tolerance, ("onnxruntime batch 1", "pytorch pruned model"))]
    if reference_out is not None:
        checks.append(compare(torch_logits, reference_out, tolerance, ("pytorch shrunk model", "masked reference")))
    return checks


def _give_back_memory() -> None:
    """Collect garbage and hand the C heap's free pages back to the system (glibc's ``malloc_trim``; nothing
    elsewhere): the big temporaries of an export step are gone before the next step allocates its own."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _reject_failures(out: Path, verifications: list[Verification], problems: list[str]) -> None:
    """Move a file that failed verification aside and raise ``VerificationError`` saying why."""
    failed = [v for v in verifications if not v.passed]
    if not failed and not problems:
        return
    rejected = out.with_suffix(".rejected.onnx")
    out.replace(rejected)
    lines = [f"{v.candidate} vs {v.reference}: max abs diff {v.max_abs:.3g}, max rel diff {v.max_rel:.3g} "
             f"> tolerance {v.tolerance:g} (top-1 agreement {v.top1_agreement:.4f})" for v in failed]
    raise VerificationError("export failed verification: " + "; ".join(lines + problems)
                            + f"; the file was moved to {rejected}")


@dataclass
class _DenseFile:
    """The dense reference: its file, the exporter that wrote it, what it costs and whether it came from the
    cache."""

    path: Path
    exporter: str
    cost: FileCost
    cached: bool


def _dense_reference(model: nn.Module, example: torch.Tensor, exporter: str, opts: ExportOptions, tmp: Path,
                     layers: list[Layer]) -> _DenseFile:
    """The dense reference file and its cost: the cached one for this model, exporter (``auto``: the first of
    ``exporters_to_try`` with a cached file) and input shape, else a fresh export (kept in the cache when there is
    one, in ``tmp`` otherwise)."""
    if opts.dense_cache is not None:
        for name in exporters_to_try(model, exporter):
            path = opts.dense_cache.path(name, example)
            if path.is_file() and path.with_suffix(".json").is_file():
                return _DenseFile(path, name, FileCost(**json.loads(path.with_suffix(".json").read_text())), True)
    folder = tmp if opts.dense_cache is None else Path(opts.dense_cache.folder)
    folder.mkdir(parents=True, exist_ok=True)
    partial = folder / f".dense-{os.getpid()}-{time.monotonic_ns()}.onnx"
    dense = model if next(iter(model.parameters()), torch.zeros(0)).device.type == "cpu" else copy_model(model).cpu()
    try:
        used = to_onnx(dense, example, partial, exporter, full_check=False)
        path = tmp / f"dense-{used}.onnx" if opts.dense_cache is None else opts.dense_cache.path(used, example)
        partial.replace(path)
    finally:
        partial.unlink(missing_ok=True)
    _give_back_memory()
    return _DenseFile(path, used, _dense_cost(path, layers), False)


def _dense_cost(path: Path, layers: list[Layer]) -> FileCost:
    """The dense file's cost, counted and written beside it (a cached file's cost is read from there)."""
    proto = _load(path)
    cost = file_cost(path, onnx_weights(path, layers, {l.name: l.shape for l in layers}, proto), proto)
    path.with_suffix(".json").write_text(json.dumps(asdict(cost)))
    return cost


def _quality(dense_out: torch.Tensor, onnx_logits: torch.Tensor, y: torch.Tensor | None, total: int,
             task: str = CLASSIFICATION) -> dict[str, float | str | None]:
    """The task's metrics (``metric_table.task_metrics``: accuracy and top-1 agreement for a classifier, perplexity
    and next-token agreement for a causal LM, the embedding cosine for an encoder) of the exported file (its ONNX
    Runtime outputs) against the dense model's outputs ``dense_out`` (PyTorch), measured as a scan measures them
    (``Sums``).

    Keys: ``samples`` out of the ``eval_samples`` the eval set holds, ``task``, ``predictions`` (samples, or a causal
    LM's real next-token positions), ``dense_M`` and ``pruned_M`` for each metric ``M`` measured against labels,
    ``M`` for one measured against the dense model; ``dense_accuracy``, ``pruned_accuracy`` and ``agreement`` are
    always there (``None`` where the task does not measure them)."""
    base = sums_from_logits(dense_out, dense_out, y, task).metrics()
    mine = sums_from_logits(onnx_logits, dense_out, y, task)
    quality: dict[str, float | str | None] = {
        "samples": int(len(dense_out)), "eval_samples": int(total), "task": task, "predictions": int(mine.n),
        "dense_accuracy": None, "pruned_accuracy": None, "agreement": None}
    values = mine.metrics()
    for m in task_metrics(y is not None, task):
        if metric_info(m).needs_labels:
            quality.update({f"dense_{m}": base[m], f"pruned_{m}": values[m]})
        else:
            quality[m] = values[m]
    return quality


def _counted(layers: list[Layer], units: list[Layer]) -> list[Layer]:
    """The layers the schedule's totals count: the parts of a heads or neurons schedule's coupled layers (the
    attention or MLP projections), else all of ``layers``."""
    parts = {p.layer.name for u in units if isinstance(u, CoupledLayer) for p in u.parts}
    return [l for l in layers if l.name in parts] if parts else layers


def _kept(exported: list[Layer], stored: dict[str, np.ndarray], layers: list[Layer], shrunk: bool) -> dict[str, int]:
    """Layer weights and FLOPs the file keeps, of ``layers`` (those the schedule's totals count): the stored weights
    and the FLOP counter of the shrunk model, or the non-zero weights with FLOPs in proportion (as the totals count
    a masked schedule)."""
    if shrunk:
        names = {l.name for l in layers}
        exported = [l for l in exported if l.name in names]
        weights, flops = sum(l.params for l in exported), sum(l.flops for l in exported)
    else:
        alive = {n: int(np.count_nonzero(w)) for n, w in stored.items()}
        weights = sum(alive.get(l.name, l.params) for l in layers)
        flops = sum(l.flops * alive.get(l.name, l.params) // l.params for l in layers)
    return {"weights": int(weights), "flops": int(flops), "weights_total": sum(l.params for l in layers),
            "flops_total": sum(l.flops for l in layers), "layers_found": len(stored), "layers": len(exported)}


def _layer_table(stored: dict[str, np.ndarray], layers: list[Layer], requested: Schedule, exported: Schedule,
                 pruned: _Pruned, shrunk: bool) -> pd.DataFrame:
    """One row per layer: asked and exported sparsity (by weight), and what the ONNX initializers hold."""
    weights = {l.name: l.weight(pruned.model).detach() for l in pruned.layers}
    after = {l.name: l.shape[0] for l in pruned.layers}
    gran = parse_granularity(requested.granularity)
    rows = []
    for layer in layers:
        w, mine = stored.get(layer.name), weights[layer.name]
        row = {"layer": layer.name, "type": layer.kind, "requested": requested.sparsities.get(layer.name, 0.0),
               "exported": exported.sparsities.get(layer.name, 0.0),
               "torch_zero_fraction": int((mine == 0).sum()) / max(mine.numel(), 1), "found_in_onnx": w is not None,
               "onnx_zero_fraction": int(np.count_nonzero(w == 0)) / max(w.size, 1) if w is not None else None}
        if shrunk:
            row.update(out_channels=layer.shape[0], out_channels_kept=after[layer.name],
                       onnx_out_channels=int(w.shape[0]) if w is not None else None)
        if gran.has_pattern:
            row["nm_ok"] = gran.pattern_holds(torch.from_numpy(np.array(w))) if w is not None else None
        rows.append(row)
    return pd.DataFrame(rows)


def _weight_problems(table: pd.DataFrame, schedule: Schedule) -> list[str]:
    """What the weights read back from the file contradict in the schedule."""
    problems = []
    gran = parse_granularity(schedule.granularity)
    for row in table.itertuples():
        if not (row.exported > 0):
            continue
        if not row.found_in_onnx:
            problems.append(f"the weight of layer {row.layer} was not found in the ONNX file")
            continue
        if "onnx_out_channels" in table.columns:
            if row.onnx_out_channels != row.out_channels_kept:
                problems.append(f"layer {row.layer} has {row.onnx_out_channels} output channels in the file, "
                                f"expected {row.out_channels_kept}")
        elif gran.has_pattern:
            if not row.nm_ok:
                problems.append(f"layer {row.layer} lost its {gran} pattern in the file")
        elif row.onnx_zero_fraction < row.torch_zero_fraction:
            problems.append(f"layer {row.layer} has {row.onnx_zero_fraction:.4f} zeros in the file, "
                            f"{row.torch_zero_fraction:.4f} in the pruned model")
    return problems


# ---------------------------------------------------------------------------------------------------- summary


def accuracy_line(quality: dict) -> str:
    """The export's quality in words, in the task's metrics (``_quality``; their names from ``metric_table``), with
    the sample count it was measured on."""
    n, total = quality["samples"], quality.get("eval_samples", quality["samples"])
    on = f"{n} samples (the whole eval set)" if n == total else f"{n} of the eval set's {total} samples"
    return f"On {on}, the exported file in ONNX Runtime: " + "; ".join(quality_words(quality)) + "."


def quality_words(quality: dict) -> list[str]:
    """Each metric of an export's quality as a phrase (``perplexity: dense 301.2, exported file 305.1``,
    ``next-token agreement with dense 0.9833``), in the metric table's order."""
    task = quality.get("task") or CLASSIFICATION
    words = []
    for m in METRICS:
        label = metric_label(m, task)
        if quality.get(f"pruned_{m}") is not None:
            words.append(f"{label}: dense {quality[f'dense_{m}']:.4g}, exported file {quality[f'pruned_{m}']:.4g}")
        elif quality.get(m) is not None:
            words.append(f"{label} {quality[m]:.4f}")
    return words


def _markdown(r: ExportReport) -> str:
    lines = [f"# Prunescope export: {r.onnx_path.name}", "",
             f"- model: `{r.model_spec or 'model'}`, data: `{r.data_spec}`",
             f"- {r.mode} export, {r.granularity} granularity, {r.criterion} criterion, exporter {r.exporter}"
             + (f", BatchNorm recalibrated ({r.bn_recalibrated} layers)" if r.bn_recalibrated else ""),
             f"- schedule exported: `{r.schedule_path.name}`", "", accuracy_line(r.quality)]
    if r.kept:
        lines.append(f"Layer weights kept: {r.kept['weights']:,} of {r.kept['weights_total']:,}; FLOPs kept: "
                     f"{r.kept['flops']:,} of {r.kept['flops_total']:,} per sample.")
    task = r.quality.get("task") or CLASSIFICATION
    agree = metric_label("agreement", task).removesuffix(" with dense") if applies("agreement", task) else None
    lines += ["", "## Verification", "",
              f"| output | against | samples | max abs diff | max rel diff |{f' {agree} |' if agree else ''} passed |",
              f"| --- | --- | ---: | ---: | ---: |{' ---: |' if agree else ''} --- |"]
    for v in r.verifications:
        lines.append(f"| {v.candidate} | {v.reference} | {v.samples} | {v.max_abs:.3g} | {v.max_rel:.3g} | "
                     + (f"{v.top1_agreement:.4f} | " if agree else "")
                     + f"{'yes' if v.passed else 'NO'} (tol {v.tolerance:g}) |")
    lines += ["", "## Size and speed", "", _md_table(size_table(r))]
    if r.latency is not None:
        lines += ["", f"ONNX Runtime CPU latency in ms, median (interquartile range) of interleaved runs, "
                      f"{r.threads} thread(s):", "", _md_table(speedups(r.latency))]
    resolved = [g for g in r.groups if len(g.layers) > 1]
    if resolved:
        lines += ["", "## Coupled channels", "",
                  "Layers joined by residual adds or depthwise convolutions lose the same channels; each group "
                  "takes the smallest sparsity the schedule gives any of its layers.", "",
                  "| layers | size | kept whole |", "| --- | --- | --- |"]
        lines += [f"| {', '.join(g.layers)} | {g.size} | {g.kept or '-'} |" for g in resolved]
    if r.notes:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in r.notes]
    pruned_rows = r.layers[(r.layers["requested"] > 0) | (r.layers["exported"] > 0)]
    if r.mode == "shrunk":
        pruned_rows = pruned_rows.drop(columns=["torch_zero_fraction", "onnx_zero_fraction"])
    if len(pruned_rows):
        lines += ["", "## Layers", "", _md_table(pruned_rows)]
    return "\n".join(lines) + "\n"


def _md_table(df: pd.DataFrame) -> str:
    def cell(v: object) -> str:
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    rows = ["| " + " | ".join(df.columns) + " |", "|" + " --- |" * len(df.columns)]
    rows += ["| " + " | ".join(cell(v) for v in rec) + " |" for rec in df.itertuples(index=False)]
    return "\n".join(rows)


def size_table(r: ExportReport) -> pd.DataFrame:
    """Dense and pruned file side by side: sizes in words, parameters stored and non-zero, layer weights."""
    rows = []
    for name, c in (("dense", r.dense), ("pruned", r.pruned)):
        rows.append({"model": name, "file": format_bytes(c.file_bytes), "gzip": format_bytes(c.gzip_bytes),
                     "parameters stored": c.params, "parameters non-zero": c.nonzero_params,
                     "layer weights non-zero": c.nonzero_weights if c.nonzero_weights >= 0 else None})
    return pd.DataFrame(rows)
