"""Time the naive scan of each sample model and of torchvision's resnet18 (the baseline later engines beat).

    python benchmarks/bench_scan.py [--threads 2] [--repeats 3]

Prints a Markdown table: model, data, layers (L), sparsities (S), samples (N), median seconds per scan,
and seconds per (layer, sparsity) cell.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from analysis.core.batchnorm import recalibrate
from analysis.sensitivity.config import ScanConfig
from analysis.sensitivity.driver import scan
from analysis.workload.workload import load_workload

CASES = [
    ("sample:digits-cnn", "sample:digits", None),
    ("sample:digits-resnet", "sample:digits", None),
    ("sample:digits-mlp", "sample:digits", None),
    ("torchvision:resnet18", "random:3x64x64", 256),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--engine", default="naive")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads, engine {args.engine}, median of {args.repeats}\n")
    print("| model | data | L | S | N | scan s | s per cell |")
    print("|---|---|---|---|---|---|---|")
    for model_spec, data_spec, count in CASES:
        workload = load_workload(model_spec, data_spec, count=count)
        if model_spec.startswith("torchvision:"):
            recalibrate(workload.model, workload.data.x)  # random init: give BatchNorm realistic statistics
        config = ScanConfig(engine=args.engine).validated()
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            profile = scan(workload, config)
            times.append(time.perf_counter() - t0)
        med = statistics.median(times)
        layers, sparsities = len(profile.layers), len(config.sparsities) - 1
        print(f"| {model_spec} | {data_spec} | {layers} | {sparsities} | {len(workload.data)} | {med:.2f} | "
              f"{med / (layers * sparsities):.4f} |")


if __name__ == "__main__":
    main()
