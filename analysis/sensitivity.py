"""The sensitivity scan: prune each layer alone at each sparsity and measure; the result is a profile.

``scan()`` is pure: it takes the units already finished (``done``) and calls ``on_result`` for each unit it
finishes, so a run store, a progress bar or a cluster backend are only sources and sinks of units.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pandas as pd

from analysis import engine
from analysis.engine import LayerResult, ScanConfig, ScanContext
from analysis.metrics import Sums
from analysis.sources import Workload

METRICS = ("accuracy", "loss", "agreement", "kl", "logit_cosine", "logit_rel_l2")
HIGHER_IS_BETTER = {"accuracy": True, "agreement": True, "loss": False, "kl": False, "logit_cosine": True,
                    "logit_rel_l2": False}


@dataclass
class Progress:
    """How far a scan is: units finished of the total, the layer just finished, and an estimate of time left."""

    done: int
    total: int
    layer: str
    elapsed: float
    eta: float | None


@dataclass
class SensitivityProfile:
    """A tidy table, one row per (layer, sparsity), and the metadata that says how it was measured."""

    table: pd.DataFrame
    meta: dict = field(default_factory=dict)

    @property
    def layers(self) -> list[str]:
        return list(dict.fromkeys(self.table["layer"]))

    @property
    def labelled(self) -> bool:
        return bool(self.meta.get("labelled", self.table["accuracy"].notna().any()))

    @property
    def default_metric(self) -> str:
        return "accuracy" if self.labelled else "agreement"

    def baseline(self, metric: str) -> float:
        return float(self.meta["baseline"][metric])

    def drop(self, metric: str | None = None) -> pd.DataFrame:
        """The table with a ``drop`` column: how much worse than dense each cell is (positive = worse)."""
        metric = metric or self.default_metric
        df = self.table.copy()
        base = self.baseline(metric)
        df["drop"] = (base - df[metric]) if HIGHER_IS_BETTER[metric] else (df[metric] - base)
        return df

    def save(self, out_dir: str | Path) -> Path:
        """Write ``sensitivity.csv`` and ``scan.json`` into ``out_dir``."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        self.table.to_csv(out / "sensitivity.csv", index=False)
        (out / "scan.json").write_text(json.dumps(self.meta, indent=2, default=str) + "\n")
        return out

    @classmethod
    def load(cls, path: str | Path) -> "SensitivityProfile":
        """Read a profile folder written by ``save`` (or the ``prunescope scan`` command)."""
        p = Path(path)
        csv, meta = p / "sensitivity.csv", p / "scan.json"
        if not csv.is_file() or not meta.is_file():
            raise FileNotFoundError(f"{p} is not a scan folder: it needs sensitivity.csv and scan.json")
        table = pd.read_csv(csv, dtype={"layer": str, "type": str})  # layers named 0, 1, ... stay names
        missing = {"layer", "sparsity", "accuracy", "loss", "agreement"} - set(table.columns)
        if missing:
            raise ValueError(f"{csv} lacks the columns {', '.join(sorted(missing))}")
        return cls(table, json.loads(meta.read_text()))


def units(ctx: ScanContext) -> list[tuple[str, tuple[int, int]]]:
    """The scan's units of work: one per layer over the whole eval set."""
    return [(layer.name, (0, len(ctx.x))) for layer in ctx.layers]


