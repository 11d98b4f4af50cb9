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

import logging
import os
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from analysis.core.criteria import CalibrationStats
from analysis.core.layers import Layer
from analysis.core.modules import copy_model, pack_model, unpack_model
from analysis.sensitivity.backends import Backend, configured_address, data_shards
from analysis.sensitivity.config import ScanConfig
from analysis.sensitivity.context import LayerResult, ScanContext, combine_shards
from analysis.sensitivity.device import check_device
from analysis.sensitivity.engines import ENGINES

POLL_S = 0.5
PACKAGE = Path(__file__).resolve().parents[1]  # the analysis package, shipped to the workers


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
        import ray

        if self.ctx is None:
            self._load(*ray.get(refs))
        return self.run_layer(self.ctx, self.layers[name], shard), os.getpid()

    def _load(self, shared: _Shared, data: _EvalSet) -> None:
        config = shared.config
        device = check_device("cuda" if config.device.startswith("cuda") else config.device)
        self.ctx = ScanContext(model=unpack_model(shared.model).to(device).eval(), x=_tensor(data.x),
                               y=_tensor(data.y), dense_logits=_tensor(data.dense_logits), layers=shared.layers,
                               skipped=shared.skipped, config=config, stats=shared.stats, device=device)
        self.layers = {layer.name: layer for layer in shared.layers}
        self.run_layer = ENGINES[config.engine]


class RaySource:
    """A scan's units measured on a Ray cluster: entering joins the cluster (or starts Ray here) and starts the
    workers, so their processes start while the driver prepares the scan; ``results`` hands out the tasks and
    yields each layer once all its shards are in; leaving stops the workers (and Ray, if it was started here).
    ``info`` says how it ran (workers, shards, restarts)."""

    def __init__(self, backend: Backend, config: ScanConfig, samples: int) -> None:
        self.backend, self.config, self.samples = backend, config, samples
        self.info: dict = {"kind": "ray", "address": backend.address, "split": backend.split}
        self.actors: list = []
        self.started = False

    def __enter__(self) -> "RaySource":
        import ray

        t0 = time.perf_counter()
        self.started = _connect(self.backend)
        self.info["connect_s"] = round(time.perf_counter() - t0, 4)
        try:
            workers = _worker_count(self.backend, self.config)
            n = self.samples
            self.spans = data_shards(n, self.config.batch_size, workers) if self.backend.split == "data" else [(0, n)]
            options = _actor_options(self.config, self.backend)
            count = len(self.spans) if self.backend.split == "data" else workers
            self.actors = [ray.remote(ScanWorker).options(**options).remote(1) for _ in range(count)]
            self.pid_refs = [actor.pid.remote() for actor in self.actors]
        except BaseException:
            self.__exit__()
            raise
        self.t0 = t0
        return self

    def __exit__(self, *exc: object) -> None:
        import ray

        for actor in self.actors:
            ray.kill(actor)
        if self.started:
            ray.shutdown()

    def results(self, ctx: ScanContext, todo: list[Layer]) -> Iterator[LayerResult]:
        import ray

        refs = [ray.put(_shared(ctx)), ray.put(_EvalSet(_array(ctx.x), _array(ctx.y), _array(ctx.dense_logits)))]
        pids = ray.get(self.pid_refs)
        self.info.update(workers=len(self.actors), shards=[list(s) for s in self.spans],
                         workers_ready_s=round(time.perf_counter() - self.t0, 4), restarts=0)
        runner = _Runner(self.actors, refs, self.spans, self.backend.split, [layer.name for layer in todo])
        while runner.pending:
            completed, seen = runner.collect()
            for index, pid in seen:
                if pid != pids[index]:
                    self.info["restarts"], pids[index] = self.info["restarts"] + 1, pid
            yield from completed


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
        import ray

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
    import ray

    if ray.is_initialized():
        return False
    address = backend.address or configured_address()
    kwargs: dict = {"logging_level": logging.WARNING}
    if address is None:
        kwargs["include_dashboard"] = False
    else:
        kwargs["runtime_env"] = {"py_modules": [str(PACKAGE)]}
    try:
        ray.init(address=address, **kwargs)
    except ConnectionError as exc:
        raise ValueError(f"cannot reach a Ray cluster at {address!r}: {exc}") from None
    return True


def _worker_count(backend: Backend, config: ScanConfig) -> int:
    """The asked-for count, or one per GPU (CUDA scans) or per CPU; never more than the cluster has."""
    import ray

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
    model = ctx.model if ctx.device.type == "cpu" else copy_model(ctx.model).cpu()
    return _Shared(pack_model(model), ctx.layers, ctx.skipped, ctx.config, ctx.stats)


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


def describe(info: dict) -> str:
    """One line about a finished Ray scan for the CLI: workers, split and restarts."""
    return (f"ray: {info.get('workers', 0)} workers, {info.get('split')} split, "
            f"{info.get('restarts', 0)} worker restarts")

