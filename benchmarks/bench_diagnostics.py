"""What a full diagnostic costs next to the plain scan, on the bundled samples and torchvision's resnet18.

For each workload, every layer at one sparsity: the plain scan (naive engine), the diagnosis without BatchNorm
recalibration (activation shift + dead neurons) and the full diagnosis (with recalibration), timed side by side
in one process. Prints a Markdown table for BENCHMARKS.md.

    OMP_NUM_THREADS=1 python benchmarks/bench_diagnostics.py [--sparsity 0.5] [--count 64] [--threads 1]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from analysis.diagnostics.diagnosis import diagnose  # noqa: E402
from analysis.sensitivity.config import ScanConfig  # noqa: E402
from analysis.sensitivity.driver import scan  # noqa: E402
from analysis.workload.workload import load_workload  # noqa: E402


def timed(fn) -> float:  # noqa: ANN001
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sparsity", type=float, default=0.5)
    parser.add_argument("--count", type=int, default=64, help="resnet18 samples (random:3x64x64)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cases = [("sample:digits-mlp", "sample:digits", None), ("sample:digits-cnn", "sample:digits", None),
             ("sample:digits-resnet", "sample:digits", None), ("torchvision:resnet18", "random:3x64x64", args.count)]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), sparsity {args.sparsity:g}, every layer\n")
    print("| model | data | samples | layers | scan s | diagnose (no recal) s | ratio | full diagnose s | ratio |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for model, data, count in cases:
        w = load_workload(model, data, count=count)
        config = ScanConfig(sparsities=(args.sparsity,), batch_size=64)
        profile = scan(w, config)  # warm-up
        t_scan = timed(lambda: scan(w, config))
        t_shift = timed(lambda: diagnose(w, config, recalibration=False))
        t_full = timed(lambda: diagnose(w, config))
        layers = len(profile.layers)
        print(f"| {model} | {data} | {len(w.data)} | {layers} | {t_scan:.2f} | {t_shift:.2f} | {t_shift / t_scan:.1f}x "
              f"| {t_full:.2f} | {t_full / t_scan:.1f}x |", flush=True)


if __name__ == "__main__":
    main()
