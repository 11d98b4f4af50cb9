"""The scan driver: every layer of a prepared scan measured, here or on a Ray cluster, one finished unit at a time.

``iter_scan`` is a generator of finished ``LayerResult`` units; ``run_scan`` consumes it into a profile and hands
each unit to ``on_result``, so a run store, a progress bar or a dashboard are only sources and sinks of units
(``done`` holds the units finished earlier, which are not run again)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass

import pandas as pd

from analysis.core.layers import Layer
from analysis.core.metric_table import METRICS
from analysis.core.metrics import CLASSIC, ERROR_SUMS, Sums
from analysis.core.profile import EARLY, SensitivityProfile
from analysis.core.version import environment
from analysis.sensitivity import adaptive, cluster
from analysis.sensitivity.backends import Backend, prepare_for, ray_available, validated_config
from analysis.sensitivity.config import ScanConfig
from analysis.sensitivity.context import LayerResult, ScanContext
from analysis.sensitivity.engines import engine_report
from analysis.workload.workload import Workload


@dataclass
class Progress:
    """How far a scan is: units finished of the total, the layer just finished, and an estimate of time left."""

    done: int
    total: int
    layer: str
    elapsed: float
    eta: float | None


class LocalSource:
    """Units measured in this process, one layer after the other."""

    def __init__(self) -> None:
        self.info: dict = {"kind": "local"}

    def __enter__(self) -> "LocalSource":
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def results(self, ctx: ScanContext, todo: list[Layer]) -> Iterator[LayerResult]:
        run_layer = adaptive.runner(ctx)
        for layer in todo:
            yield run_layer(ctx, layer, None)


def source_for(backend: Backend, config: ScanConfig, samples: int) -> "LocalSource | cluster.RaySource":
    """Where the units of a scan are measured: this process, or a Ray cluster (opened when entered)."""
    if backend.kind == "local":
        return LocalSource()
    if not ray_available():
        raise ValueError("the ray backend needs Ray: pip install 'prunescope[ray]'")
    return cluster.RaySource(backend, config, samples)


def iter_scan(ctx: ScanContext, todo: list[Layer] | None = None,
              source: "LocalSource | cluster.RaySource | None" = None) -> Iterator[LayerResult]:
    """The finished units of a prepared scan, one per layer of ``todo`` (default: all its layers), each over the
    whole eval set, as they finish. Stop iterating to stop the scan (closing the iterator).

    Example::

        >>> from analysis import ScanConfig, iter_scan, load_workload, prepare
        >>> ctx = prepare(load_workload("sample:digits-mlp", "sample:digits"), ScanConfig(sparsities=(0.5,)))
        >>> [(unit.layer, unit.shard) for unit in iter_scan(ctx)]
        [('fc1', (0, 449)), ('fc2', (0, 449)), ('fc3', (0, 449))]
    """
    source = source or LocalSource()
    yield from source.results(ctx, list(ctx.layers if todo is None else todo))


def run_scan(
    workload: Workload,
    config: ScanConfig,
    backend: Backend | str = "local",
    done: dict[str, LayerResult] | None = None,
    on_result: Callable[[LayerResult], None] | None = None,
    progress: Callable[[Progress], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    context: ScanContext | None = None,
) -> SensitivityProfile:
    """Measure every selected layer at every sparsity on ``backend`` (a ``Backend`` or its kind); the profile.

    ``done`` holds layers finished earlier, which are not run again; ``on_result`` receives each newly finished
    layer (over the whole eval set, on either backend); ``should_stop`` is asked between units, and when it
    returns true the scan returns what it has so far (``meta['complete']`` is then false); ``context`` is a scan
    already prepared (``prepare_for``) for this workload and config.

    Example::

        >>> from analysis import ScanConfig, load_workload, run_scan
        >>> finished = []
        >>> profile = run_scan(load_workload("sample:digits-mlp", "sample:digits"), ScanConfig(sparsities=(0.5,)),
        ...                    "local", on_result=finished.append)
        >>> [unit.layer for unit in finished] == profile.layers
        True
    """
    t0 = time.perf_counter()
    backend = (Backend(backend) if isinstance(backend, str) else backend).validated()
    with source_for(backend, validated_config(config, backend), len(workload.data)) as source:
        t_prepare = time.perf_counter()
        ctx = context or prepare_for(workload, config, backend)
        prepare_s = time.perf_counter() - t_prepare
        results: dict[str, LayerResult] = dict(done or {})
        todo = [layer for layer in ctx.layers if layer.name not in results]
        resumed, t_run = len(ctx.layers) - len(todo), time.perf_counter()
        units = iter_scan(ctx, todo, source)
        for i in range(1, len(todo) + 1):
            if should_stop and should_stop():
                break
            result = next(units)
            results[result.layer] = result
            if on_result:
                on_result(result)
            if progress:
                elapsed = time.perf_counter() - t_run
                progress(Progress(resumed + i, len(ctx.layers), result.layer, elapsed, elapsed / i * (len(todo) - i)))
        units.close()
    profile = build_profile(ctx, workload, results, resumed, prepare_s, time.perf_counter() - t0)
    profile.meta["backend"] = source.info
    return profile


def scan(workload: Workload, config: ScanConfig, done: dict[str, LayerResult] | None = None,
         on_result: Callable[[LayerResult], None] | None = None, progress: Callable[[Progress], None] | None = None,
         should_stop: Callable[[], bool] | None = None, context: ScanContext | None = None) -> SensitivityProfile:
    """``run_scan`` in this process: every selected layer at every sparsity, a ``SensitivityProfile``.

    Example::

        >>> from analysis import ScanConfig, load_workload, scan
        >>> profile = scan(load_workload("sample:digits-mlp", "sample:digits"), ScanConfig(sparsities=(0.5, 0.9)))
        >>> profile.layers, sorted(set(profile.table["sparsity"]))
        (['fc1', 'fc2', 'fc3'], [0.0, 0.5, 0.9])
    """
    return run_scan(workload, config, "local", done, on_result, progress, should_stop, context)


def build_profile(ctx: ScanContext, workload: Workload, results: dict[str, LayerResult], resumed: int = 0,
                  prepare_s: float = 0.0, total_s: float = 0.0) -> SensitivityProfile:
    """The profile of a scan from its finished units: the tidy table and the metadata (``scan.json``)."""
    meta = {
        **describe(workload, ctx),
        "baseline": ctx.baseline().metrics(),
        "complete": all(l.name in results for l in ctx.layers),
        "resumed_layers": resumed,
        "timings": {
            "prepare_s": round(prepare_s, 4),
            "total_s": round(total_s, 4),
            "per_layer_s": {name: round(r.seconds, 4) for name, r in results.items()},
        },
        "versions": environment(),
        "engine": engine_report(ctx),
    }
    return SensitivityProfile(profile_table(ctx.layers, results), meta).with_confidence()


def profile_table(layers: list[Layer], results: dict[str, LayerResult]) -> pd.DataFrame:
    """The tidy table of finished units, one row per (layer, sparsity), layers in ``layers``' order (see the
    README for the columns; a causal LM's adds ``perplexity``, an encoder's ``embedding_cosine``;
    ``SensitivityProfile.with_confidence`` adds the intervals). ``measured`` is there when a unit flags its cells
    (adaptive scans), ``settled_early`` when a sequential scan stopped any cell before the whole eval set (``n`` is
    then the samples the cell used)."""
    records, extra = [], []
    for layer in layers:
        if layer.name not in results:
            continue
        for row in results[layer.name].rows:
            sums = Sums.from_dict(row)
            metrics = sums.metrics()
            extra += [m for m in metrics if m not in CLASSIC and m not in extra]
            records.append({
                "layer": layer.name,
                "type": layer.kind,
                "sparsity": row["sparsity"],
                "actual_sparsity": row["actual_sparsity"],
                **metrics,
                "n": sums.n,
                "correct": sums.correct,
                "agree": sums.agree,
                "loss_sum": sums.loss_sum,
                "kl_sum": sums.kl_sum,
                **{name: _recorded(getattr(sums, name)) for name in ERROR_SUMS},
                "params": layer.params,
                "flops": layer.flops,
                **{flag: bool(row[flag]) for flag in ("measured", EARLY) if flag in row},
            })
    flags = [flag for flag in ("measured", EARLY) if any(flag in r for r in records)]
    table = pd.DataFrame.from_records(records, columns=[
        "layer", "type", "sparsity", "actual_sparsity", *CLASSIC, *[m for m in METRICS if m in extra],
        "n", "correct", "agree", "loss_sum", "kl_sum", *ERROR_SUMS, "params", "flops", *flags])
    return table


def _recorded(value: float | None) -> float:
    """A sum as a table cell: NaN where the row was stored before the sum existed."""
    return float("nan") if value is None else value


def describe(workload: Workload, ctx: ScanContext) -> dict:
    """What a scan is, independent of its results: model, data, configuration and layers (``scan.json``'s core,
    also what the run store records when a run starts)."""
    config = ctx.config
    described = {
        "model": workload.model_spec,
        "data": workload.data.spec,
        "samples": len(ctx.x),
        "labelled": ctx.y is not None,
        "task": workload.task,
        "num_classes": workload.num_classes,
        "input_shape": list(workload.input_shape),
        "input_dtype": workload.input_dtype,
        "config": asdict(config),
        "criterion": config.criterion,
        "granularity": config.granularity,
        "sparsities": list(config.sparsities),
        "confidence": config.confidence,
        "layers": [layer.to_meta() for layer in ctx.layers],
        "skipped_layers": ctx.skipped,
    }
    if config.adaptive != "off":
        described["adaptive"] = adaptive.describe(ctx)
    return described
