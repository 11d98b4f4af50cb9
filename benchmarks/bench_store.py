"""The run store's overhead on a scan: the time the scan spends in the store (fingerprints, opening the run,
handing each finished layer to the writer thread, finishing), as a fraction of the scan's time, on the samples.

    OMP_NUM_THREADS=1 python benchmarks/bench_store.py [--repeats 7] [--command]

Each scan runs as ``prunescope scan`` runs it (prepare, find or queue the run, scan with a ``LayerWriter`` as
the sink, queue the run's closing row and the store's close, save the profile and print the summary, wait for
the writer) with the store and without it (prepare, scan, save, summary), alternating, in one process, with
the fast engine and default settings. Columns: the scan's wall time without and with the store; the time the
scan's thread spent in store calls (its critical path: opening the store, fingerprints, finding the run,
hand-overs, waiting for the writer at the end); the store's whole work (the same plus what the writer thread
did off the path: creating the run, the per-layer commits, finishing, the close-time checkpoint); and the
end-to-end cost: the median of the paired differences (with store minus without, the pair's order alternating),
which also counts what the writer's thread takes from the scan's (the interpreter lock, a core). Medians of
``--repeats``; ``--command`` adds the wall time of the whole ``prunescope scan --no-store`` command, what a user
waits for, and the store's end-to-end cost as a share of it.
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from analysis.core.profile import tolerance_table  # noqa: E402
from analysis.sensitivity.config import ScanConfig  # noqa: E402
from analysis.sensitivity.context import prepare  # noqa: E402
from analysis.sensitivity.driver import scan  # noqa: E402
from analysis.store.runs import RunStore  # noqa: E402
from analysis.store.writer import LayerWriter  # noqa: E402
from analysis.workload.workload import load_workload  # noqa: E402


class Clock:
    """Seconds spent inside wrapped calls."""

    def __init__(self) -> None:
        self.seconds = 0.0

    def wrap(self, fn):  # noqa: ANN001, ANN201
        def timed(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
            t = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - t
        return timed


def finish_like_the_cli(profile, out: Path) -> None:  # noqa: ANN001
    """What ``prunescope scan`` does after the scan: save the profile and print its summary table."""
    profile.save(out)
    print(tolerance_table(profile).to_string(index=False), file=io.StringIO())


PATH, THREAD = Clock(), Clock()
for _name in ("__init__", "find_scan", "create_scan", "add_layer", "finish", "close"):
    setattr(RunStore, _name, THREAD.wrap(getattr(RunStore, _name)))  # all called in the writer's thread


def scan_with_store(workload, config: ScanConfig, store_path: Path, out: Path) -> tuple[float, float, float]:  # noqa: ANN001
    """(total seconds, seconds on the scan's path inside the store, seconds of store work in all) of one scan."""
    PATH.seconds = THREAD.seconds = 0.0
    t0 = time.perf_counter()
    writer = PATH.wrap(LayerWriter.start)(workload, config, fresh=True, path=store_path)
    ctx = prepare(workload, config)
    PATH.wrap(writer.attach)(workload, ctx)
    profile = scan(workload, config, on_result=PATH.wrap(writer), context=ctx)
    PATH.wrap(writer.finish)(profile.meta, close_store=True)
    finish_like_the_cli(profile, out)
    PATH.wrap(writer.close)()
    return time.perf_counter() - t0, PATH.seconds, PATH.seconds + THREAD.seconds


def scan_without_store(workload, config: ScanConfig, out: Path) -> float:  # noqa: ANN001
    t0 = time.perf_counter()
    finish_like_the_cli(scan(workload, config, context=prepare(workload, config)), out)
    return time.perf_counter() - t0


def command_seconds(name: str, out: Path, repeats: int) -> float:
    """Median wall time of ``prunescope scan --no-store`` on a sample, as a user runs it (a fresh interpreter)."""
    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONPATH": str(root)}
    args = [sys.executable, "-m", "analysis", "scan", "--model", f"sample:{name}", "--data", "sample:digits",
            "--no-store", "--quiet", "--out", str(out)]
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        subprocess.run(args, cwd=root, env=env, check=True, capture_output=True)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--command", action="store_true", help="also time the whole `prunescope scan` command")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), load average {os.getloadavg()[0]:.2f}")
    print("| model | layers | scan without store (s) | scan with store (s) | store on the scan's path (ms) | "
          "share of the scan | end-to-end, paired (ms) | share of the scan | store's whole work (ms) |"
          + (" `prunescope scan` command (s) | end-to-end share of the command |" if args.command else ""))
    print("| --- " * (11 if args.command else 9) + "|")
    with tempfile.TemporaryDirectory() as tmp:
        store_path, out = Path(tmp) / "runs.sqlite", Path(tmp) / "out"
        for name in ("digits-mlp", "digits-cnn", "digits-resnet"):
            workload = load_workload(f"sample:{name}", "sample:digits")
            config = ScanConfig()
            scan_without_store(workload, config, out)  # warm-up
            scan_with_store(workload, config, store_path, out)
            plain, stored, on_path, work = [], [], [], []
            for i in range(args.repeats):
                if i % 2:
                    plain.append(scan_without_store(workload, config, out))
                total, in_path, in_all = scan_with_store(workload, config, store_path, out)
                if not i % 2:
                    plain.append(scan_without_store(workload, config, out))
                stored.append(total)
                on_path.append(in_path)
                work.append(in_all)
            layers = len(prepare(workload, config).layers)
            share = statistics.median(i / s for i, s in zip(on_path, stored))
            paired = statistics.median(s - p for s, p in zip(stored, plain))
            row = (f"| sample:{name} | {layers} | {statistics.median(plain):.4f} | {statistics.median(stored):.4f} | "
                   f"{statistics.median(on_path) * 1e3:.2f} | {share:.2%} | {paired * 1e3:.2f} | "
                   f"{paired / statistics.median(plain):.2%} | {statistics.median(work) * 1e3:.2f} |")
            if args.command:
                command = command_seconds(name, out, max(3, args.repeats // 10))
                row += f" {command:.2f} | {paired / command:.3%} |"
            print(row)
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