def scan(
    workload: Workload,
    config: ScanConfig,
    done: dict[str, LayerResult] | None = None,
    on_result: Callable[[LayerResult], None] | None = None,
    progress: Callable[[Progress], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    context: ScanContext | None = None,
) -> SensitivityProfile:
    """Measure every selected layer at every sparsity; layers already in ``done`` are not recomputed.

    ``should_stop`` is asked between units; when it returns true the scan returns what it has so far
    (``meta['complete']`` is then false).
    """
    t0 = time.perf_counter()
    ctx = context or engine.prepare(workload, config)
    config = ctx.config
    prepare_s = time.perf_counter() - t0
    from analysis import adaptive

    run_layer = adaptive.runner(ctx)
    results: dict[str, LayerResult] = {k: v for k, v in (done or {}).items()}
    todo = [layer for layer in ctx.layers if layer.name not in results]
    resumed = len(ctx.layers) - len(todo)
    total, t_run = len(ctx.layers), time.perf_counter()
    for i, layer in enumerate(todo, start=1):
        if should_stop and should_stop():
            break
        result = run_layer(ctx, layer, None)
        results[layer.name] = result
        if on_result:
            on_result(result)
        if progress:
            elapsed = time.perf_counter() - t_run
            eta = elapsed / i * (len(todo) - i)
            progress(Progress(resumed + i, total, layer.name, elapsed, eta))
    return build_profile(ctx, workload, results, resumed, prepare_s, time.perf_counter() - t0)


def build_profile(ctx: ScanContext, workload: Workload, results: dict[str, LayerResult], resumed: int = 0,
                  prepare_s: float = 0.0, total_s: float = 0.0) -> SensitivityProfile:
    """Assemble the tidy table and metadata from finished units (summing shards of the same layer)."""
    records = []
    for layer in ctx.layers:
        if layer.name not in results:
            continue
        for row in results[layer.name].rows:
            sums = Sums.from_dict(row)
            records.append({
                "layer": layer.name,
                "type": layer.kind,
                "sparsity": row["sparsity"],
                "actual_sparsity": row["actual_sparsity"],
                **sums.metrics(),
                "n": sums.n,
                "correct": sums.correct,
                "agree": sums.agree,
                "loss_sum": sums.loss_sum,
                "kl_sum": sums.kl_sum,
                "params": layer.params,
                "flops": layer.flops,
                **({"measured": bool(row["measured"])} if "measured" in row else {}),
            })
    table = pd.DataFrame.from_records(records, columns=[
        "layer", "type", "sparsity", "actual_sparsity", "accuracy", "loss", "agreement", "kl", "logit_cosine",
        "logit_rel_l2", "n", "correct", "agree", "loss_sum", "kl_sum", "params", "flops",
        *(["measured"] if any("measured" in r for r in records) else [])])
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
        "versions": engine.environment(),
        "engine": engine.engine_report(ctx) if isinstance(ctx, ScanContext) else {},
    }
    return SensitivityProfile(table, meta)


def describe(workload: Workload, ctx: ScanContext) -> dict:
    """What a scan is, independent of its results: model, data, configuration and layers (``scan.json``'s core,
    also what the run store records when a run starts)."""
    from analysis import adaptive

    config = ctx.config
    described = {
        "model": workload.model_spec,
        "data": workload.data.spec,
        "samples": len(ctx.x),
        "labelled": ctx.y is not None,
        "num_classes": workload.num_classes,
        "input_shape": list(workload.input_shape),
        "input_dtype": workload.input_dtype,
        "config": asdict(config),
        "criterion": config.criterion,
        "granularity": config.granularity,
        "sparsities": list(config.sparsities),
        "layers": [{"name": l.name, "type": l.kind, "shape": list(l.shape), "params": l.params, "flops": l.flops}
                   for l in ctx.layers],
        "skipped_layers": ctx.skipped,
    }
    if config.adaptive != "off":
        described["adaptive"] = adaptive.describe(ctx)
    return described


def tolerance_table(profile: SensitivityProfile, max_drop: float = 0.01, metric: str | None = None) -> pd.DataFrame:
    """Layers ranked by tolerance: the largest measured sparsity whose drop stays within ``max_drop``.

    A layer is only as tolerant as its first sparsity that breaks the limit: a drop that recovers at a
    higher sparsity does not count.
    """
    metric = metric or profile.default_metric
    df = profile.drop(metric)
    rows = []
    for layer in profile.layers:
        cells = df[df["layer"] == layer].sort_values("sparsity")
        tolerated = 0.0
        for _, cell in cells.iterrows():
            if cell["drop"] > max_drop + 1e-12:
                break
            tolerated = float(cell["sparsity"])
        worst = cells.iloc[-1]
        rows.append({
            "layer": layer,
            "type": cells["type"].iloc[0],
            "params": int(cells["params"].iloc[0]),
            "max_sparsity": tolerated,
            f"{metric}@max": float(worst[metric]),
            "max_tested": float(worst["sparsity"]),
        })
    out = pd.DataFrame(rows)
    return out.sort_values(["max_sparsity", "params"], ascending=[True, False], kind="stable").reset_index(drop=True)
