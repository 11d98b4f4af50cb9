"""The strategy lab on the bundled samples at several sparsities, with the lab's default budgets (the CLI's).

For each sample and target: every strategy's initial drop, its recovery with the mask fixed, the spread of the
per-layer drops, the exported model against the dense one, and where the numbers fall in the background
article's typical ranges. Writes one row per (sample, target, strategy) to ``--csv`` and prints Markdown tables
for BENCHMARKS.md. The same numbers come from

    prunescope lab --model sample:digits-cnn --data sample:digits --train-data sample:digits-train \\
                   --target-sparsity 0.8 [--allocation uniform] --no-store --out DIR

    OMP_NUM_THREADS=1 python benchmarks/bench_lab.py [--samples digits-cnn,digits-resnet] [--targets 0.5,0.8,0.9] \\
                                                 [--allocation uniform]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import pandas as pd  # noqa: E402
import torch  # noqa: E402

from analysis.lab.config import LabConfig  # noqa: E402
from analysis.lab.runner import run_lab  # noqa: E402
from analysis.schedule.allocate import Target  # noqa: E402
from analysis.workload.data import load_data  # noqa: E402
from analysis.workload.workload import load_workload  # noqa: E402

COLUMNS = {"title": "strategy", "sparsity": "sparsity", "initial_drop": "initial drop (pts)",
           "largest_step_drop": "largest step (pts)", "recovery": "recovered", "recovered_epochs": "epochs to 1 pt",
           "final_gap": "final gap (pts)", "spread_std": "per-layer std (pts)", "gzip_ratio": "gzip",
           "file_ratio": "file", "speedup_b32": "speed-up b32"}
PLACED = ("initial_drop", "recovery", "recovery_epochs")


def one(sample: str, target: float, train, allocation: str) -> pd.DataFrame:  # noqa: ANN001
    workload = load_workload(f"sample:{sample}", "sample:digits")
    start = time.perf_counter()
    result = run_lab(workload, train, LabConfig(Target("sparsity", target), allocation=allocation))
    seconds = time.perf_counter() - start
    summary = result.summary()
    places = result.cells().query("row in @PLACED").pivot(index="strategy", columns="row", values="place")
    summary = summary.join(places.add_prefix("place_"), on="strategy")
    return summary.assign(sample=sample, target=target, allocation=allocation, lab_seconds=round(seconds, 1),
                          epochs=result.config.epochs)


def markdown(df: pd.DataFrame) -> str:
    out = []
    for (sample, target), part in df.groupby(["sample", "target"], sort=False):
        shown = part[list(COLUMNS)].rename(columns=COLUMNS).copy()
        for col in ("initial drop (pts)", "largest step (pts)", "final gap (pts)", "per-layer std (pts)"):
            shown[col] = (100 * shown[col]).map(lambda v: f"{v:.1f}")
        shown["recovered"] = part["recovery"].map(lambda v: "-" if pd.isna(v) else f"{100 * v:.0f}%")
        shown["epochs to 1 pt"] = part["recovered_epochs"].map(
            lambda v: f"not in {part['epochs'].iloc[0]:g}" if pd.isna(v) else f"{v:.2f}")
        for col in ("sparsity", "gzip", "file", "speed-up b32"):
            shown[col] = shown[col].map(lambda v: "-" if pd.isna(v) else f"{v:.2f}")
        shown["vs article (drop / recovery / epochs)"] = [
            " / ".join(str(p) if isinstance(p, str) else "-" for p in row)
            for row in part[[f"place_{r}" for r in PLACED]].itertuples(index=False)]
        out.append(f"**{sample}, target sparsity {target:g}, {part['allocation'].iloc[0]} allocation** "
                   f"(lab {part['lab_seconds'].iloc[0]:.0f} s)\n")
        out.append(_table(shown))
        out.append("")
    return "\n".join(out)


def _table(df: pd.DataFrame) -> str:
    rows = ["| " + " | ".join(df.columns) + " |", "|" + " --- |" * len(df.columns)]
    return "\n".join(rows + ["| " + " | ".join(map(str, r)) + " |" for r in df.itertuples(index=False)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", default="digits-cnn,digits-resnet")
    parser.add_argument("--targets", default="0.5,0.8,0.9")
    parser.add_argument("--allocation", default=LabConfig.allocation, help="uniform (default), sensitivity, erk, ...")
    parser.add_argument("--csv", type=Path, default=Path("benchmarks/bench_lab.csv"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    train = load_data("sample:digits-train")
    frames = []
    for sample in args.samples.split(","):
        for target in (float(t) for t in args.targets.split(",")):
            frames.append(one(sample, target, train, args.allocation))
            print(f"{sample} at {target:g}: {frames[-1]['lab_seconds'].iloc[0]:.0f} s", file=sys.stderr)
    df = pd.concat(frames, ignore_index=True)
    df.drop(columns=["notes"]).to_csv(args.csv, index=False)
    print(markdown(df))


if __name__ == "__main__":
    main()
