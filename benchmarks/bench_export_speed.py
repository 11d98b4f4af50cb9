"""Export speed, two checkouts side by side: one torchvision resnet18 (random weights, 3x128x128 inputs, 64
verification samples) exported shrunk at a uniform 0.5 channel schedule with the dynamo exporter, verification and
interleaved latency (10 repeats), each in a fresh process; wall time and the process's peak memory (max RSS).
The checkout under test also exports a second time with the dense reference kept from the first (``DenseCache``).

    OMP_NUM_THREADS=1 python benchmarks/bench_export_speed.py --before /work/before16 --after .
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

CHILD = r"""
import json, resource, sys, tempfile, time
from pathlib import Path
import torch, torchvision
from analysis.core.data import EvalData
from analysis.core.layers import find_layers
from analysis.deploy import export as ex
from analysis.schedule.schedule import Schedule
torch.manual_seed(0)
torch.set_num_threads(1)
model = torchvision.models.resnet18(num_classes=10).eval()
x = torch.randn(64, 3, 128, 128)
data = EvalData(x, torch.randint(0, 10, (64,)), "random:3x128x128")
layers = find_layers(model, x[:1])
schedule = Schedule({l.name: 0.5 for l in layers}, "l1", "channel")
options = dict(shrink_channels=True, exporter="dynamo", repeats=10, verify_samples=64)
cached = sys.argv[1] == "cached"
times = []
with tempfile.TemporaryDirectory() as tmp:
    if cached:
        options["dense_cache"] = ex.DenseCache(Path(tmp), "resnet18")
    for i in range(2 if cached else 1):
        start = time.perf_counter()
        report = ex.export(model, schedule, data, Path(tmp) / f"m{i}.onnx", **options)
        times.append(time.perf_counter() - start)
        assert all(v.passed for v in report.verifications)
print(json.dumps({"seconds": times, "peak_MB": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def _run(tree: Path, mode: str) -> dict:
    """One export (two with ``cached``) in a fresh process importing ``tree``'s engine."""
    env = dict(os.environ, PYTHONPATH=str(tree.resolve()), OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-c", CHILD, mode], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--before", type=Path, required=True, help="checkout of the starting commit")
    p.add_argument("--after", type=Path, default=Path("."), help="checkout under test")
    args = p.parse_args()
    before, after = _run(args.before, "plain"), _run(args.after, "cached")
    print(f"{'':34}{'before':>10}{'after':>10}{'ratio':>8}")
    print(f"{'resnet18 shrunk export, cold (s)':34}{before['seconds'][0]:10.1f}{after['seconds'][0]:10.1f}"
          f"{before['seconds'][0] / after['seconds'][0]:8.2f}")
    print(f"{'  again, dense reference kept (s)':34}{'':>10}{after['seconds'][1]:10.1f}"
          f"{before['seconds'][0] / after['seconds'][1]:8.2f}")
    print(f"{'peak memory (MB)':34}{before['peak_MB']:10.0f}{after['peak_MB']:10.0f}"
          f"{before['peak_MB'] / after['peak_MB']:8.2f}")


if __name__ == "__main__":
    main()
