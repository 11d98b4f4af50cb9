"""Export benchmark: dense vs pruned ONNX size and ONNX Runtime latency, and the verification differences.

For each model, a uniform channel schedule at several sparsities is exported shrunk (channels removed), and
one unstructured and one 2:4 schedule are exported masked, each next to a fresh dense export of the same
model. Latencies are medians of interleaved runs (dense and pruned alternate) in one process.

    OMP_NUM_THREADS=1 python benchmarks/bench_export.py [--repeats 10] [--threads 1] [--out bench_export.csv]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch

from analysis.core.granularity import parse_granularity, supports
from analysis.core.layers import find_layers
from analysis.deploy.export import export
from analysis.schedule.schedule import Schedule
from analysis.workload.workload import load_workload

MODELS = [
    ("torchvision:resnet18", "random:3x128x128"),
    ("torchvision:mobilenet_v3_small", "random:3x128x128"),
    ("sample:digits-resnet", "sample:digits"),
    ("sample:digits-cnn", "sample:digits"),
]
CHANNEL_SPARSITIES = (0.25, 0.5, 0.75)


def _runs(layers) -> list[tuple[str, float, bool]]:
    runs = [("channel", s, True) for s in CHANNEL_SPARSITIES]
    runs += [("unstructured", 0.5, False), ("2:4", 0.5, False)]
    return runs


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--count", type=int, default=64, help="verification samples")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for model_spec, data_spec in MODELS:
            w = load_workload(model_spec, data_spec, count=args.count)
            layers = find_layers(w.model, w.data.x[:1])
            for gran, sparsity, shrink in _runs(layers):
                g = parse_granularity(gran)
                names = {l.name: sparsity for l in layers if supports(g, l.shape) is None}
                schedule = Schedule(names, "l1", gran)
                start = time.perf_counter()
                r = export(w.model, schedule, w.data, Path(tmp) / "m.onnx", shrink_channels=shrink,
                           repeats=args.repeats, threads=args.threads, verify_samples=args.count)
                total = time.perf_counter() - start
                lat = r.latency.pivot(index="batch", columns="model", values="median_ms")
                v = {x.candidate: x for x in r.verifications}
                shrunk = v.get("pytorch shrunk model")
                rows.append({
                    "model": model_spec.split(":")[1], "input": data_spec.split(":")[1], "schedule": gran,
                    "asked": sparsity, "mode": r.mode, "exporter": r.exporter,
                    "params_kept": r.pruned.nonzero_params / r.dense.nonzero_params,
                    "dense_MB": r.dense.file_bytes / 2**20, "pruned_MB": r.pruned.file_bytes / 2**20,
                    "dense_gz_MB": r.dense.gzip_bytes / 2**20, "pruned_gz_MB": r.pruned.gzip_bytes / 2**20,
                    "b1_dense_ms": lat.loc[1, "dense"], "b1_pruned_ms": lat.loc[1, "pruned"],
                    "b1_speedup": lat.loc[1, "dense"] / lat.loc[1, "pruned"],
                    "b32_dense_ms": lat.loc[32, "dense"], "b32_pruned_ms": lat.loc[32, "pruned"],
                    "b32_speedup": lat.loc[32, "dense"] / lat.loc[32, "pruned"],
                    "ort_max_rel": v["onnxruntime"].max_rel, "ort_top1": v["onnxruntime"].top1_agreement,
                    "shrunk_vs_masked_max_rel": shrunk.max_rel if shrunk else None,
                    "coupled_adjusted": len(r.adjusted_groups),
                    "export_s": r.seconds.get("export", 0.0), "total_s": total,
                })
                print(pd.DataFrame(rows[-1:]).to_string(index=False, header=len(rows) == 1, float_format="%.4g"),
                      flush=True)
    df = pd.DataFrame(rows)
    print(f"\nthreads={args.threads}, repeats={args.repeats}, torch {torch.__version__}")
    print(df.to_markdown(index=False, floatfmt=".3g") if _tabulate() else df.to_string(index=False))
    if args.out:
        df.to_csv(args.out, index=False)


def _tabulate() -> bool:
    try:
        import tabulate  # noqa: F401
    except ImportError:
        return False
    return True


if __name__ == "__main__":
    main()
