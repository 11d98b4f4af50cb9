"""The Ray backend: the scan's units of work as tasks on long-lived Ray actors, with the local numbers.

The driver prepares the scan as the local backend does (layers, calibration statistics, dense outputs),
then puts the model and the eval set into Ray's object store once; the workers of a node map the eval set
from the node's shared store rather than copying it. Each worker actor keeps its own caches for the whole
scan and runs one layer per task:

- ``data`` split (default): worker i measures eval shard i, and every layer is a task on every worker; a
  layer is finished when all its shards are in, and its sums are the sums of the shards. Shards start at
  multiples of the batch size, so every worker evaluates exactly the batches the local scan evaluates.
- ``layer`` split: every worker measures the whole eval set and takes the next layer when it is free.

A worker that dies is restarted by Ray and its unfinished tasks run again (``max_restarts`` and
``max_task_retries``); tasks are pure, so a retry gives the same numbers.
"""

from __future__ import annotations

import copy
import io
import logging
import os
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import ray
import torch
from torch import nn

import analysis
from analysis import engine
from analysis.backends import Backend, configured_address, data_shards, prepare_for, validated_config
from analysis.criteria import CalibrationStats
from analysis.engine import LayerResult, ScanConfig, ScanContext, combine_shards
from analysis.layers import Layer
from analysis.sensitivity import Progress, SensitivityProfile, build_profile
from analysis.sources import Workload

POLL_S = 0.5


@dataclass
class _Shared:
    """What every worker needs, sent once: the model (on the CPU), the layers and the scan's settings."""

    model: nn.Module | bytes
    layers: list[Layer]
    skipped: dict[str, str]
    config: ScanConfig
    stats: CalibrationStats


@dataclass
class _EvalSet:
    """The eval set and the dense model's outputs for it, as NumPy arrays where the dtype allows: Ray maps
    those read-only from the node's shared object store, so the workers of a node share one copy."""

    x: np.ndarray | torch.Tensor
    y: np.ndarray | torch.Tensor | None
    dense_logits: np.ndarray | torch.Tensor


class ScanWorker:
    """A Ray actor that holds the model and the eval set and measures layers on a shard of it.

    It loads both from the object store on its first task (and again after a restart), so its process
    starts while the driver is still preparing the scan. Shards are given in the eval set's own
    coordinates, so an engine sees exactly what it sees in a local scan.
    """

    def __init__(self, threads: int) -> None:
        torch.set_num_threads(threads)
        self.ctx: ScanContext | None = None

    def pid(self) -> int:
        return os.getpid()

    def run(self, name: str, shard: tuple[int, int], refs: list) -> tuple[LayerResult, int]:
        """Measure layer ``name`` on ``shard``. ``refs`` holds the object references of the shared part and
        the eval set (in a list, so that Ray does not fetch them for every task)."""
        if self.ctx is None:
            self._load(*ray.get(refs))
        return self.run_layer(self.ctx, self.layers[name], shard), os.getpid()

    def _load(self, shared: _Shared, data: _EvalSet) -> None:
        config = shared.config
        device = engine.check_device("cuda" if config.device.startswith("cuda") else config.device)
        self.ctx = ScanContext(model=_unpack_model(shared.model).to(device).eval(), x=_tensor(data.x),
                               y=_tensor(data.y), dense_logits=_tensor(data.dense_logits), layers=shared.layers,
                               skipped=shared.skipped, config=config, stats=shared.stats, device=device)
        self.layers = {layer.name: layer for layer in shared.layers}
        self.run_layer = engine.ENGINES[config.engine]


