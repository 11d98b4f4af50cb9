"""Export a pruned model to ONNX, verify it in ONNX Runtime, and measure what pruning saved.

``export()`` applies a schedule to a copy of the model (optionally recalibrating BatchNorm), bakes the masks
into the weights, or for channel granularity with ``shrink=True`` removes the channels for real
(``analysis/shrink.py``), and writes one self-contained ``.onnx`` file with a dynamic batch dimension. Then,
always:

- it runs the file in ONNX Runtime on eval batches and compares with the PyTorch pruned model (max absolute
  and relative difference, top-1 agreement); past ``tolerance`` the export fails (``VerificationError``);
- it reads the weights back from the ONNX initializers: their sparsity, their channel counts, and for N:M
  schedules the N:M pattern itself;
- it exports the dense model too and reports file size, gzip size (what unstructured zeros save on the
  wire), parameter counts and ONNX Runtime latency at batch 1 and 32, dense and pruned side by side
  (interleaved repeats, median, the thread count stated);
- it writes the schedule that was exported (``NAME.schedule.json``) and a Markdown summary (``NAME.md``) next
  to the ``.onnx``, and returns an ``ExportReport``.

Exporter: torch 2.14 has two. The ``torch.export``-based one (``dynamo=True``, the default since 2.9) keeps
parameter names as initializer names and folds BatchNorm into the convolutions; it takes a few seconds. The
legacy TorchScript one (``dynamo=False``) is deprecated and renames folded weights, but it is faster and
exports TorchScript models. ``exporter="auto"`` tries the first and falls back to the second.
"""

from __future__ import annotations

import gzip
import math
import statistics
import tempfile
import time
import warnings
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
from analysis.core.masks import bake
from analysis.core.metrics import as_class_scores, predict
from analysis.core.modules import copy_model
from analysis.schedule import coupling as shrink
from analysis.schedule.schedule import Schedule
from analysis.workload.onnx import fixed_batch, run_batched

EXPORTERS = ("auto", "dynamo", "torchscript")
LATENCY_BATCHES = (1, 32)


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
    """What one ONNX file costs: bytes on disk, bytes gzipped, weights stored and weights that are non-zero."""

    file_bytes: int
    gzip_bytes: int
    params: int
    nonzero_params: int


@dataclass
class ExportReport:
    """Everything an export did and measured; ``to_dict`` for JSON, ``to_markdown`` for the summary file."""

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
    groups: list[shrink.ChannelGroup]
    verifications: list[Verification]
    dense: FileCost
    pruned: FileCost
    latency: pd.DataFrame | None
    threads: int
    quality: dict[str, float | None]
    bn_recalibrated: int
    seconds: dict[str, float]
    notes: list[str] = field(default_factory=list)

    @property
    def adjusted_groups(self) -> list[shrink.ChannelGroup]:
        """Coupled groups that lost a different fraction than the schedule asked of some layer."""
        return [g for g in self.groups if g.adjusted]

    def to_dict(self) -> dict:
        return {
            "onnx_path": str(self.onnx_path), "schedule_path": str(self.schedule_path),
            "summary_path": str(self.summary_path), "model": self.model_spec, "data": self.data_spec,
            "mode": self.mode, "criterion": self.criterion, "granularity": self.granularity,
            "exporter": self.exporter, "requested": self.requested, "exported": self.schedule.sparsities,
            "layers": self.layers.to_dict(orient="records"), "groups": [g.to_dict() for g in self.groups],
            "verifications": [v.to_dict() for v in self.verifications], "dense": asdict(self.dense),
            "pruned": asdict(self.pruned), "threads": self.threads,
            "latency": None if self.latency is None else self.latency.to_dict(orient="records"),
            "quality": self.quality, "bn_recalibrated": self.bn_recalibrated, "seconds": self.seconds,
            "notes": self.notes,
        }

    def to_markdown(self) -> str:
        return _markdown(self)


# -------------------------------------------------------------------------------------------------- pruning


def check_shrinkable(schedule: Schedule) -> None:
    """Only a structured schedule (channels) can be shrunk; anything else is exported masked."""
    if not parse_granularity(schedule.granularity).structured:
        raise ExportError(f"--shrink removes whole channels and needs channel granularity; this schedule has "
                          f"{schedule.granularity}. Export it masked (without --shrink)")


