"""The CUDA path in one run: exact mode against the CPU, TF32/bf16 error and speed, the fast engine at 224x224.

Three parts, each appended to ``--out`` (JSON lines) as soon as it finishes, so a run cut short keeps what it did:

1. exact: the same scans (CLI ``prunescope scan``, fast engine, exact precision) on the CPU and on CUDA, and the
   naive engine on CUDA; per cell, are the counts (correct, agree) identical, and how far apart are the losses?
2. precision: the fast scan at ``tf32`` and at ``bf16`` next to the exact fast scan on CUDA (bench_engine's
   ``--precision-error``): speed-up and error per cell.
3. ratio: naive vs fast engine on CUDA at 224x224 (bench_engine's side-by-side benchmark with its bounds).

    python benchmarks/bench_cuda.py --out cuda.jsonl            # on a machine with a CUDA GPU
    python benchmarks/bench_cuda.py --smoke --out smoke.jsonl   # tiny sizes, CPU as the second device
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
import torchvision

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_engine  # noqa: E402

from analysis.cli import main as cli  # noqa: E402
from analysis.sensitivity.config import ScanConfig  # noqa: E402

KEY = ["layer", "sparsity"]


@dataclass(frozen=True)
class Case:
    """One exact-mode comparison: a workload and the scan options that differ from the defaults."""

    model: str
    data: str
    count: int
    extra: tuple[str, ...] = ()


def scan(case: Case, device: str, engine: str, folder: Path, threads: int) -> tuple[pd.DataFrame, float]:
    """Scan ``case`` through the CLI on ``device`` with ``engine``; the table and the seconds it took."""
    out = folder / f"{device}-{engine}"
    args = ["scan", "--model", case.model, "--data", case.data, "--count", str(case.count), "--engine", engine,
            "--device", device, "--threads", str(threads), "--no-store", "--quiet", "--fresh", "--out", str(out),
            *case.extra]
    t0 = time.perf_counter()
    if cli(args) != 0:
        raise SystemExit(f"scan failed: {' '.join(args)}")
    return pd.read_csv(out / "sensitivity.csv"), time.perf_counter() - t0


def differences(a: pd.DataFrame, b: pd.DataFrame) -> dict:
    """Cells whose counts differ between two scans of one workload, and the largest relative loss difference."""
    m = a.merge(b, on=KEY, suffixes=("_a", "_b"))
    counts = (m["correct_a"] != m["correct_b"]) | (m["agree_a"] != m["agree_b"])
    rel = (m["loss_sum_a"] - m["loss_sum_b"]).abs() / m["loss_sum_a"].abs().clip(lower=1e-12)
    worst = ((m["agree_a"] - m["agree_b"]).abs() / m["n_a"]).max()
    return {"cells": len(m), "cells with other counts": int(counts.sum()), "max d agreement": round(float(worst), 4),
            "max rel d loss": f"{rel.max():.1e}"}


def pinned(case: Case, folder: Path) -> Case:
    """A torchvision case with its random-init weights saved once, so every scan sees the same model."""
    if not case.model.startswith("torchvision:"):
        return case
    arch = case.model.split(":", 1)[1]
    torch.manual_seed(0)
    path = folder / f"{arch}.pth"
    torch.save(getattr(torchvision.models, arch)().state_dict(), path)
    return Case(f"{case.model}={path}", case.data, case.count, case.extra)


def exact_part(cases: list[Case], device: str, threads: int) -> list[dict]:
    """CPU fast vs ``device`` fast, and ``device`` naive vs ``device`` fast, cell by cell."""
    rows = []
    for named in cases:
        with tempfile.TemporaryDirectory() as tmp:
            case = pinned(named, Path(tmp))
            cpu, cpu_s = scan(case, "cpu", "fast", Path(tmp), threads)
            gpu, gpu_s = scan(case, device, "fast", Path(tmp), threads)
            naive, naive_s = scan(case, device, "naive", Path(tmp), threads)
        name = " ".join([named.model, *case.extra])
        rows.append({"part": "exact", "model": name, "N": case.count, "compare": f"cpu fast vs {device} fast",
                     "seconds": f"{cpu_s:.1f} / {gpu_s:.1f}", **differences(cpu, gpu)})
        rows.append({"part": "exact", "model": name, "N": case.count, "compare": f"{device} naive vs {device} fast",
                     "seconds": f"{naive_s:.1f} / {gpu_s:.1f}", **differences(naive, gpu)})
    return rows


def emit(out: Path, rows: list[dict]) -> None:
    """Append rows to the JSON-lines file and print them."""
    with out.open("a") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
            print(row, flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, required=True, help="JSON-lines file the rows are appended to")
    p.add_argument("--smoke", action="store_true", help="tiny sizes on the CPU (checks the script, not CUDA)")
    p.add_argument("--threads", type=int, default=16, help="CPU threads for the CPU reference scans")
    p.add_argument("--parts", default="exact,precision,ratio")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    device = "cpu" if args.smoke else "cuda"
    size, count, big, batch = ("3x32x32", 16, 32, 16) if args.smoke else ("3x224x224", 128, 1024, 512)
    if device == "cuda":
        emit(args.out, [{"part": "env", "torch": torch.__version__, "gpu": torch.cuda.get_device_name(0),
                         "cudnn": torch.backends.cudnn.version()}])
    cases = [Case("sample:digits-cnn", "sample:digits", 449), Case("sample:digits-resnet", "sample:digits", 449),
             Case("sample:digits-resnet", "sample:digits", 449, ("--granularity", "channel")),
             Case("sample:digits-mlp", "sample:digits", 449, ("--granularity", "2:4")),
             Case("torchvision:resnet18", f"random:{size}", count),
             Case("torchvision:mobilenet_v3_small", "random:3x64x64" if not args.smoke else f"random:{size}", count)]
    parts = args.parts.split(",")
    if "exact" in parts:
        emit(args.out, exact_part(cases, device, args.threads))
    models = ["torchvision:resnet18", "torchvision:mobilenet_v3_small"]
    for precision in (("tf32", "bf16") if "precision" in parts else ()):
        if precision == "tf32" and device != "cuda":
            continue
        config = ScanConfig(device=device, precision=precision, batch_size=batch)
        emit(args.out, [{"part": "precision", **bench_engine.precision_error(m, f"random:{size}", big, config)}
                        for m in models])
    if "ratio" in parts:
        config = ScanConfig(device=device, batch_size=batch)
        for m in models:
            emit(args.out, [{"part": "ratio", "data": f"random:{size}",
                             **bench_engine.bench(m, f"random:{size}", big, 1 if args.smoke else 3, config)}])


if __name__ == "__main__":
    main()
