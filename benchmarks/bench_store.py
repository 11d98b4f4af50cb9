"""The run store's overhead on a scan: the time the scan spends in the store (fingerprints, opening the run,
handing each finished layer to the writer thread, finishing), as a fraction of the scan's time, on the samples.

    OMP_NUM_THREADS=1 python benchmarks/bench_store.py [--repeats 7]

Each scan runs as ``prunescope scan`` runs it (prepare, find or queue the run, scan with a ``LayerWriter`` as
the sink, queue the run's closing row and the store's close, save the profile and print the summary, wait for
the writer) with the store and without it (prepare, scan, save, summary), alternating, in one process, with
the fast engine and default settings. Columns: the scan's wall time without and with the store; the time the
scan's thread spent in store calls (its critical path: opening the store, fingerprints, finding the run,
hand-overs, waiting for the writer at the end); the store's whole work (the same plus what the writer thread
did off the path: creating the run, the per-layer commits, finishing, the close-time checkpoint). The
end-to-end difference is shown too, but on a shared machine it is mostly noise. Medians of ``--repeats``.
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from analysis.engine import ScanConfig, prepare  # noqa: E402
from analysis.sensitivity import scan, tolerance_table  # noqa: E402
from analysis.sources import load_workload  # noqa: E402
from analysis.store import LayerWriter, RunStore  # noqa: E402


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), load average {os.getloadavg()[0]:.2f}")
    print("| model | layers | scan without store (s) | scan with store (s) | store on the scan's path (ms) | "
          "share of the scan | store's whole work (ms) | share if it were all on the path |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    with tempfile.TemporaryDirectory() as tmp:
        store_path, out = Path(tmp) / "runs.sqlite", Path(tmp) / "out"
        for name in ("digits-mlp", "digits-cnn", "digits-resnet"):
            workload = load_workload(f"sample:{name}", "sample:digits")
            config = ScanConfig()
            scan_without_store(workload, config, out)  # warm-up
            scan_with_store(workload, config, store_path, out)
            plain, stored, on_path, work = [], [], [], []
            for _ in range(args.repeats):
                plain.append(scan_without_store(workload, config, out))
                total, in_path, in_all = scan_with_store(workload, config, store_path, out)
                stored.append(total)
                on_path.append(in_path)
                work.append(in_all)
            layers = len(prepare(workload, config).layers)
            share = statistics.median(i / s for i, s in zip(on_path, stored))
            work_share = statistics.median(w / s for w, s in zip(work, stored))
            print(f"| sample:{name} | {layers} | {statistics.median(plain):.3f} | {statistics.median(stored):.3f} | "
                  f"{statistics.median(on_path) * 1e3:.2f} | {share:.2%} | {statistics.median(work) * 1e3:.2f} | "
                  f"{work_share:.2%} |")
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