def _calibration(model: nn.Module, layers: list[Layer], schedule: Schedule, data: EvalData, calib_samples: int,
                 device: str | torch.device) -> criteria.CalibrationStats | None:
    if schedule.criterion not in criteria.CALIBRATED:
        return None
    return criteria.calibration_stats(model, layers, data, schedule.criterion, calib_samples, device=device)


# ---------------------------------------------------------------------------------------------------- ONNX


def to_onnx(model: nn.Module, example: torch.Tensor, path: str | Path, exporter: str = "auto") -> str:
    """Write ``model`` to ``path`` as one ONNX file with a dynamic batch dimension; return the exporter used."""
    path = Path(path)
    if callable(getattr(model, "to_onnx", None)):  # an ONNX file run in ONNX Runtime: its own graph, new weights
        import onnx

        path.parent.mkdir(parents=True, exist_ok=True)
        onnx.save(model.to_onnx(), str(path))
        _check_file(path)
        return "onnx-graph"
    if exporter not in EXPORTERS:
        raise ExportError(f"unknown exporter {exporter!r}; choose one of {', '.join(EXPORTERS)}")
    path.parent.mkdir(parents=True, exist_ok=True)
    model = model.cpu().eval()
    example = example.cpu()
    tried = ["dynamo", "torchscript"] if exporter == "auto" else [exporter]
    if isinstance(model, torch.jit.ScriptModule) and exporter == "auto":
        tried = ["torchscript"]
    failures = []
    for name in tried:
        try:
            with warnings.catch_warnings(), torch.no_grad():
                warnings.simplefilter("ignore")
                if name == "dynamo":
                    torch.onnx.export(model, (example,), str(path), input_names=["input"], output_names=["logits"],
                                      dynamo=True, dynamic_shapes=({0: torch.export.Dim("batch")},),
                                      external_data=False, verbose=False)
                else:
                    torch.onnx.export(model, (example,), str(path), input_names=["input"], output_names=["logits"],
                                      dynamo=False, opset_version=18,
                                      dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
            _check_file(path)
            return name
        except ExportError:
            raise
        except Exception as exc:  # noqa: BLE001 - an exporter failure: try the next one, report all
            failures.append(f"{name}: {type(exc).__name__}: {' '.join(str(exc).split())[:300]}")
    raise ExportError("the model could not be exported to ONNX (" + "; ".join(failures) + ")")


def _check_file(path: Path) -> None:
    import onnx

    stray = [p.name for p in path.parent.glob(path.name + "*.data")] + [
        p.name for p in path.parent.glob(path.stem + ".onnx.data")]
    if stray:
        raise ExportError(f"the exporter wrote external data ({', '.join(sorted(set(stray)))}) next to {path}; "
                          "expected one self-contained file")
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)


def _initializers(path: Path) -> dict[str, np.ndarray]:
    import onnx
    from onnx import numpy_helper

    proto = onnx.load(str(path))
    return {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer}


def onnx_weights(path: str | Path, layers: list[Layer], shapes: dict[str, tuple[int, ...]]) -> dict[str, np.ndarray]:
    """The weight of each layer as stored in the ONNX file, in PyTorch's (out, in, ...) layout.

    Found by parameter name (the dynamo exporter keeps them); otherwise, for exporters that rename folded
    weights, by position: the weight inputs of the Conv/Gemm/MatMul nodes in graph order, matched to the
    layers in execution order where the shapes agree. Layers that cannot be found are left out.
    """
    import onnx
    from onnx import numpy_helper

    proto = onnx.load(str(path))
    inits = {i.name: i for i in proto.graph.initializer}
    found: dict[str, np.ndarray] = {}

    def fitted(array: np.ndarray, shape: tuple[int, ...]) -> np.ndarray | None:
        if tuple(array.shape) == shape:
            return array
        if array.ndim == 2 and tuple(array.shape[::-1]) == shape:
            return array.T
        return None

    for layer in layers:
        if layer.param_name in inits:
            array = fitted(numpy_helper.to_array(inits[layer.param_name]), shapes[layer.name])
            if array is not None:
                found[layer.name] = array
    rest = [l for l in layers if l.name not in found]
    if rest:
        used = {n for l in layers if l.name in found for n in (l.param_name,)}
        candidates = [n.input[1] for n in proto.graph.node
                      if n.op_type in ("Conv", "Gemm", "MatMul") and len(n.input) > 1 and n.input[1] in inits
                      and n.input[1] not in used]
        arrays = [numpy_helper.to_array(inits[c]) for c in candidates]
        i = 0
        for layer in rest:
            while i < len(arrays) and fitted(arrays[i], shapes[layer.name]) is None:
                i += 1
            if i == len(arrays):
                break
            found[layer.name] = fitted(arrays[i], shapes[layer.name])
            i += 1
    return found


