"""``prunescope compare``: scans with different criteria side by side, cell by cell; or an adaptive (sequential,
bisection) scan next to a full grid, layer by layer."""

from __future__ import annotations

import argparse
from pathlib import Path

from analysis.cli.errors import UsageError
from analysis.core.metric_table import METRICS
from analysis.core.profile import SensitivityProfile
from analysis.diagnostics.compare import compare_criteria
from analysis.report.plots import criterion_comparison_figure
from analysis.sensitivity.adaptive import mode_of, side_by_side

HELP = "scans with different criteria side by side, or a sequential (adaptive) scan next to a full grid"


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("compare", help=HELP,
                       description="Read two or more scan folders (e.g. the same model scanned with magnitude, taylor "
                                   "and random) and write one row per (layer, sparsity) with each criterion's drop, "
                                   "the best criterion and the spread. Given one full-grid scan and one adaptive scan "
                                   "(--adaptive sequential, sequential-bisect, bisect, collapse) of one criterion, "
                                   "put them side by side instead: per layer the tolerance answer of each, the "
                                   "adaptive scan's bounds on its answer, whether the full grid's answer lies between "
                                   "them, and the sample-evaluations each spent.")
    p.add_argument("--scan", action="append", required=True, type=Path, metavar="DIR",
                   help="a scan folder (give --scan two or more times)")
    p.add_argument("--metric", choices=METRICS, default=None,
                   help="the metric whose drop is compared (default: the adaptive scan's, else accuracy if labelled, "
                        "else agreement)")
    p.add_argument("--tolerance", type=float, default=None, metavar="D",
                   help="adaptive vs full: the drop a layer may cost (default: the adaptive scan's tolerance)")
    p.add_argument("--out", type=Path, default=None, metavar="FILE.csv", help="write the comparison as CSV")
    p.add_argument("--plot", type=Path, default=None, metavar="FILE.html", help="write the comparison figure as HTML")
    return p


def run(args: argparse.Namespace) -> int:
    profiles = [SensitivityProfile.load(d) for d in args.scan]
    modes = [mode_of(p) for p in profiles]
    if len(profiles) == 2 and modes.count("off") == 1 and _same_pruning(profiles):
        return _adaptive_vs_full(args, profiles[modes.index("off") - 1], profiles[modes.index("off")])
    if args.tolerance is not None:
        raise UsageError("--tolerance applies to an adaptive scan next to a full grid only")
    comparison = compare_criteria(profiles, args.metric)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        comparison.to_csv(args.out, index=False)
    if args.plot:
        args.plot.parent.mkdir(parents=True, exist_ok=True)
        criterion_comparison_figure(comparison).write_html(args.plot, include_plotlyjs="cdn")
    print(f"drop in {comparison.attrs['metric']} (positive = worse than dense)")
    print(comparison.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    return 0


def _same_pruning(profiles: list[SensitivityProfile]) -> bool:
    return len({(p.meta.get("criterion"), p.meta.get("granularity")) for p in profiles}) == 1


def _adaptive_vs_full(args: argparse.Namespace, scan: SensitivityProfile, full: SensitivityProfile) -> int:
    if args.plot:
        raise UsageError("--plot draws a comparison of criteria; an adaptive scan next to a full grid is a table")
    table = side_by_side(scan, full, args.metric, args.tolerance)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        table.to_csv(args.out, index=False)
    a, b = table.attrs["scan"], table.attrs["full"]
    print(f"{mode_of(scan)} scan vs full grid: per layer, the largest sparsity whose {table.attrs['metric']} drop "
          f"is within {table.attrs['tolerance']:g}; max_sparsity_lo/_hi: the {mode_of(scan)} scan's bounds at "
          f"{table.attrs['confidence']:.0%} confidence")
    print(table.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    ratio = b["sample_evaluations"] / max(a["sample_evaluations"], 1)
    print(f"sample-evaluations: {a['sample_evaluations']:,} ({a['settled_early']} of {a['cells']} cells settled "
          f"early) vs {b['sample_evaluations']:,}, {ratio:.1f}x fewer; the full grid's answer lies within the bounds "
          f"for {int(table['inside'].sum())} of {len(table)} layers and equals the answer for "
          f"{int(table['same'].sum())}")
    return 0
