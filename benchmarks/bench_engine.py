"""Naive vs fast scan engine, side by side in one process on the same data, with the bounds of prefix reuse.

For each model: one context (same masks, same dense outputs, same threads and precision for both engines);
each repeat scans every layer with both engines, layer by layer, alternating which goes first; the table
reports the median over repeats of the summed seconds. Next to the measured ratio stand two ceilings:

- measured bound: run the dense graph node by node, time each node; fast can at best skip each layer's
  prefix, so bound = L * T(all nodes) / sum over layers of T(nodes downstream of the layer).
- FLOP bound: the same ratio with each node's FLOPs (torch.utils.flop_counter) in place of its time.

Peak memory is the largest rise of the process's resident memory over the start of an engine's run, sampled
every 2 ms (on CUDA: the allocator's peak).

    python benchmarks/bench_engine.py --models resnet18,mobilenet_v3_small --data random:3x64x64 \\
        --count 512 --threads 2 --repeats 3

With ``--precision-error --precision bf16`` (or tf32 on CUDA) it instead scans each model with the fast engine
exactly and at that precision, interleaved on one context each, and reports the speed-up and the error per
cell. With ``--bn-recalibrate`` both engines recalibrate BatchNorm per cell (the bound columns are then left
out: they describe the normal scan). Models may be torchvision names or full specs (``sample:digits-cnn`` with ``--data sample:digits``).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from analysis.core.batchnorm import recalibrate  # noqa: E402
from analysis.sensitivity import fxgraph  # noqa: E402
from analysis.sensitivity.bnscan import RecalState  # noqa: E402
from analysis.sensitivity.config import ScanConfig  # noqa: E402
from analysis.sensitivity.context import prepare  # noqa: E402
from analysis.sensitivity.engines import fast_state, run_layer_fast  # noqa: E402
from analysis.sensitivity.naive import run_layer_naive  # noqa: E402
from analysis.workload.workload import load_workload  # noqa: E402


class PeakMemory:
    """Peak rise of resident memory (CPU) or allocated memory (CUDA) while the block runs, in MB."""

    def __init__(self, device: torch.device) -> None:
        self.device, self.peak, self._stop = device, 0, threading.Event()

    @staticmethod
    def _rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * 4096

    def _watch(self, base: int) -> None:
        while not self._stop.wait(0.002):
            self.peak = max(self.peak, self._rss() - base)

    def __enter__(self) -> "PeakMemory":
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            self._base = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
        else:
            self._thread = threading.Thread(target=self._watch, args=(self._rss(),), daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated() - self._base
        else:
            self._stop.set()
            self._thread.join()

    @property
    def mb(self) -> float:
        return self.peak / 2**20


def node_costs(ctx, batch: int, repeats: int = 3) -> tuple[dict, dict]:
    """Seconds (median of ``repeats``) and FLOPs of every graph node on one dense batch of ``batch`` samples."""
    gm = fast_state(ctx).gm
    x = ctx.x[:batch].to(ctx.device)
    nodes = [n for n in gm.graph.nodes if n.op != "placeholder"]
    times: dict = {n: [] for n in nodes}
    flops: dict = {}
    placeholder = next(n for n in gm.graph.nodes if n.op == "placeholder")
    with torch.inference_mode():
        for r in range(repeats + 1):
            env = {placeholder: x}
            for node in nodes:
                if r == 0:
                    with FlopCounterMode(display=False) as counter:
                        env[node] = fxgraph.run_node(gm, node, env)
                    flops[node] = counter.get_total_flops()
                    continue
                if ctx.device.type == "cuda":
                    torch.cuda.synchronize()
                t = time.perf_counter()
                env[node] = fxgraph.run_node(gm, node, env)
                if ctx.device.type == "cuda":
                    torch.cuda.synchronize()
                times[node].append(time.perf_counter() - t)
    return {n: statistics.median(v) for n, v in times.items()}, flops


def bounds(ctx) -> tuple[float, float]:
    """(measured-time bound, FLOP bound) on the speed-up of prefix reuse for this scan's layers."""
    seconds, flops = node_costs(ctx, ctx.config.batch_size)
    state = fast_state(ctx)
    down = [fxgraph.split(state.gm, layer.param_name).downstream for layer in ctx.layers]
    t_all, f_all = sum(seconds.values()), sum(flops.values())
    t_down = sum(sum(seconds.get(n, 0.0) for n in d) for d in down)
    f_down = sum(sum(flops.get(n, 0) for n in d) for d in down)
    return len(down) * t_all / t_down, len(down) * f_all / max(f_down, 1)


def same(a: list[dict], b: list[dict]) -> bool:
    return all(ra["correct"] == rb["correct"] and ra["agree"] == rb["agree"]
               and abs(ra["loss_sum"] - rb["loss_sum"]) <= 1e-5 * abs(ra["loss_sum"]) + 1e-9
               for ra, rb in zip(a, b))