def _session(path: Path, threads: int):  # noqa: ANN202 - an onnxruntime.InferenceSession
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def run_onnx(path: str | Path, x: torch.Tensor, batch_size: int = 32, threads: int = 1) -> torch.Tensor:
    """The file's first output for ``x`` in ONNX Runtime, batched (a graph exported for a fixed batch size runs
    in batches of that size)."""
    session = _session(Path(path), threads)
    name = session.get_inputs()[0].name
    out = run_batched(lambda xb: session.run(None, {name: xb})[0], x.cpu().numpy(), fixed_batch(session), batch_size)
    return as_class_scores(torch.from_numpy(out).float())


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


def file_cost(path: str | Path) -> FileCost:
    path = Path(path)
    raw = path.read_bytes()
    params = nonzero = 0
    for array in _initializers(path).values():
        if np.issubdtype(array.dtype, np.floating):
            params += array.size
            nonzero += int(np.count_nonzero(array))
    return FileCost(len(raw), len(gzip.compress(raw, compresslevel=6)), params, nonzero)


def latency(paths: dict[str, Path], inputs: np.ndarray, batches: tuple[int, ...] = LATENCY_BATCHES,
            threads: int = 1, repeats: int = 20, warmup: int = 3) -> pd.DataFrame:
    """Median ONNX Runtime latency of each file at each batch size, the files run interleaved.

    ``inputs`` are real rows of the eval set (their dtype is the model's: token ids stay integers), repeated to
    fill a batch. Each repeat runs every file once, in an order that alternates between repeats, so a slow spell
    of the machine hits all of them alike. Returns columns ``model, batch, median_ms, min_ms, repeats, threads``.
    """
    sessions = {name: _session(Path(p), threads) for name, p in paths.items()}
    fixed = {fixed_batch(s) for s in sessions.values()} - {None}
    rows = []
    for batch in sorted(fixed) or batches:  # a graph exported for a fixed batch size runs at that size only
        x = np.ascontiguousarray(inputs[np.arange(batch) % len(inputs)])
        feeds = {name: {s.get_inputs()[0].name: x} for name, s in sessions.items()}
        times: dict[str, list[float]] = {name: [] for name in sessions}
        order = list(sessions)
        for r in range(warmup + repeats):
            for name in order if r % 2 == 0 else order[::-1]:
                start = time.perf_counter()
                sessions[name].run(None, feeds[name])
                if r >= warmup:
                    times[name].append(time.perf_counter() - start)
        for name, ts in times.items():
            rows.append({"model": name, "batch": batch, "median_ms": 1e3 * statistics.median(ts),
                         "min_ms": 1e3 * min(ts), "repeats": repeats, "threads": threads})
    return pd.DataFrame(rows)


# -------------------------------------------------------------------------------------------------- export


