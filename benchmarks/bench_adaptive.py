"""Adaptive scans against the exact full-grid scan: cells evaluated, seconds, speed ratio, and error.

For each model, three scans of every layer on the same workload and settings (agreement with the dense model
decides, as on unlabelled data), each from its own freshly prepared context so none reuses another's masks:

- full: the exact scan of the grid 0.01, 0.02, ..., 0.99 (99 pruned sparsities per layer);
- collapse: the same grid, stopping a layer once it has collapsed (``--collapse-at``); error = the largest and
  the mean absolute difference between a filled cell's agreement and the full scan's measured agreement there;
- bisect: the largest sparsity within ``--tolerance`` agreement drop, to 0.01; error = |found - the full grid's
  answer (``tolerance_table``)| per layer, and how many layers it got exactly.

Seconds are the scan's own (``prepare`` excluded: the same for all three). Run it alone on the machine:

    OMP_NUM_THREADS=1 python benchmarks/bench_adaptive.py \\
        --models sample:digits-cnn,sample:digits-resnet,torchvision:resnet18
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from analysis.core.profile import tolerance_table  # noqa: E402
from analysis.sensitivity import adaptive  # noqa: E402
from analysis.sensitivity.config import (
    ScanConfig,  # noqa: E402
    search_grid,
)
from analysis.sensitivity.context import prepare  # noqa: E402
from analysis.sensitivity.driver import scan  # noqa: E402
from analysis.workload.workload import load_workload  # noqa: E402

DATA = {"sample": ("sample:digits", None), "torchvision": ("random:3x32x32", 128)}


def timed_scan(workload, config: ScanConfig):  # noqa: ANN001, ANN201
    ctx = prepare(workload, config)
    t0 = time.perf_counter()
    profile = scan(workload, config, context=ctx)
    return profile, time.perf_counter() - t0


def bench(model: str, count: int | None, collapse_at: float, tolerance: float, k: int) -> list[dict]:
    data, default_count = DATA[model.split(":")[0]]
    workload = load_workload(model, data, count=count or default_count)
    grid = search_grid(0.01)
    common = {"adaptive_metric": "agreement", "points_per_call": k}
    full, t_full = timed_scan(workload, ScanConfig(sparsities=grid))
    collapsed, t_col = timed_scan(workload, ScanConfig(sparsities=grid, adaptive="collapse", collapse_at=collapse_at,
                                                       **common))
    found, t_bis = timed_scan(workload, ScanConfig(adaptive="bisect", tolerance=tolerance, **common))

    layers, pruned = len(full.layers), len(grid) - 1
    exact = full.table.set_index(["layer", "sparsity"])["agreement"]
    cells = collapsed.table[collapsed.table["sparsity"] > 0]
    filled = cells[~cells["measured"]].set_index(["layer", "sparsity"])["agreement"]
    err = (filled - exact.loc[filled.index]).abs()
    answer = tolerance_table(full, tolerance, "agreement").set_index("layer")["max_sparsity"]
    got = adaptive.bisect_table(found).set_index("layer")
    miss = (got["max_sparsity"] - answer.loc[got.index]).abs()
    name = f"{model} ({len(workload.data.x)} samples, {layers} layers)"
    return [
        {"model": name, "mode": "full grid", "cells": layers * pruned, "seconds": t_full, "speed": 1.0, "error": "exact"},
        {"model": name, "mode": f"collapse at {collapse_at:g}", "cells": int(cells["measured"].sum()),
         "seconds": t_col, "speed": t_full / t_col,
         "error": (f"{len(filled)} filled cells: max {err.max():.3f}, mean {err.mean():.3f}" if len(filled)
                   else "no layer collapsed")},
        {"model": name, "mode": f"bisect, drop <= {tolerance:g}", "cells": int(got["evaluations"].sum()),
         "seconds": t_bis, "speed": t_full / t_bis,
         "error": f"{int((miss < 1e-9).sum())}/{layers} layers exact, max abs diff {miss.max():.2f}"},
    ]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="sample:digits-cnn,sample:digits-resnet,torchvision:resnet18")
    p.add_argument("--count", type=int, default=None, help="samples (default: all digits; 128 random images)")
    p.add_argument("--collapse-at", type=float, default=0.9)
    p.add_argument("--tolerance", type=float, default=0.01)
    p.add_argument("--points-per-call", type=int, default=3)
    args = p.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s); agreement decides; "
          f"99-point grid 0.01..0.99; {args.points_per_call} sparsities per engine call")
    print("| model | mode | cells evaluated | seconds | speed vs full | error vs the full grid |")
    print("| --- | --- | ---: | ---: | ---: | --- |")
    for model in args.models.split(","):
        for r in bench(model, args.count, args.collapse_at, args.tolerance, args.points_per_call):
            print(f"| {r['model']} | {r['mode']} | {r['cells']} | {r['seconds']:.1f} | {r['speed']:.1f}x | "
                  f"{r['error']} |", flush=True)


if __name__ == "__main__":
    main()
