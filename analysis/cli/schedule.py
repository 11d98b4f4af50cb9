"""``prunescope schedule``: per-layer sparsities from a scan that reach a global target, as a schedule file."""

from __future__ import annotations

import argparse
from pathlib import Path

from analysis.cli.common import (
    add_store_arg,
    add_target_args,
    add_trust_arg,
    max_sparsity,
    name_list,
    store_artifact,
    target_from,
)
from analysis.cli.errors import UsageError
from analysis.cli.folders import folder_run, predictor_from_scan, scan_setting
from analysis.core.metric_table import METRICS, metric_info
from analysis.schedule.allocate import METHODS, Bounds, Owl, parse_target, schedule_for
from analysis.schedule.schedule import Schedule
from analysis.store import artifacts
from analysis.store.runs import RunStore

HELP = "allocate per-layer sparsities from a scan to reach a global target"


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("schedule", help=HELP,
                       description="Choose per-layer sparsities that reach a target global sparsity, parameter "
                                   "count or FLOP count, write a schedule file and keep the schedule in the run "
                                   "store (unless --no-store). The schedule inherits the scan's criterion and "
                                   "granularity.")
    p.add_argument("--scan", required=True, type=Path, metavar="DIR", help="a scan folder (sensitivity.csv, scan.json)")
    add_target_args(p)
    p.add_argument("--method", choices=METHODS, default="sensitivity", help="allocation method (default sensitivity)")
    defaults = Owl()
    p.add_argument("--owl-lambda", type=float, default=defaults.lam, metavar="L",
                   help=f"owl: the blocks' sparsities spread over 2L around the target (default {defaults.lam:g})")
    p.add_argument("--owl-m", type=float, default=defaults.m, metavar="M",
                   help=f"owl: a Wanda score above M times its block's mean is an outlier (default {defaults.m:g})")
    p.add_argument("--metric", choices=METRICS, default=None,
                   help="sensitivity method: the metric whose predicted drop is minimised (default accuracy, or "
                        "agreement without labels)")
    p.add_argument("--max-sparsity", type=max_sparsity, default=(None, {}), metavar="S|NAME=S,...",
                   help="upper bound for every layer (0.9), for named layers (fc=0.5) or both (0.9,fc=0.5)")
    p.add_argument("--keep-dense", type=name_list, default=(), metavar="NAME,...", help="layers never pruned")
    p.add_argument("--model", default=None, metavar="M",
                   help="the scanned model, where scan.json's model spec no longer loads (global, lamp, owl, "
                        "channel)")
    add_trust_arg(p)
    p.add_argument("--out", required=True, type=Path, metavar="FILE", help="schedule file (.json, or .yaml/.yml)")
    p.add_argument("--name", default=None, metavar="NAME",
                   help="the schedule's name in the run store (default: the --out file's name without its suffix)")
    p.add_argument("--quiet", action="store_true", help="print nothing but errors")
    add_store_arg(p, "schedule")
    return p


def run(args: argparse.Namespace) -> int:
    if not args.scan.is_dir():
        raise UsageError(f"scan folder {args.scan} does not exist")
    stored_name = artifacts.check_name(args.name) if args.name is not None else artifacts.name_from_file(args.out)
    kind, value = target_from(args)
    default, per_layer = args.max_sparsity
    setting = scan_setting(args.scan, (args.method,), args.model, args.trust_code)
    total = setting.accountant.flops if kind == "flops" else setting.accountant.weights
    schedule = schedule_for(setting, args.method, parse_target(kind, value, total),
                            Bounds(default, per_layer, tuple(args.keep_dense)), args.metric,
                            Owl(args.owl_lambda, args.owl_m))
    schedule.meta.update({"scan": str(args.scan), **({"model": args.model} if args.model else {})})
    bounded = args.metric if args.metric and metric_info(args.metric).bounded else None
    predictor = predictor_from_scan(args.scan, bounded)
    warning = None
    if predictor.unmeasured(schedule):
        prediction = f"no prediction: the scan did not measure {', '.join(predictor.unmeasured(schedule))}"
    else:
        found = predictor.prediction(schedule)
        schedule.meta["predicted"] = found.recorded()
        prediction = (f"predicted {found.metric} {found.value:.4f} ({found.band_text()}; {found.stage}); "
                      f"prediction model {found.reason}")
        warning = found.warning()
    schedule.save(args.out)
    if not args.quiet:
        totals = schedule.meta["totals"]
        for name, s in schedule.sparsities.items():
            print(f"{name:40s} {s:.4f}")
        print(f"{args.method}: global sparsity {totals['global_sparsity']:.4f}, params kept "
              f"{totals['params_kept']:.4f}, FLOPs kept {totals['flops_kept']:.4f}; {prediction}")
        if warning:
            print(f"warning: {warning}")
        print(f"wrote {args.out}")
    if not args.no_store:
        store_artifact(artifacts.SCHEDULE, lambda store: _stored(store, schedule, stored_name, args.scan), args.quiet)
    return 0


def _stored(store: RunStore, schedule: Schedule, name: str, scan: Path) -> tuple:
    """A schedule's artifact: linked to the run its scan folder came from (and so to that run's workload)."""
    run_id = folder_run(store, scan)
    payload = artifacts.schedule_payload(schedule, name, artifacts.run_workload(store, run_id), run_id)
    return name, payload, run_id
