"""Export speed and memory, two checkouts side by side: one torchvision model (random weights, 10 classes, 64
verification samples) exported shrunk at a uniform 0.5 channel schedule (``--exporter``, default each tree's
``auto``), verification and interleaved latency (up to 10 repeats), each checkout in a fresh process; wall time,
the process's peak memory (max RSS) and, per step of the export's own clock (``ExportReport.seconds``), its
seconds and the peak RSS reached during it (the kernel's high-water mark, reset at each step).
The checkout under test also exports a second time with the dense reference kept from the first (``DenseCache``).

``--model resnet18`` runs on 3x128x128 inputs, ``--model vgg11_bn`` on 3x224x224 (7.6 GFLOPs per image dense).
``--before`` may be left out to time the checkout under test alone. PyTorch runs on ``--threads`` threads (default:
torch's own choice, every core, as ``prunescope export`` runs without ``--threads``); ONNX Runtime on one thread (the
export's default).

    python benchmarks/bench_export_speed.py --before /work/before16 --after . --model vgg11_bn
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

SIZES = {"resnet18": 128, "vgg11_bn": 224}

CHILD = r"""
import json, resource, sys, tempfile, time
from pathlib import Path
import torch, torchvision
from analysis.core.data import EvalData
from analysis.core.layers import find_layers
from analysis.deploy import export as ex
from analysis.schedule.schedule import Schedule

def peak_mb():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM"):
            return int(line.split()[1]) / 1024

step_peaks = {}
lap = ex._Clock.lap
def lap_with_peak(self, name):  # the step's peak RSS, then the high-water mark starts again
    lap(self, name)
    step_peaks[name] = round(peak_mb())
    open("/proc/self/clear_refs", "w").write("5")
ex._Clock.lap = lap_with_peak

mode, exporter, name, size, threads = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
torch.manual_seed(0)
if threads:
    torch.set_num_threads(threads)
model = getattr(torchvision.models, name)(num_classes=10).eval()
x = torch.randn(64, 3, size, size)
data = EvalData(x, torch.randint(0, 10, (64,)), f"random:3x{size}x{size}")
layers = find_layers(model, x[:1])
schedule = Schedule({l.name: 0.5 for l in layers}, "l1", "channel")
options = dict(shrink_channels=True, exporter=exporter, repeats=10, verify_samples=64)
cached = mode == "cached"
runs = []
overall = 0.0
with tempfile.TemporaryDirectory() as tmp:
    if cached:
        options["dense_cache"] = ex.DenseCache(Path(tmp), name)
    for i in range(2 if cached else 1):
        step_peaks.clear()
        start = time.perf_counter()
        report = ex.export(model, schedule, data, Path(tmp) / f"m{i}.onnx", **options)
        seconds = time.perf_counter() - start
        assert all(v.passed for v in report.verifications)
        repeats = None if report.latency is None else sorted(set(report.latency["repeats"]))
        runs.append({"seconds": seconds, "steps": report.seconds, "step_peak_MB": dict(step_peaks),
                     "latency_repeats": repeats})
        overall = max(overall, max(step_peaks.values(), default=0))
import analysis
print(json.dumps({"runs": runs, "exporter": report.exporter, "threads": torch.get_num_threads(),
                  "engine": str(Path(analysis.__file__).parent.parent),
                  "peak_MB": max(overall, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}))
"""


def _run(tree: Path, mode: str, exporter: str, model: str, threads: int) -> dict:
    """One export (two with ``cached``) in a fresh process importing ``tree``'s engine."""
    env = dict(os.environ, PYTHONPATH=str(tree.resolve()))
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    args = [sys.executable, "-c", CHILD, mode, exporter, model, str(SIZES[model]), str(threads)]
    out = subprocess.run(args, env=env, cwd=tree, capture_output=True, text=True, check=True)  # cwd: first on sys.path
    result = json.loads(out.stdout.strip().splitlines()[-1])
    if Path(result["engine"]).resolve() != tree.resolve():
        raise SystemExit(f"the child imported the engine from {result['engine']}, not from {tree}")
    return result


def _steps(results: dict[str, dict]) -> None:
    """Seconds and peak RSS of each step of each run, one column per run."""
    columns = {f"{tree} {'cold' if i == 0 else 'kept'}": run for tree, r in results.items()
               for i, run in enumerate(r["runs"])}
    names = list(dict.fromkeys(n for run in columns.values() for n in run["steps"]))
    print(f"\n{'step: seconds / peak RSS MB':34}" + "".join(f"{c:>18}" for c in columns))
    for name in names:
        cells = [f"{run['steps'][name]:7.1f} / {run['step_peak_MB'].get(name, 0):6.0f}" if name in run["steps"]
                 else "" for run in columns.values()]
        print(f"{name[:34]:34}" + "".join(f"{c:>18}" for c in cells))
    print(f"{'latency repeats':34}" + "".join(f"{str(run['latency_repeats']):>18}" for run in columns.values()))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--before", type=Path, help="checkout of the starting commit (left out: the after tree alone)")
    p.add_argument("--after", type=Path, default=Path("."), help="checkout under test")
    p.add_argument("--exporter", default="auto", help="the exporter both exports ask for (default: each tree's auto)")
    p.add_argument("--model", choices=sorted(SIZES), default="resnet18", help="torchvision model to export")
    p.add_argument("--threads", type=int, default=0, help="PyTorch threads (default 0: torch's own choice)")
    args = p.parse_args()
    results = {}
    if args.before is not None:
        results["before"] = _run(args.before, "plain", args.exporter, args.model, args.threads)
    results["after"] = _run(args.after, "cached", args.exporter, args.model, args.threads)
    after, before = results["after"], results.get("before")
    print(f"{args.model}; PyTorch threads: {after['threads']}; exporter asked: {args.exporter}; used: "
          + ", ".join(f"{tree} {r['exporter']}" for tree, r in results.items()))
    print(f"{'':34}{'before':>10}{'after':>10}{'ratio':>8}")
    rows = [(f"{args.model} shrunk export, cold (s)", before and before["runs"][0]["seconds"],
             after["runs"][0]["seconds"]),
            ("  again, dense reference kept (s)", before and before["runs"][0]["seconds"], after["runs"][1]["seconds"]),
            ("peak memory (MB)", before and before["peak_MB"], after["peak_MB"])]
    for label, b, a in rows:
        print(f"{label[:34]:34}{'' if b is None else f'{b:.1f}':>10}{a:10.1f}"
              + ("" if b is None else f"{b / a:8.2f}"))
    _steps(results)


if __name__ == "__main__":
    main()
