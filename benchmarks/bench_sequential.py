"""Sequential scans against the exact full grid: sample-evaluations, seconds and the tolerance answer per layer.

For each model, three scans of every layer on the same workload (agreement with the dense model decides, as on
unlabelled data), each from its own freshly prepared context:

- full grid: the exact scan of 0.01, 0.02, ..., 0.99 (99 pruned sparsities per layer, every sample);
- sequential: the same grid, the eval set consumed in shards of ``--shard-size`` in a fixed seeded order, a cell
  leaving the batch once its drop is known to be within (or beyond) ``--tolerance`` at ``--confidence``;
- sequential + bisect: bisection to 0.01 whose probe cells are sequential cells.

Sample-evaluations count the samples every pruned cell used (the full grid: layers x 99 x samples). "inside":
layers whose full-grid answer (``tolerance_table``) lies between the scan's reported bounds
(``max_sparsity_lo`` .. ``max_sparsity_hi``, ``adaptive.side_by_side``); "same": layers whose point answer is
the full grid's. Seconds are the scan's own (``prepare`` excluded). Run it alone on the machine:

    OMP_NUM_THREADS=1 python benchmarks/bench_sequential.py \\
        --models sample:digits-cnn,sample:digits-resnet --data random:1x8x8 --count 5000
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from analysis.sensitivity.adaptive import side_by_side  # noqa: E402
from analysis.sensitivity.config import ScanConfig, search_grid  # noqa: E402
from analysis.sensitivity.context import prepare  # noqa: E402
from analysis.sensitivity.driver import scan  # noqa: E402
from analysis.workload.workload import load_workload  # noqa: E402


def timed_scan(workload, config: ScanConfig):  # noqa: ANN001, ANN201
    ctx = prepare(workload, config)
    t0 = time.perf_counter()
    profile = scan(workload, config, context=ctx)
    return profile, time.perf_counter() - t0


def row(name: str, mode: str, profile, full, seconds: float, t_full: float) -> dict:  # noqa: ANN001
    """One line of the table: ``profile`` (an adaptive scan, or the full grid itself) against ``full``."""
    table = side_by_side(profile, full)
    spent, grid = table.attrs["scan"], table.attrs["full"]
    return {"model": name, "mode": mode, "samples": spent["sample_evaluations"],
            "ratio": grid["sample_evaluations"] / max(spent["sample_evaluations"], 1),
            "settled": f"{spent['settled_early']}/{spent['cells']}", "seconds": seconds, "speed": t_full / seconds,
            "inside": f"{int(table['inside'].sum())}/{len(table)}", "same": f"{int(table['same'].sum())}/{len(table)}"}


def bench(model: str, data: str, count: int | None, tolerance: float, shard: int, confidence: float) -> list[dict]:
    workload = load_workload(model, data, count=count)
    grid = search_grid(0.01)
    common = {"adaptive_metric": "agreement", "tolerance": tolerance, "shard_size": shard, "confidence": confidence}
    full, t_full = timed_scan(workload, ScanConfig(sparsities=grid, confidence=confidence))
    seq, t_seq = timed_scan(workload, ScanConfig(sparsities=grid, adaptive="sequential", **common))
    both, t_both = timed_scan(workload, ScanConfig(adaptive="sequential-bisect", **common))
    name = f"{model} on {data} ({len(workload.data.x)} samples, {len(full.layers)} layers)"
    return [row(name, "full grid", full, full, t_full, t_full),
            row(name, "sequential", seq, full, t_seq, t_full),
            row(name, "sequential + bisect", both, full, t_both, t_full)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="sample:digits-cnn,sample:digits-resnet")
    p.add_argument("--data", default="random:1x8x8", help="the eval set of every model (e.g. sample:digits)")
    p.add_argument("--count", type=int, default=5000, help="samples (random data; sample:digits has at most 449)")
    p.add_argument("--tolerance", type=float, default=0.01)
    p.add_argument("--shard-size", type=int, default=128)
    p.add_argument("--confidence", type=float, default=0.95)
    args = p.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s); agreement decides, drop <= "
          f"{args.tolerance:g} at {args.confidence:g} confidence; 99-point grid 0.01..0.99; shards of "
          f"{args.shard_size}")
    print("| model | mode | sample-evaluations | fewer than full | settled early | seconds | speed vs full | "
          "full answer inside bounds | same answer |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for model in args.models.split(","):
        for r in bench(model, args.data, args.count, args.tolerance, args.shard_size, args.confidence):
            print(f"| {r['model']} | {r['mode']} | {r['samples']:,} | {r['ratio']:.1f}x | {r['settled']} | "
                  f"{r['seconds']:.1f} | {r['speed']:.1f}x | {r['inside']} | {r['same']} |", flush=True)


if __name__ == "__main__":
    main()