@dataclass(frozen=True)
class ExportOptions:
    """How an export runs; checked at the door (``checked``).

    ``shrink_channels`` removes a channel schedule's channels for real; ``bn_recalibrate`` re-estimates BatchNorm
    statistics after pruning (on the first ``calib_samples`` inputs); ``exporter`` is ``auto`` (dynamo, then
    TorchScript), ``dynamo`` or ``torchscript``; verification compares ``verify_samples`` outputs and fails past
    ``tolerance`` (relative to the largest output); latency runs ``repeats`` interleaved repeats on ``threads``
    ONNX Runtime threads unless ``measure_latency`` is off."""

    shrink_channels: bool = False
    bn_recalibrate: bool = False
    exporter: str = "auto"
    tolerance: float = 1e-3
    verify_samples: int = 256
    measure_latency: bool = True
    threads: int = 1
    repeats: int = 20
    calib_samples: int = 256
    seed: int = 0
    device: str | torch.device = "cpu"

    def checked(self, out: Path, data: EvalData) -> "ExportOptions":
        if out.suffix != ".onnx":
            raise ExportError(f"the output file must end in .onnx, got {out}")
        if self.exporter not in EXPORTERS:
            raise ExportError(f"unknown exporter {self.exporter!r}; choose one of {', '.join(EXPORTERS)}")
        if not (self.tolerance >= 0):
            raise ExportError(f"tolerance must be a non-negative number, got {self.tolerance!r}")
        if len(data) == 0:
            raise ExportError(f"the data {data.spec} holds no samples")
        if self.verify_samples < 1:
            raise ExportError(f"verify_samples must be at least 1, got {self.verify_samples}")
        return self


