"""Where a scan runs: in this process (``local``) or over a Ray cluster (``ray``); the numbers are the same.

The local backend imports nothing from Ray; Ray is an optional extra (``pip install prunescope[ray]``)."""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, replace

import torch

from analysis.sensitivity.config import ScanConfig
from analysis.sensitivity.context import ScanContext, prepare
from analysis.workload.workload import Workload

BACKENDS = ("local", "ray")


SPLITS = ("data", "layer")


_HOST_PORT = re.compile(r"^(ray://)?[A-Za-z0-9.\-\[\]:]+:\d{1,5}$")


@dataclass(frozen=True)
class Backend:
    """Which backend runs a scan and, for Ray, where the cluster is and how many workers to use.

    ``address`` is ``"auto"`` (the cluster this machine belongs to), ``HOST:PORT`` / ``ray://HOST:PORT``,
    or ``None``: the configured cluster (``PRUNESCOPE_RAY_ADDRESS``, then ``RAY_ADDRESS``) if there is one,
    else a Ray instance started on this machine for the scan. ``workers`` defaults to one per GPU when the scan
    runs on CUDA, else one per CPU of the cluster. ``split`` is how the work is cut: ``data`` (each worker
    holds one shard of the eval set and runs every layer on it; the default, see BENCHMARKS.md) or
    ``layer`` (each worker holds the whole eval set and takes layers as they come).
    """

    kind: str = "local"
    address: str | None = None
    workers: int | None = None
    split: str = "data"
    max_retries: int = 3

    def validated(self) -> "Backend":
        if self.kind not in BACKENDS:
            raise ValueError(f"unknown backend {self.kind!r}; choose one of {', '.join(BACKENDS)}")
        if self.kind == "local" and (self.address is not None or self.workers is not None):
            raise ValueError("an address and a worker count only apply to the ray backend (--backend ray)")
        if self.address is not None and self.address != "auto" and not _HOST_PORT.match(self.address):
            raise ValueError(f"bad Ray address {self.address!r}; use auto or HOST:PORT (e.g. 10.0.0.5:6379)")
        if self.workers is not None and (isinstance(self.workers, bool) or not isinstance(self.workers, int)
                                         or self.workers < 1):
            raise ValueError(f"the worker count must be a positive integer, got {self.workers!r}")
        if self.split not in SPLITS:
            raise ValueError(f"unknown split {self.split!r}; choose one of {', '.join(SPLITS)}")
        if self.max_retries < 0:
            raise ValueError(f"max_retries must be 0 or more, got {self.max_retries}")
        return self


def data_shards(n: int, batch_size: int, workers: int) -> list[tuple[int, int]]:
    """Cut ``n`` samples into at most ``workers`` contiguous shards that start at multiples of ``batch_size``.

    Whole batches are dealt out as evenly as possible, so each shard's batches are the local scan's batches.
    """
    batches = math.ceil(n / batch_size)
    count = max(1, min(workers, batches))
    bounds = [round(i * batches / count) * batch_size for i in range(count)] + [n]
    return [(lo, min(hi, n)) for lo, hi in zip(bounds, bounds[1:])]


ADDRESS_VARIABLES = ("PRUNESCOPE_RAY_ADDRESS", "RAY_ADDRESS")


def configured_address(environ: dict[str, str] | None = None) -> str | None:
    """The Ray address this installation is pointed at by its environment, or ``None``."""
    environ = os.environ if environ is None else environ
    return next((environ[name].strip() for name in ADDRESS_VARIABLES if environ.get(name, "").strip()), None)


def cluster_backend(workers: int | None = None, environ: dict[str, str] | None = None) -> Backend | None:
    """The Ray backend for the configured cluster, or ``None`` when no address is configured or Ray is not
    installed: the dashboard offers "run on cluster" only when this is not ``None``."""
    address = configured_address(environ)
    if address is None or not ray_available():
        return None
    return Backend("ray", address=address, workers=workers).validated()


def ray_available() -> bool:
    """Whether the optional Ray extra is installed (without importing it)."""
    import importlib.util

    return importlib.util.find_spec("ray") is not None


def validated_config(config: ScanConfig, backend: Backend) -> ScanConfig:
    """``config.validated()``, except that a Ray scan may ask for CUDA that only the cluster's workers have."""
    if backend.kind == "ray" and config.adaptive != "off":
        raise ValueError(f"an adaptive scan ({config.adaptive}) decides on the whole eval set, so it runs on the "
                         "local backend only; drop --backend ray or --adaptive")
    gpu_elsewhere = backend.kind == "ray" and config.device.startswith("cuda") and not torch.cuda.is_available()
    if not gpu_elsewhere:
        return config.validated()
    try:
        torch.device(config.device)
    except RuntimeError:
        raise ValueError(f"unknown device {config.device!r}; use cpu or cuda") from None
    return replace(replace(config, device="cpu").validated(), device=config.device)


def prepare_for(workload: Workload, config: ScanConfig, backend: Backend | str = "local") -> ScanContext:
    """``engine.prepare`` for a scan on ``backend``: a Ray scan on CUDA whose driver has no GPU is prepared
    on the driver's CPU (its workers measure on their GPUs)."""
    backend = Backend(backend) if isinstance(backend, str) else backend
    config = validated_config(config, backend)
    if config.device.startswith("cuda") and not torch.cuda.is_available():
        ctx = prepare(workload, replace(config, device="cpu"))
        return replace(ctx, config=replace(ctx.config, device=config.device))
    return prepare(workload, config)
