"""``prunescope compare``: scans with different criteria side by side, cell by cell."""

from __future__ import annotations

import argparse
from pathlib import Path

from analysis.core.metric_table import METRICS
from analysis.core.profile import SensitivityProfile
from analysis.diagnostics.compare import compare_criteria
from analysis.report.plots import criterion_comparison_figure

HELP = "scans with different criteria side by side, cell by cell"


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("compare", help=HELP,
                       description="Read two or more scan folders (e.g. the same model scanned with magnitude, taylor "
                                   "and random) and write one row per (layer, sparsity) with each criterion's drop, "
                                   "the best criterion and the spread.")
    p.add_argument("--scan", action="append", required=True, type=Path, metavar="DIR",
                   help="a scan folder (give --scan two or more times)")
    p.add_argument("--metric", choices=METRICS, default=None,
                   help="the metric whose drop is compared (default: accuracy if labelled, else agreement)")
    p.add_argument("--out", type=Path, default=None, metavar="FILE.csv", help="write the comparison as CSV")
    p.add_argument("--plot", type=Path, default=None, metavar="FILE.html", help="write the comparison figure as HTML")
    return p


def run(args: argparse.Namespace) -> int:
    comparison = compare_criteria([SensitivityProfile.load(d) for d in args.scan], args.metric)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        comparison.to_csv(args.out, index=False)
    if args.plot:
        args.plot.parent.mkdir(parents=True, exist_ok=True)
        criterion_comparison_figure(comparison).write_html(args.plot, include_plotlyjs="cdn")
    print(f"drop in {comparison.attrs['metric']} (positive = worse than dense)")
    print(comparison.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    return 0