@dataclass
class _Pruned:
    """What pruning a copy of the model gave: the model to export, the reference a shrunk one is checked against,
    the schedule exported, the coupled channel groups and what the user should know."""

    model: nn.Module
    reference: nn.Module | None
    schedule: Schedule
    groups: list[shrink.ChannelGroup]
    out_channels: dict[str, tuple[int, int]]
    bn_count: int
    notes: list[str]


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
        >>> report.mode, all(v.passed for v in report.verifications), out.is_file()
        ('masked', True, True)
    """
    out = Path(out)
    opts = ExportOptions(**options).checked(out, data)
    clock = _Clock()
    work = copy_model(model).to(opts.device).eval()
    example = data.x[:2] if len(data) > 1 else data.x[:1].repeat(2, *([1] * (data.x.dim() - 1)))
    layers = find_layers(work, example[:1].to(opts.device))
    units = schedule_layers(work, example[:1].to(opts.device), schedule.granularity, schedule.sparsities)
    schedule.validate(units)
    if opts.shrink_channels:
        check_shrinkable(schedule)
    clock.lap("prepare")
    pruned = _prune(work, units, schedule, data, example, opts)
    clock.lap("prune")
    with tempfile.TemporaryDirectory(prefix="prunescope-export-") as tmp:
        used = to_onnx(pruned.model, example, out, opts.exporter)
        clock.lap("export")
        x_verify = data.x[:opts.verify_samples]
        torch_logits = predict(pruned.model, x_verify, batch_size=64)
        verifications = _verify(out, pruned, x_verify, torch_logits, opts)
        table = _layer_table(out, layers, by_weight(schedule, units), by_weight(pruned.schedule, units),
                             pruned.model, opts.shrink_channels, pruned.out_channels)
        _reject_failures(out, verifications, _weight_problems(table, schedule))
        clock.lap("verify")
        dense_path = Path(tmp) / "dense.onnx"
        to_onnx(copy_model(model).cpu().eval(), example, dense_path, used)
        costs = file_cost(dense_path), file_cost(out)
        clock.lap("dense export and sizes")
        timing = None
        if opts.measure_latency:
            timing = latency({"dense": dense_path, "pruned": out}, data.x[:max(LATENCY_BATCHES)].numpy(),
                             threads=opts.threads, repeats=opts.repeats)
            clock.lap("latency")
    quality = _quality(model, pruned.model, x_verify, None if data.y is None else data.y[:opts.verify_samples],
                       torch_logits)
    report = ExportReport(
        onnx_path=out, schedule_path=out.with_suffix(".schedule.json"), summary_path=out.with_suffix(".md"),
        model_spec=model_spec, data_spec=data.spec, mode="shrunk" if opts.shrink_channels else "masked",
        criterion=schedule.criterion, granularity=schedule.granularity, exporter=used, schedule=pruned.schedule,
        requested=dict(schedule.sparsities), layers=table, groups=pruned.groups, verifications=verifications,
        dense=costs[0], pruned=costs[1], latency=timing, threads=opts.threads, quality=quality,
        bn_recalibrated=pruned.bn_count, seconds=clock.seconds, notes=pruned.notes)
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


def _prune(work: nn.Module, layers: list[Layer], schedule: Schedule, data: EvalData, example: torch.Tensor,
           opts: ExportOptions) -> _Pruned:
    """``work`` pruned by ``schedule``: masked in place, or (``shrink_channels``) its channels removed."""
    stats = _calibration(work, layers, schedule, data, opts.calib_samples, opts.device)
    calib = data.x[: max(opts.calib_samples, 1)]
    if opts.shrink_channels:
        return _shrunk(work, layers, schedule, example, stats, calib, opts)
    bake(work, schedule.masks(work, layers, stats, opts.seed))
    bn_count = batchnorm.recalibrate(work, calib, device=opts.device) if opts.bn_recalibrate else 0
    kept = Schedule(dict(schedule.sparsities), schedule.criterion, schedule.granularity,
                    {**schedule.meta, "export": {"mode": "masked"}})
    return _Pruned(work.cpu().eval(), None, kept, [], {}, bn_count, _bn_notes(opts, bn_count))


def _shrunk(work: nn.Module, layers: list[Layer], schedule: Schedule, example: torch.Tensor,
            stats: criteria.CalibrationStats | None, calib: torch.Tensor, opts: ExportOptions) -> _Pruned:
    plan = shrink.plan(work, layers, schedule, example[:1], stats, opts.seed)
    reference = plan.masked(work)
    bn_count = batchnorm.recalibrate(reference, calib, device=opts.device) if opts.bn_recalibrate else 0
    small = plan.apply(reference.cpu())
    groups = plan.groups
    kept = Schedule(plan.effective_sparsities(), schedule.criterion, "channel",
                    {**schedule.meta, "export": {"mode": "shrunk", "requested": dict(schedule.sparsities),
                                                 "coupled_groups": [g.to_dict() for g in groups if g.note],
                                                 "removed_channels": plan.removed_channels}})
    notes = [f"{', '.join(g.layers)}: {g.note}; exported {g.sparsity:.3g} "
             f"(asked {', '.join(f'{v:g}' for v in g.requested.values())})"
             for g in groups if g.note and g.removed != round(max(g.requested.values()) * g.channels)]
    return _Pruned(small, reference.cpu().eval(), kept, groups, plan.out_channels, bn_count,
                   notes + _bn_notes(opts, bn_count))


def _bn_notes(opts: ExportOptions, bn_count: int) -> list[str]:
    return ["the model has no BatchNorm: recalibration did not apply"] if opts.bn_recalibrate and not bn_count else []


def _verify(out: Path, pruned: _Pruned, x: torch.Tensor, torch_logits: torch.Tensor,
            opts: ExportOptions) -> list[Verification]:
    """The file in ONNX Runtime against the PyTorch pruned model (batched, and at batch 1), and a shrunk model
    against its masked reference."""
    checks = [compare(run_onnx(out, x, threads=opts.threads), torch_logits, opts.tolerance,
                      ("onnxruntime", "pytorch pruned model")),
              compare(run_onnx(out, x[:1], batch_size=1, threads=opts.threads), torch_logits[:1], opts.tolerance,
                      ("onnxruntime batch 1", "pytorch pruned model"))]
    if pruned.reference is not None:
        checks.append(compare(torch_logits, predict(pruned.reference, x, batch_size=64), opts.tolerance,
                              ("pytorch shrunk model", "masked reference")))
    return checks


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


def _quality(dense: nn.Module, pruned: nn.Module, x: torch.Tensor, y: torch.Tensor | None,
             pruned_logits: torch.Tensor) -> dict[str, float | None]:
    dense_logits = predict(copy_model(dense).cpu().eval(), x, batch_size=64)
    pred, dense_pred = pruned_logits.argmax(-1), dense_logits.argmax(-1)
    return {
        "samples": int(len(x)),
        "dense_accuracy": None if y is None else float((dense_pred == y).float().mean()),
        "pruned_accuracy": None if y is None else float((pred == y).float().mean()),
        "agreement": float((pred == dense_pred).float().mean()),
    }


def _layer_table(path: Path, layers: list[Layer], requested: Schedule, exported: Schedule, pruned: nn.Module,
                 shrunk: bool, out_channels: dict[str, tuple[int, int]]) -> pd.DataFrame:
    """One row per layer: asked and exported sparsity, and what the ONNX initializers hold."""
    params = dict(pruned.named_parameters())
    weights = {l.name: params[l.param_name].detach() for l in layers}
    shapes = {name: tuple(w.shape) for name, w in weights.items()}
    stored = onnx_weights(path, layers, shapes)
    gran = parse_granularity(requested.granularity)
    rows = []
    for layer in layers:
        w = stored.get(layer.name)
        row = {"layer": layer.name, "type": layer.kind, "requested": requested.sparsities.get(layer.name, 0.0),
               "exported": exported.sparsities.get(layer.name, 0.0),
               "torch_zero_fraction": int((weights[layer.name] == 0).sum()) / max(weights[layer.name].numel(), 1), "found_in_onnx": w is not None,
               "onnx_zero_fraction": int(np.count_nonzero(w == 0)) / max(w.size, 1) if w is not None else None}
        if shrunk:
            before, after = out_channels.get(layer.name, (layer.shape[0], layer.shape[0]))
            row.update(out_channels=before, out_channels_kept=after,
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
        pruned = row.exported > 0 or row.requested > 0
        if not pruned:
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


def _fmt_bytes(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    return str(n)


def _markdown(r: ExportReport) -> str:
    lines = [f"# Prunescope export: {r.onnx_path.name}", "",
             f"- model: `{r.model_spec or 'model'}`, data: `{r.data_spec}`",
             f"- {r.mode} export, {r.granularity} granularity, {r.criterion} criterion, exporter {r.exporter}"
             + (f", BatchNorm recalibrated ({r.bn_recalibrated} layers)" if r.bn_recalibrated else ""),
             f"- schedule exported: `{r.schedule_path.name}`", ""]
    q = r.quality
    if q["dense_accuracy"] is not None:
        lines.append(f"Accuracy on {q['samples']} samples: dense {q['dense_accuracy']:.4f}, "
                     f"pruned {q['pruned_accuracy']:.4f}; top-1 agreement with dense {q['agreement']:.4f}.")
    else:
        lines.append(f"Top-1 agreement with the dense model on {q['samples']} samples: {q['agreement']:.4f}.")
    lines += ["", "## Verification", "", "| output | against | samples | max abs diff | max rel diff | top-1 agreement | passed |",
              "| --- | --- | ---: | ---: | ---: | ---: | --- |"]
    for v in r.verifications:
        lines.append(f"| {v.candidate} | {v.reference} | {v.samples} | {v.max_abs:.3g} | {v.max_rel:.3g} | "
                     f"{v.top1_agreement:.4f} | {'yes' if v.passed else 'NO'} (tol {v.tolerance:g}) |")
    lines += ["", "## Size and speed", "", "| | file | gzip | parameters | non-zero |", "| --- | ---: | ---: | ---: | ---: |"]
    for name, c in (("dense", r.dense), ("pruned", r.pruned)):
        lines.append(f"| {name} | {_fmt_bytes(c.file_bytes)} | {_fmt_bytes(c.gzip_bytes)} | {c.params:,} | {c.nonzero_params:,} |")
    if r.latency is not None:
        lines += ["", f"ONNX Runtime CPU latency, median of {int(r.latency['repeats'].iloc[0])} interleaved runs, "
                      f"{r.threads} thread(s):", "", "| batch | dense ms | pruned ms | speed-up |", "| ---: | ---: | ---: | ---: |"]
        wide = r.latency.pivot(index="batch", columns="model", values="median_ms")
        for batch, row in wide.iterrows():
            lines.append(f"| {batch} | {row['dense']:.3f} | {row['pruned']:.3f} | {row['dense'] / row['pruned']:.2f}x |")
    if r.groups:
        coupled = [g for g in r.groups if g.note]
        if coupled:
            lines += ["", "## Coupled channels", "",
                      "Layers joined by residual adds or depthwise convolutions lose the same channels; each group "
                      "loses the smallest sparsity the schedule gives any of its layers.", "",
                      "| layers | channels | asked | removed | note |", "| --- | ---: | --- | ---: | --- |"]
            for g in coupled:
                asked = ", ".join(f"{v:g}" for v in g.requested.values())
                lines.append(f"| {', '.join(g.layers)} | {g.channels} | {asked} | {g.removed} ({g.sparsity:.3g}) | {g.note} |")
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