def bench(model: str, data: str, count: int, repeats: int, config: ScanConfig) -> dict:
    workload = load_workload(model, data, count=count)
    recalibrate(workload.model.to(config.device), workload.data.x, device=config.device)
    ctx = prepare(workload, config)
    state = fast_state(ctx)
    if state.gm is None:
        raise SystemExit(f"{model}: {ctx.notices[0]}")
    # The bounds are those of the normal scan; with recalibration the calibration passes add to both engines.
    time_bound, flop_bound = (float("nan"), float("nan")) if config.bn_recalibrate else bounds(ctx)
    totals = {"naive": [], "fast": []}
    peaks = {"naive": 0.0, "fast": 0.0}
    identical = True
    for r in range(repeats):
        state.frontier, state.shard = [], None
        if state.bn is not None:
            state.bn = RecalState(chunk=state.bn.chunk)
        spent = {"naive": 0.0, "fast": 0.0}
        for layer in ctx.layers:
            ctx.masks_for(layer)  # the masks are shared: made before either engine's clock starts
            rows = {}
            order = ("naive", "fast") if r % 2 == 0 else ("fast", "naive")
            for name in order:
                fn = run_layer_naive if name == "naive" else run_layer_fast
                with PeakMemory(ctx.device) as mem:
                    result = fn(ctx, layer, None)
                spent[name] += result.seconds
                peaks[name] = max(peaks[name], mem.mb)
                rows[name] = result.rows
            identical &= same(rows["naive"], rows["fast"])
        for name in spent:
            totals[name].append(spent[name])
        print(f"  {model} repeat {r + 1}: naive {spent['naive']:.1f} s, fast {spent['fast']:.1f} s", flush=True)
    naive_s, fast_s = statistics.median(totals["naive"]), statistics.median(totals["fast"])
    ratio = naive_s / fast_s
    return {
        "model": model, "L": len(ctx.layers), "S": sum(1 for s in ctx.config.sparsities if s > 0), "N": len(ctx.x),
        "device": f"{ctx.device.type} x{torch.get_num_threads()}" if ctx.device.type == "cpu" else ctx.device.type,
        "naive s": round(naive_s, 1), "fast s": round(fast_s, 1), "ratio": round(ratio, 2),
        "bound (time)": round(time_bound, 2), "of bound": f"{ratio / time_bound:.0%}", "FLOP bound": round(flop_bound, 2),
        **({"bound (time)": "-", "of bound": "-", "FLOP bound": "-"} if config.bn_recalibrate else {}),
        "peak MB naive/fast": f"{peaks['naive']:.0f} / {peaks['fast']:.0f}",
        "cache MB": round(state.peak_cache_bytes / 2**20, 1), "identical?": "yes" if identical else "NO",
    }


def precision_error(model: str, data: str, count: int, config: ScanConfig) -> dict:
    """A fast scan at ``config.precision`` next to the exact fast scan of the same context: time ratio and error."""
    workload = load_workload(model, data, count=count)
    recalibrate(workload.model.to(config.device), workload.data.x, device=config.device)
    exact_ctx = prepare(workload, replace(config, precision="exact"))
    low_ctx = prepare(workload, config)
    seconds = {"exact": 0.0, "low": 0.0}
    cells = differing = 0
    worst_agree = worst_acc = worst_loss = 0.0
    for i, (a_layer, b_layer) in enumerate(zip(exact_ctx.layers, low_ctx.layers)):
        order = (("exact", exact_ctx, a_layer), ("low", low_ctx, b_layer))
        rows = {}
        for name, ctx, layer in (order if i % 2 == 0 else order[::-1]):
            result = run_layer_fast(ctx, layer, None)
            seconds[name] += result.seconds
            rows[name] = result.rows
        for a, b in zip(rows["exact"], rows["low"]):
            if a["sparsity"] == 0.0:
                continue
            cells += 1
            differing += (a["agree"], a["correct"]) != (b["agree"], b["correct"])
            worst_agree = max(worst_agree, abs(a["agree"] - b["agree"]) / a["n"])
            worst_acc = max(worst_acc, abs(a["correct"] - b["correct"]) / a["n"])
            worst_loss = max(worst_loss, abs(a["loss_sum"] - b["loss_sum"]) / max(abs(a["loss_sum"]), 1e-12))
    return {
        "model": model, "N": count, "device": exact_ctx.device.type, "precision": config.precision,
        "exact s": round(seconds["exact"], 1), f"{config.precision} s": round(seconds["low"], 1),
        "speed-up": round(seconds["exact"] / seconds["low"], 2), "cells": cells,
        "cells with other counts": differing, "max d agreement": round(worst_agree, 4),
        "max d accuracy": round(worst_acc, 4), "max rel d loss": f"{worst_loss:.1e}",
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", default="resnet18,mobilenet_v3_small", help="torchvision architectures")
    p.add_argument("--data", default="random:3x64x64")
    p.add_argument("--count", type=int, default=512)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--precision", default="exact")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--bn-recalibrate", action="store_true",
                   help="both engines recalibrate BatchNorm per cell (on the first --bn-batches batches)")
    p.add_argument("--bn-batches", type=int, default=8)
    p.add_argument("--precision-error", action="store_true",
                   help="instead: the fast scan at --precision next to the exact one (speed and error per cell)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    config = ScanConfig(device=args.device, precision=args.precision, batch_size=args.batch_size,
                        bn_recalibrate=args.bn_recalibrate, bn_batches=args.bn_batches)
    models = [m if ":" in m else f"torchvision:{m}" for m in args.models.split(",")]
    if args.precision_error:
        rows = [precision_error(m, args.data, args.count, config) for m in models]
    else:
        rows = [bench(m, args.data, args.count, args.repeats, config) for m in models]
    keys = list(rows[0])
    print("| " + " | ".join(keys) + " |")
    print("|" + "---|" * len(keys))
    for row in rows:
        print("| " + " | ".join(str(row[k]) for k in keys) + " |")


if __name__ == "__main__":
    main()
