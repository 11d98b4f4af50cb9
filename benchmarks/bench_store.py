"""The run store's overhead on a scan: the time spent in the store (fingerprints, opening the run, one
committed transaction per layer, finishing) as a fraction of the scan's time, on the bundled samples.

    OMP_NUM_THREADS=1 python benchmarks/bench_store.py [--repeats 3]

Each scan runs with the store and without it, alternating, in one process; the store's own calls are timed
directly (the end-to-end difference is also printed, but on a shared machine it is mostly noise).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from analysis.engine import ScanConfig, prepare  # noqa: E402
from analysis.sensitivity import scan  # noqa: E402
from analysis.sources import load_workload  # noqa: E402
from analysis.store import RunStore  # noqa: E402


def scan_with_store(workload, config: ScanConfig, store_path: Path) -> tuple[float, float, float]:  # noqa: ANN001
    """(total seconds, seconds inside the store, of which per-layer commits) of one fresh scan with the store."""
    in_store = commits = 0.0
    t0 = time.perf_counter()
    ctx = prepare(workload, config)
    t = time.perf_counter()
    store = RunStore(store_path)
    run = store.open_scan(workload, ctx, fresh=True)
    in_store += time.perf_counter() - t

    def sink(result) -> None:  # noqa: ANN001
        nonlocal in_store, commits
        t = time.perf_counter()
        store.add_layer(run.id, result, ctx.config)
        commits += time.perf_counter() - t
        in_store += time.perf_counter() - t

    profile = scan(workload, config, done=run.done, on_result=sink, context=ctx)
    t = time.perf_counter()
    store.finish(run.id, profile.meta)
    store.close()
    in_store += time.perf_counter() - t
    return time.perf_counter() - t0, in_store, commits


def scan_without_store(workload, config: ScanConfig) -> float:  # noqa: ANN001
    t0 = time.perf_counter()
    scan(workload, config, context=prepare(workload, config))
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s)")
    print("| model | layers | scan without store (s) | scan with store (s) | time in store (s) | store share | "
          "per-layer commits share |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "runs.sqlite"
        for name in ("digits-mlp", "digits-cnn", "digits-resnet"):
            workload = load_workload(f"sample:{name}", "sample:digits")
            config = ScanConfig()
            scan_without_store(workload, config)  # warm-up
            plain, stored, inside, commits = [], [], [], []
            for _ in range(args.repeats):
                plain.append(scan_without_store(workload, config))
                total, in_store, in_commits = scan_with_store(workload, config, path)
                stored.append(total)
                inside.append(in_store)
                commits.append(in_commits)
            layers = len(prepare(workload, config).layers)
            share = statistics.median(i / s for i, s in zip(inside, stored))
            commit_share = statistics.median(c / s for c, s in zip(commits, stored))
            print(f"| sample:{name} | {layers} | {statistics.median(plain):.3f} | {statistics.median(stored):.3f} | "
                  f"{statistics.median(inside):.4f} | {share:.2%} | {commit_share:.3%} |")


if __name__ == "__main__":
    main()
