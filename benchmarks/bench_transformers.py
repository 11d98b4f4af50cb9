"""Hugging Face transformers through the scan engines: seconds per cell, fast vs naive, and peak memory.

Builds a random-init model from a config (no download; in a child process, so that its memory is not counted):
``bert`` is MiniLM-sized (6 layers, hidden 384, 12 heads, vocabulary 30522, the encoder task: sentence-embedding
cosine), ``gpt2`` GPT-2-small-sized (12 layers, hidden 768, 12 heads, vocabulary 50257, the causal-LM task:
perplexity, next-token agreement and KL). The eval data are ``--windows`` random token-id windows of ``--tokens``
tokens. One context serves both engines (same masks, same dense outputs); for each of ``--layers`` layers spread
over the depth, one cell per sparsity of ``--sparsities`` is measured with each engine of ``--engines``,
alternating which goes first, and the table gives the median seconds per cell (a layer's cells divided by their
number). The fast engine's prefix (the dense values up to the layer, which a scan going layer by layer computes
once for the whole model, not per layer) is advanced before its cells and timed apart. Peak memory is the
process's maximum resident set. Which engine ran (and, where the fast one cannot trace the model, the reason)
comes from the scan's own report.

    python benchmarks/bench_transformers.py --model bert --windows 256 --tokens 128 --layers 3 --threads 2
    python benchmarks/bench_transformers.py --model gpt2 --windows 256 --tokens 128 --at 0 --engines naive
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import resource
import statistics
import tempfile
import time
from pathlib import Path

import torch

from analysis.sensitivity import fxgraph
from analysis.sensitivity.config import ScanConfig
from analysis.sensitivity.context import ScanContext, prepare
from analysis.sensitivity.engines import ENGINES, engine_report, fast_state
from analysis.sensitivity.fast import advance
from analysis.workload.workload import load_workload

SIZES = {"bert": dict(hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536),
         "gpt2": dict(n_embd=768, n_layer=12, n_head=12)}


def build(kind: str, folder: Path) -> Path:
    """Save a random-init model of ``kind`` (its real vocabulary and sizes) into ``folder``."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import transformers as t

    torch.manual_seed(0)
    model = t.BertModel(t.BertConfig(**SIZES["bert"])) if kind == "bert" else t.GPT2LMHeadModel(
        t.GPT2Config(**SIZES["gpt2"]))
    model.eval().save_pretrained(folder)
    return folder


def built(kind: str, folder: Path) -> Path:
    """``build`` in a child process: the model it makes is not part of this process's peak memory."""
    child = multiprocessing.get_context("spawn").Process(target=build, args=(kind, folder))
    child.start()
    child.join()
    if child.exitcode:
        raise SystemExit(f"building the {kind} model failed")
    return folder


def advance_prefix(ctx: ScanContext, layer: object) -> float:
    """Seconds to bring the fast engine's dense frontier of every chunk up to ``layer`` (what a layer-by-layer
    scan computes once per model), so that the cells timed after it are the layer's own work."""
    state = fast_state(ctx)
    if state.gm is None:
        return 0.0
    t0 = time.perf_counter()
    cut = state.cuts.setdefault(layer.name, fxgraph.split(state.gm, layer.param_names))
    for start in range(0, len(ctx.x), state.chunk):
        stop = min(start + state.chunk, len(ctx.x))
        advance(state.gm, cut.frontier, state.frontier, (start, stop), ctx.x[start:stop].to(ctx.device))
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", choices=sorted(SIZES), required=True)
    ap.add_argument("--windows", type=int, default=256)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--layers", type=int, default=3, help="layers measured, spread over the depth")
    ap.add_argument("--at", default="", help="comma-separated layer indices (0 first, -1 last) instead of --layers")
    ap.add_argument("--sparsities", default="0.5", help="comma-separated sparsities: the cells of each layer")
    ap.add_argument("--engines", default="fast,naive", help="comma-separated: fast, naive")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    engines = [e for e in args.engines.split(",") if e]
    sparsities = tuple(float(s) for s in args.sparsities.split(","))
    with tempfile.TemporaryDirectory() as tmp:
        folder = built(args.model, Path(tmp) / args.model)
        vocab = 30522 if args.model == "bert" else 50257
        ids = torch.randint(0, vocab, (args.windows, args.tokens), generator=torch.Generator().manual_seed(0))
        torch.save({"x": ids}, Path(tmp) / "ids.pt")
        start = time.perf_counter()
        workload = load_workload(f"hf:{folder}", str(Path(tmp) / "ids.pt"))
        ctx = prepare(workload, ScanConfig(sparsities=sparsities))
        ready = time.perf_counter() - start
        t0 = time.perf_counter()
        if "fast" in engines:
            fast_state(ctx)  # the trace (torch.export), once per scan: timed apart from the cells
        trace = time.perf_counter() - t0
        picks = [ctx.layers[int(i)] for i in args.at.split(",")] if args.at else \
            [ctx.layers[round(i * (len(ctx.layers) - 1) / max(args.layers - 1, 1))] for i in range(args.layers)]
        cells = sum(1 for s in ctx.config.sparsities if s > 0)
        times: dict[str, list[float]] = {e: [] for e in engines}
        prefix = 0.0
        for i, layer in enumerate(picks):
            for name in engines if i % 2 == 0 else engines[::-1]:
                if name == "fast":
                    prefix += advance_prefix(ctx, layer)
                t0 = time.perf_counter()
                ENGINES[name](ctx, layer)
                times[name].append((time.perf_counter() - t0) / cells)
        peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    report = engine_report(ctx) if "fast" in engines else {"used": "naive", "notices": ctx.notices}
    median = {e: statistics.median(t) for e, t in times.items()}
    ratio = f"{median['naive'] / median['fast']:.2f}x" if len(median) == 2 else "-"
    print("| model | task | windows x tokens | layers scanned | batch | chunk | load + dense s | trace s | prefix s | "
          "fast s/cell | naive s/cell | naive/fast | engine used | traced by | dense kept | peak RSS GB |")
    print("| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- | --- | ---: |")
    cell = {e: f"{median[e]:.1f}" if e in median else "-" for e in ("fast", "naive")}
    print(f"| {args.model} | {workload.task} | {args.windows} x {args.tokens} | {len(ctx.layers)} | "
          f"{ctx.config.batch_size} | {report.get('chunk_size', '-')} | {ready:.1f} | {trace:.1f} | {prefix:.1f} | "
          f"{cell['fast']} | {cell['naive']} | {ratio} | {report['used']} | {report.get('traced_by', '-')} | "
          f"{ctx.dense_logits is not None} | {peak_gb:.2f} |")
    print("cells (s/cell): " + "; ".join(f"{layer.name} " + ", ".join(f"{e} {times[e][i]:.1f}" for e in engines)
                                         for i, layer in enumerate(picks)))
    print(f"fast engine's cached dense frontiers at their peak: {report.get('peak_cache_mb', '-')} MB")
    print("notices: " + (" | ".join(report["notices"]) or "none"))


if __name__ == "__main__":
    main()
