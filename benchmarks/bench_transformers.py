"""Hugging Face transformers through the scan engines: seconds per cell, fast vs naive, and peak memory.

Builds a random-init model from a config (no download): ``bert`` is MiniLM-sized (6 layers, hidden 384, 12 heads,
vocabulary 30522, the encoder task: sentence-embedding cosine), ``gpt2`` GPT-2-small-sized (12 layers, hidden
768, 12 heads, vocabulary 50257, the causal-LM task: perplexity and next-token agreement). The eval data are
``--windows`` random token-id windows of ``--tokens`` tokens. One context serves both engines (same masks, same
dense outputs); for each of ``--layers`` layers spread over the depth, one cell (one sparsity) is measured with
each engine, alternating which goes first, and the table gives the median seconds per cell. Peak memory is the
process's maximum resident set (one model per process).

    python benchmarks/bench_transformers.py --model bert --windows 256 --tokens 128 --layers 3 --threads 2
    python benchmarks/bench_transformers.py --model gpt2 --windows 256 --tokens 128 --layers 3 --threads 2
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import tempfile
import time
from pathlib import Path

import torch

from analysis.sensitivity.config import ScanConfig
from analysis.sensitivity.context import prepare
from analysis.sensitivity.engines import fast_state, run_layer_fast
from analysis.sensitivity.naive import run_layer_naive
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", choices=sorted(SIZES), required=True)
    ap.add_argument("--windows", type=int, default=256)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--layers", type=int, default=3, help="layers measured, spread over the depth")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        folder = build(args.model, Path(tmp) / args.model)
        vocab = 30522 if args.model == "bert" else 50257
        ids = torch.randint(0, vocab, (args.windows, args.tokens), generator=torch.Generator().manual_seed(0))
        torch.save({"x": ids}, Path(tmp) / "ids.pt")
        start = time.perf_counter()
        workload = load_workload(f"hf:{folder}", str(Path(tmp) / "ids.pt"))
        ctx = prepare(workload, ScanConfig(sparsities=(0.5,)))
        ready = time.perf_counter() - start
        t0 = time.perf_counter()
        fast_state(ctx)  # the trace (torch.export), once per scan: timed apart from the cells
        trace = time.perf_counter() - t0
        picks = [ctx.layers[round(i * (len(ctx.layers) - 1) / max(args.layers - 1, 1))] for i in range(args.layers)]
        times: dict[str, list[float]] = {"fast": [], "naive": []}
        for i, layer in enumerate(picks):
            engines = [("fast", run_layer_fast), ("naive", run_layer_naive)]
            for name, run in engines if i % 2 == 0 else engines[::-1]:
                t0 = time.perf_counter()
                run(ctx, layer)
                times[name].append(time.perf_counter() - t0)
        peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    fast, naive = statistics.median(times["fast"]), statistics.median(times["naive"])
    traced = getattr(getattr(ctx.fast, "gm", None), "traced_by", None) if ctx.fast is not None else None
    print("| model | task | windows x tokens | layers scanned | load + dense s | trace s | fast s/cell | "
          "naive s/cell | naive/fast | traced by | peak RSS GB |")
    print("| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: |")
    print(f"| {args.model} | {workload.task} | {args.windows} x {args.tokens} | {len(ctx.layers)} | {ready:.1f} | "
          f"{trace:.1f} | {fast:.1f} | {naive:.1f} | {naive / fast:.2f}x | {traced} | {peak_gb:.2f} |")
    print("cells: " + ", ".join(f"{l.name} fast {f:.1f}s naive {n:.1f}s" for l, f, n in
                                zip(picks, times["fast"], times["naive"])))


if __name__ == "__main__":
    main()
