"""``prunescope report``: one self-contained HTML page of a scan, with its diagnosis, schedule and export."""

from __future__ import annotations

import argparse
from pathlib import Path

from analysis.cli.errors import UsageError
from analysis.cli.folders import load_export, load_lab, predictor_from_scan, scan_setting
from analysis.core.granularity import parse_granularity
from analysis.core.metric_table import METRICS
from analysis.core.profile import SensitivityProfile
from analysis.diagnostics.diagnosis import Diagnosis
from analysis.report.html import PLOTLYJS, build_report
from analysis.schedule.schedule import Schedule

HELP = "one HTML report of a scan, with its diagnosis, schedule and export"


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("report", help=HELP,
                       description="Write one self-contained HTML page: the sensitivity heatmap, curves and "
                                   "tolerance table of a scan, and where given the diagnosis, the schedule with "
                                   "its totals, prediction and measurement, the export's verification, size "
                                   "and latency, and a strategy lab.")
    p.add_argument("--scan", required=True, type=Path, metavar="DIR", help="a scan folder (sensitivity.csv, scan.json)")
    p.add_argument("--schedule", type=Path, default=None, metavar="F", help="a schedule file (.json or .yaml)")
    p.add_argument("--diagnosis", type=Path, default=None, metavar="DIR", help="a folder written by prunescope diagnose")
    p.add_argument("--export-dir", type=Path, default=None, metavar="D",
                   help="a folder holding an export (FILE.onnx with FILE.export.json or FILE.md)")
    p.add_argument("--lab", type=Path, default=None, metavar="DIR",
                   help="a folder written by prunescope lab (lab.json)")
    p.add_argument("--metric", choices=METRICS, default=None,
                   help="the metric shown (default: accuracy if labelled, else agreement)")
    p.add_argument("--plotlyjs", choices=PLOTLYJS, default="inline",
                   help="inline plotly.js so the report opens offline (default), or load it from the CDN")
    p.add_argument("--title", default="Prunescope report", help="the report's title")
    p.add_argument("--out", required=True, type=Path, metavar="FILE.html", help="the HTML file to write")
    return p


def run(args: argparse.Namespace) -> int:
    if not args.scan.is_dir():
        raise UsageError(f"scan folder {args.scan} does not exist")
    if args.out.suffix.lower() not in (".html", ".htm"):
        raise UsageError(f"--out must end in .html, got {args.out}")
    profile = SensitivityProfile.load(args.scan)
    schedule = prediction = totals = None
    if args.schedule is not None:
        schedule = Schedule.load(args.schedule)
        if "predicted" not in schedule.meta:
            predictor = predictor_from_scan(args.scan, args.metric)
            prediction = {predictor.metric: predictor.predict(schedule), "model": predictor.model}
        if "totals" not in schedule.meta and not parse_granularity(schedule.granularity).structured:
            totals = scan_setting(args.scan).accountant.totals(schedule).fractions()
    diagnosis = Diagnosis.load(args.diagnosis) if args.diagnosis is not None else None
    export = load_export(args.export_dir) if args.export_dir is not None else None
    lab = load_lab(args.lab) if args.lab is not None else None
    html = build_report(profile, metric=args.metric, diagnosis=diagnosis, schedule=schedule, prediction=prediction,
                        totals=totals, export=export, lab=lab, title=args.title, plotlyjs=args.plotlyjs)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(html, encoding="utf-8")
    print(f"wrote {args.out} ({len(html.encode()) / 1024:.0f} KB)")
    return 0
