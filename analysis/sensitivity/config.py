"""What decides a scan's numbers (``ScanConfig``), checked at the door, adaptive modes included."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from analysis.core import criteria
from analysis.core.granularity import check_sparsity, parse_granularity
from analysis.core.intervals import ERROR_BARS, check_confidence
from analysis.core.metric_table import CHANCE_METRICS, METRICS
from analysis.sensitivity.device import check_device

ENGINE_NAMES = ("fast", "naive")


DEFAULT_SPARSITIES = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


@dataclass(frozen=True)
class ScanConfig:
    """Everything that decides a scan's numbers (plus the device and engine, which must not change them)."""

    criterion: str = "magnitude"
    granularity: str = "unstructured"
    sparsities: tuple[float, ...] = DEFAULT_SPARSITIES
    layers: tuple[str, ...] | None = None
    batch_size: int = 128
    device: str = "cpu"
    engine: str = "fast"
    seed: int = 0
    calib_samples: int = 256
    precision: str = "exact"
    chunk_size: int | None = None
    bn_recalibrate: bool = False
    bn_batches: int = 8
    adaptive: str = "off"
    collapse_at: float = 0.9
    tolerance: float = 0.01
    resolution: float = 0.01
    adaptive_metric: str | None = None
    points_per_call: int = 3
    shard_size: int = 128
    confidence: float = 0.95
    include_embeddings: bool = False  # also scan embedding tables and the vocabulary head (left out by default)

    @property
    def sequential(self) -> bool:
        """Whether the scan consumes the eval set shard by shard and stops sampling the cells it has settled."""
        return self.adaptive in SEQUENTIAL_MODES

    def validated(self) -> "ScanConfig":
        """A checked copy: known criterion, granularity and engine, sparsities in [0, 1), sorted, 0 first, and
        the adaptive settings checked (``adaptive.checked``; ``off``, the default, is the full grid)."""
        criteria.check_criterion(self.criterion)
        gran = parse_granularity(self.granularity)
        if self.engine not in ENGINE_NAMES:
            raise ValueError(f"unknown engine {self.engine!r}; choose one of {', '.join(ENGINE_NAMES)}")
        if self.batch_size <= 0:
            raise ValueError(f"batch size must be positive, got {self.batch_size}")
        if self.chunk_size is not None and self.chunk_size <= 0:
            raise ValueError(f"chunk size must be positive, got {self.chunk_size}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"unknown precision {self.precision!r}; choose one of {', '.join(PRECISIONS)}")
        if self.bn_batches <= 0:
            raise ValueError(f"BatchNorm recalibration needs at least one batch, got bn_batches={self.bn_batches}")
        if not self.sparsities:
            raise ValueError("no sparsities to scan")
        values = sorted({check_sparsity(s) for s in self.sparsities})
        if len(values) > MAX_SPARSITIES and self.adaptive not in SEARCH_MODES:  # a search makes its own grid
            raise ValueError(f"{len(values)} sparsities are too many for one scan (at most {MAX_SPARSITIES}): each "
                             "is a full evaluation per layer and the chart's axis would be unreadable; use a coarser "
                             "grid, or the bisection mode to find each layer's limit finely")
        values = gran.grid(values, default=tuple(values) == DEFAULT_SPARSITIES)
        if values[0] != 0.0:
            values = [0.0, *values]
        check_confidence(self.confidence)
        if check_device(self.device).type != "cuda" and self.precision == "tf32":
            raise ValueError("precision tf32 needs a CUDA device (--device cuda); the CPU computes float32 exactly")
        return checked(replace(self, granularity=str(gran), sparsities=tuple(values)))


PRECISIONS = ("exact", "tf32", "bf16")
MAX_SPARSITIES = 100  # a 1% grid is the finest anyone reads; a longer one is a typo or a misunderstanding


MODES = ("off", "collapse", "bisect", "sequential", "sequential-bisect")
SEQUENTIAL_MODES = ("sequential", "sequential-bisect")
SEARCH_MODES = ("bisect", "sequential-bisect")  # modes that search each layer's largest tolerated sparsity


PARAMETERS = {"collapse": ("collapse_at", "adaptive_metric", "points_per_call"),
              "bisect": ("tolerance", "resolution", "adaptive_metric", "points_per_call"),
              "sequential": ("tolerance", "adaptive_metric", "shard_size", "confidence"),
              "sequential-bisect": ("tolerance", "resolution", "adaptive_metric", "points_per_call", "shard_size",
                                    "confidence")}


FIELDS = ("adaptive", "collapse_at", "tolerance", "resolution", "adaptive_metric", "points_per_call", "shard_size")
SEQUENTIAL_FIELDS = ("shard_size", "confidence")  # added with sequential scans: in the identity of those only


def left_out_of_identity(config: "ScanConfig") -> set[str]:
    """The settings that do not decide a checked ``config``'s numbers, so a run's identity leaves them out: the
    adaptive ones for a full scan (whose identity is as it was before adaptive modes), and the sequential ones
    (the confidence level of a non-sequential scan only sets how wide its intervals are drawn) for every mode
    but the sequential ones."""
    out = set(FIELDS) if config.adaptive == "off" else set()
    return out | (set() if config.sequential else set(SEQUENTIAL_FIELDS))


def checked(config: ScanConfig) -> ScanConfig:
    """``config`` with its adaptive settings checked (``ScanConfig.validated`` calls this last).

    Settings the chosen mode does not use are put back to their defaults, so they never make two scans with
    the same numbers look different. Bisection's sparsities become its search grid.
    """
    if config.adaptive not in MODES:
        raise ValueError(f"unknown adaptive mode {config.adaptive!r}; choose one of {', '.join(MODES)}")
    defaults = ScanConfig()
    used = PARAMETERS.get(config.adaptive, ())
    config = replace(config, **{f: getattr(defaults, f) for f in FIELDS[1:] if f not in used})
    if config.adaptive == "off":
        return config
    if isinstance(config.points_per_call, bool) or not isinstance(config.points_per_call, int) \
            or config.points_per_call < 1:
        raise ValueError(f"points per call must be a positive integer, got {config.points_per_call!r}")
    allowed = CHANCE_METRICS if config.adaptive == "collapse" else tuple(ERROR_BARS) if config.sequential else METRICS
    if config.adaptive_metric is not None and config.adaptive_metric not in allowed:
        raise ValueError(f"adaptive metric {config.adaptive_metric!r} cannot drive a {config.adaptive} scan; "
                         f"choose one of {', '.join(allowed)}")
    if config.adaptive == "collapse":
        if not _number(config.collapse_at) or not 0.0 < config.collapse_at <= 1.0:
            raise ValueError(f"collapse_at {config.collapse_at!r} is outside (0, 1]: it is how far, from the dense "
                             "metric towards chance, a layer must fall to count as collapsed")
        return config
    if not _number(config.tolerance) or config.tolerance < 0:
        raise ValueError(f"tolerance {config.tolerance!r} must be a drop of 0 or more (e.g. 0.01 = 1 point)")
    if config.sequential and (isinstance(config.shard_size, bool) or not isinstance(config.shard_size, int)
                              or config.shard_size < 1):
        raise ValueError(f"shard size must be a positive integer (samples between two looks), got "
                         f"{config.shard_size!r}")
    if config.adaptive == "sequential":
        return config
    if not _number(config.resolution) or not 0.0 < config.resolution <= 0.5:
        raise ValueError(f"resolution {config.resolution!r} is outside (0, 0.5]: it is the step of the sparsity "
                         "grid the bisection searches (e.g. 0.01)")
    if parse_granularity(config.granularity).fixed_sparsity is not None:
        raise ValueError(f"granularity {config.granularity} prunes one fixed fraction of each layer: there is no "
                         "sparsity to search, use a full scan")
    return replace(config, sparsities=search_grid(config.resolution))


def _number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def search_grid(resolution: float) -> tuple[float, ...]:
    """``0, r, 2r, ...`` up to the last multiple of ``r`` below 1 (0.01 gives the 99 points 0.01 ... 0.99)."""
    top = math.ceil(round(1.0 / resolution, 9)) - 1
    return tuple(round(i * resolution, 12) for i in range(top + 1))
