"""Time a scan on the local backend and on a local Ray cluster with 1 and 2 workers, both splits, in one run.

    python benchmarks/bench_ray.py [--repeats 2] [--count 256]

Ray starts inside a private network namespace that has only loopback (the script re-runs itself under
``unshare -n``, which needs root), so nothing listens on the machine's network. Every worker gets one CPU
and one torch thread; the local backend runs with one thread too, so "1 worker" compares like with like.
Prints a Markdown table: median seconds of the whole ``run_scan`` call (worker start, driver preparation,
the scan), the seconds until every worker answered (their start overlaps the driver's preparation), and the
compute seconds of all units added up (over all workers), and the speed-up over the local backend. The
runs are interleaved, so a change in the machine's load hits every backend alike.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _reexec_in_loopback_namespace() -> None:
    if [name for _, name in socket.if_nameindex()] == ["lo"]:
        return
    if os.environ.get("PRUNESCOPE_BENCH_NETNS"):
        sys.exit("bench_ray: the private network namespace still has other interfaces than lo; not starting Ray")
    env = dict(os.environ, PRUNESCOPE_BENCH_NETNS="1", PYTHONPATH=str(ROOT))
    inner = " ".join([sys.executable, *map(_quote, sys.argv)])
    sys.exit(subprocess.call(["unshare", "-n", "sh", "-c", f"ip link set lo up && exec {inner}"], env=env))


def _quote(arg: str) -> str:
    import shlex

    return shlex.quote(arg)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--count", type=int, default=256, help="random samples for resnet18 (default 256)")
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args()
    _reexec_in_loopback_namespace()

    import ray
    import torch

    from analysis.core.batchnorm import recalibrate
    from analysis.sensitivity.backends import Backend
    from analysis.sensitivity.config import ScanConfig
    from analysis.sensitivity.driver import run_scan
    from analysis.workload.workload import load_workload

    torch.set_num_threads(1)
    t0 = time.perf_counter()
    ray.init(num_cpus=2, include_dashboard=False, logging_level="warning")
    init_s = time.perf_counter() - t0
    print(f"torch {torch.__version__}, ray {ray.__version__}, {os.cpu_count()} cores, median of {args.repeats}; "
          f"ray.init {init_s:.1f} s (not in the times below)\n")
    cases = [("torchvision:resnet18", "random:3x32x32", args.count), ("sample:digits-resnet", "sample:digits", None)]
    runs = [("local", None, None), ("ray", 1, "data"), ("ray", 2, "data"), ("ray", 2, "layer")]
    print("| model | N | L x S | backend | workers | split | total s | workers ready s | unit compute s | "
          "speed-up vs local |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for model_spec, data_spec, count in cases:
        workload = load_workload(model_spec, data_spec, count=count)
        if model_spec.startswith("torchvision:"):
            recalibrate(workload.model, workload.data.x)
        config = ScanConfig(sparsities=(0.5, 0.9), batch_size=args.batch_size)
        seen: dict[int, list[tuple[float, dict]]] = {i: [] for i in range(len(runs))}
        for _ in range(args.repeats):  # interleaved, so a change in the machine's load hits every backend
            for i, (kind, workers, split) in enumerate(runs):
                backend = Backend(kind) if kind == "local" else Backend(kind, workers=workers, split=split)
                t = time.perf_counter()
                profile = run_scan(workload, config, backend)
                seen[i].append((time.perf_counter() - t, profile.meta))
        local_s = statistics.median(t for t, _ in seen[0])
        for i, (kind, workers, split) in enumerate(runs):
            med = statistics.median(t for t, _ in seen[i])
            ready = statistics.median(m["backend"].get("workers_ready_s", 0.0) for _, m in seen[i])
            compute = statistics.median(sum(m["timings"]["per_layer_s"].values()) for _, m in seen[i])
            meta = seen[i][0][1]
            cells = f"{len(meta['layers'])} x {len(meta['sparsities']) - 1}"
            print(f"| {model_spec} | {len(workload.data)} | {cells} | {kind} | {workers or '-'} | {split or '-'} | "
                  f"{med:.2f} | {ready:.2f} | {compute:.2f} | {local_s / med:.2f}x |", flush=True)
    ray.shutdown()


if __name__ == "__main__":
    main()
