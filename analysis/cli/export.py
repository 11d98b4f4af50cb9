"""``prunescope export``: the pruned model in one ONNX file, verified in ONNX Runtime, with its size and speed."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from analysis.cli.common import (
    add_data_args,
    add_run_args,
    add_store_arg,
    add_text_args,
    add_trust_arg,
    load_workload_from,
    print_json,
    store_artifact,
)
from analysis.cli.errors import EXIT_VERIFY, UsageError
from analysis.cli.folders import schedule_run
from analysis.deploy.export import EXPORTERS, VerificationError, check_shrinkable, export
from analysis.schedule.schedule import Schedule
from analysis.store import artifacts
from analysis.workload.workload import default_data

HELP = "export the pruned model to ONNX, verified in ONNX Runtime"


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("export", help=HELP,
                       description="Apply a schedule, export the pruned model to one ONNX file (masked, or with "
                                   "--shrink the pruned channels, heads or neurons removed), verify it in ONNX "
                                   "Runtime against PyTorch, and report size and latency against the dense model. "
                                   "Writes FILE.onnx, FILE.schedule.json (the schedule exported) and FILE.md, and "
                                   "keeps the report in the run store (unless --no-store), and beside it the "
                                   "dense model's ONNX file, exported once per model. A channel schedule is "
                                   "resolved to the model's coupled groups first (the notes say how), as "
                                   "evaluate and the dashboard resolve it.")
    g = p.add_argument_group("model and data")
    g.add_argument("--model", required=True, metavar="M", help="the model spec, as for scan")
    g.add_argument("--data", default=None, metavar="D",
                   help="example, calibration and verification inputs (default: sample:digits for samples, "
                        "random:3x224x224 for torchvision models)")
    add_data_args(g)
    add_text_args(g)
    add_trust_arg(g)
    g = p.add_argument_group("export")
    g.add_argument("--schedule", required=True, type=Path, metavar="FILE.json",
                   help="the schedule to apply (JSON/YAML)")
    g.add_argument("--shrink", action="store_true",
                   help="channel, heads or neurons granularity: remove the pruned channels (and what depends on "
                        "them), attention heads or MLP neurons for real (where the model's attention code cannot "
                        "lose heads, it is exported masked with a note saying why)")
    g.add_argument("--bn-recalibrate", action="store_true", help="re-estimate BatchNorm statistics after pruning")
    g.add_argument("--exporter", choices=EXPORTERS, default="auto",
                   help="torch.onnx exporter: dynamo, torchscript, or auto (default: torchscript first, dynamo "
                        "first for attention models, each falling back to the other)")
    g.add_argument("--tolerance", type=float, default=1e-3, metavar="T",
                   help="largest accepted output difference relative to the largest output (default 1e-3)")
    g.add_argument("--verify-samples", type=int, default=None, metavar="N",
                   help="samples compared and measured (default: the whole eval set)")
    g.add_argument("--calib-samples", type=int, default=256, metavar="N",
                   help="samples the taylor/activation criteria rank weights on (default 256)")
    g.add_argument("--no-latency", action="store_true", help="skip the ONNX Runtime latency measurement")
    g.add_argument("--repeats", type=int, default=20, metavar="R",
                   help="latency repeats per model and batch size (default 20; at least 5 run, fewer than R when a "
                        "batch size takes more than 15 s, and batch 32 is halved until 5 fit; the report says so)")
    g.add_argument("--ort-threads", type=int, default=1, metavar="T", help="ONNX Runtime threads (default 1)")
    g.add_argument("--json", action="store_true", help="print the report as one JSON object instead of the summary")
    g.add_argument("--out", required=True, type=Path, metavar="FILE.onnx", help="the ONNX file to write")
    add_store_arg(p, "export report (the .onnx file stays where --out puts it)")
    add_run_args(p)
    return p


def run(args: argparse.Namespace) -> int:
    for name in ("verify_samples", "calib_samples", "repeats", "ort_threads"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    data = args.data or default_data(args.model)
    if data is None:
        raise UsageError("give --data: the export needs example inputs to trace, calibrate and verify")
    schedule = Schedule.load(args.schedule)
    if args.shrink:
        check_shrinkable(schedule)
    workload = load_workload_from(args, data=data)
    model_fp = None if args.no_store else workload.fingerprint()
    stored_as = None if args.no_store else artifacts.workload_id(model_fp, workload.data.fingerprint())
    try:
        report = export(workload.model, schedule, workload.data, args.out, shrink_channels=args.shrink,
                        bn_recalibrate=args.bn_recalibrate, model_spec=args.model, exporter=args.exporter,
                        tolerance=args.tolerance, verify_samples=args.verify_samples,
                        measure_latency=not args.no_latency, threads=args.ort_threads, repeats=args.repeats,
                        calib_samples=args.calib_samples, seed=args.seed, device=args.device,
                        dense_cache=None if args.no_store else artifacts.dense_cache(model_fp))
    except VerificationError as exc:
        print(f"prunescope: error: {exc}", file=sys.stderr)
        return EXIT_VERIFY
    if args.json:
        print_json(report.to_dict())
    else:
        print(report.to_markdown())
        print(f"wrote {report.onnx_path}, {report.schedule_path} and {report.summary_path}")
    if not args.no_store:
        label = args.schedule.name
        store_artifact(artifacts.EXPORT, lambda store: (
            artifacts.export_name(label, report), artifacts.export_payload(stored_as, label, report),
            schedule_run(store, schedule)))
    return 0