def scan(
    workload: Workload,
    config: ScanConfig,
    backend: Backend,
    done: dict[str, LayerResult] | None = None,
    on_result: Callable[[LayerResult], None] | None = None,
    progress: Callable[[Progress], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    context: ScanContext | None = None,
) -> SensitivityProfile:
    """``sensitivity.scan`` over a Ray cluster: the same profile, built from units that ran on the workers.

    ``context``, when given, is the scan already prepared on this process (it is not prepared again).
    """
    config = validated_config(config, backend)
    t0 = time.perf_counter()
    started = _connect(backend)
    actors: list = []
    info: dict = {"kind": "ray", "address": backend.address, "split": backend.split,
                  "connect_s": round(time.perf_counter() - t0, 4)}
    try:
        workers = _worker_count(backend, config)
        n = len(workload.data)
        spans = data_shards(n, config.batch_size, workers) if backend.split == "data" else [(0, n)]
        options = _actor_options(config, backend)
        actors = [ray.remote(ScanWorker).options(**options).remote(1)
                  for _ in range(len(spans) if backend.split == "data" else workers)]
        pid_refs = [actor.pid.remote() for actor in actors]
        t_prepare = time.perf_counter()
        ctx = context or prepare_for(workload, config, backend)
        prepare_s = time.perf_counter() - t_prepare
        results = dict(done or {})
        todo = [layer.name for layer in ctx.layers if layer.name not in results]
        resumed = len(ctx.layers) - len(todo)
        refs = [ray.put(_shared(ctx)), ray.put(_EvalSet(_array(ctx.x), _array(ctx.y), _array(ctx.dense_logits)))]
        pids = ray.get(pid_refs)
        info.update(workers=len(actors), shards=[list(s) for s in spans],
                    workers_ready_s=round(time.perf_counter() - t0, 4))
        runner = _Runner(actors, refs, spans, backend.split, todo)
        restarts, t_run = 0, time.perf_counter()
        finished = 0
        while runner.pending:
            if should_stop and should_stop():
                break
            completed, seen = runner.collect()
            for index, pid in seen:
                if pid != pids[index]:
                    restarts, pids[index] = restarts + 1, pid
            for layer_result in completed:
                results[layer_result.layer] = layer_result
                finished += 1
                if on_result:
                    on_result(layer_result)
                if progress:
                    elapsed = time.perf_counter() - t_run
                    progress(Progress(resumed + finished, len(ctx.layers), layer_result.layer, elapsed,
                                      elapsed / finished * (len(todo) - finished)))
        info["restarts"] = restarts
    finally:
        for actor in actors:
            ray.kill(actor)
        if started:
            ray.shutdown()
    profile = build_profile(ctx, workload, results, resumed, prepare_s, time.perf_counter() - t0)
    profile.meta["backend"] = info
    return profile


class _Runner:
    """Hands out the tasks (all at once for the data split, one per free worker for the layer split) and
    yields each layer once all its shards are in."""

    def __init__(self, actors: list, refs: list, spans: list[tuple[int, int]], split: str, todo: list[str]) -> None:
        self.actors, self.refs, self.spans, self.split, self.queue = actors, refs, spans, split, list(todo)
        self.pending: dict = {}
        self.parts: dict[str, list[LayerResult]] = {}
        if split == "data":
            for name in self.queue:
                for index, (actor, span) in enumerate(zip(actors, spans)):
                    self.pending[actor.run.remote(name, span, refs)] = index
            self.queue = []
        else:
            for index in range(len(actors)):
                self._next(index)

    def _next(self, index: int) -> None:
        if self.queue:
            self.pending[self.actors[index].run.remote(self.queue.pop(0), self.spans[0], self.refs)] = index

    def collect(self) -> tuple[list[LayerResult], list[tuple[int, int]]]:
        """Wait briefly for finished tasks: the layers they completed, and (worker index, pid) of each task."""
        ready, _ = ray.wait(list(self.pending), num_returns=1, timeout=POLL_S)
        if ready:
            ready, _ = ray.wait(list(self.pending), num_returns=len(self.pending), timeout=0)
        completed, seen = [], []
        for ref in ready:
            index = self.pending.pop(ref)
            part, pid = ray.get(ref)
            seen.append((index, pid))
            if self.split == "layer":
                self._next(index)
            parts = self.parts.setdefault(part.layer, [])
            parts.append(part)
            if len(parts) == len(self.spans):
                completed.append(combine_shards(self.parts.pop(part.layer)))
        return completed, seen


def _connect(backend: Backend) -> bool:
    """Join the cluster (or start Ray here); true when this call started Ray and so must shut it down."""
    if ray.is_initialized():
        return False
    address = backend.address or configured_address()
    kwargs: dict = {"logging_level": logging.WARNING}
    if address is None:
        kwargs["include_dashboard"] = False
    else:
        kwargs["runtime_env"] = {"py_modules": [str(Path(analysis.__file__).parent)]}
    try:
        ray.init(address=address, **kwargs)
    except ConnectionError as exc:
        raise ValueError(f"cannot reach a Ray cluster at {address!r}: {exc}") from None
    return True


def _worker_count(backend: Backend, config: ScanConfig) -> int:
    """The asked-for count, or one per GPU (CUDA scans) or per CPU; never more than the cluster has."""
    resources = ray.cluster_resources()
    unit = "GPU" if config.device.startswith("cuda") else "CPU"
    have = int(resources.get(unit, 0))
    if have == 0:
        raise ValueError(f"the Ray cluster has no {unit}s; a {config.device} scan needs at least one")
    if backend.workers is not None and backend.workers > have:
        raise ValueError(f"{backend.workers} workers were asked for, but the Ray cluster has only {have} {unit}s")
    return backend.workers or have


def _actor_options(config: ScanConfig, backend: Backend) -> dict:
    gpu = config.device.startswith("cuda")
    return {"num_cpus": 0 if gpu else 1, "num_gpus": 1 if gpu else 0, "max_restarts": backend.max_retries,
            "max_task_retries": backend.max_retries}


def _shared(ctx: ScanContext) -> _Shared:
    model = ctx.model if ctx.device.type == "cpu" else copy.deepcopy(ctx.model).cpu()
    return _Shared(_pack_model(model), ctx.layers, ctx.skipped, ctx.config, ctx.stats)


def _array(t: torch.Tensor | None) -> np.ndarray | torch.Tensor | None:
    """A CPU tensor as a NumPy array (shared, not copied, by the workers of a node) where NumPy has its dtype."""
    if t is None:
        return None
    t = t.detach().cpu().contiguous()
    try:
        return t.numpy()
    except TypeError:
        return t


def _tensor(a: np.ndarray | torch.Tensor | None) -> torch.Tensor | None:
    """A tensor over an array from the object store; the array is read-only and the scan never writes it."""
    if not isinstance(a, np.ndarray):
        return a
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(a)


def _pack_model(model: nn.Module) -> nn.Module | bytes:
    """TorchScript modules cannot be pickled: they travel as the bytes ``torch.jit.save`` writes."""
    if isinstance(model, torch.jit.ScriptModule):
        buf = io.BytesIO()
        torch.jit.save(model, buf)
        return buf.getvalue()
    return model


def _unpack_model(packed: nn.Module | bytes) -> nn.Module:
    if isinstance(packed, bytes):
        return torch.jit.load(io.BytesIO(packed), map_location="cpu")
    return packed


def describe(info: dict) -> str:
    """One line about a finished Ray scan for the CLI: workers, split and restarts."""
    return (f"ray: {info.get('workers', 0)} workers, {info.get('split')} split, "
            f"{info.get('restarts', 0)} worker restarts")

