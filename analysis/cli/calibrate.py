"""``prunescope calibrate``: measure real schedules of a scan and fit how its drops combine."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from analysis.cli.common import (
    add_data_args,
    add_run_args,
    add_text_args,
    add_trust_arg,
    load_more_data,
    load_workload_from,
    note,
)
from analysis.cli.errors import UsageError
from analysis.cli.folders import save_calibration
from analysis.core.batchnorm import has_batchnorm
from analysis.core.profile import SensitivityProfile
from analysis.schedule.calibrate import (
    DEFAULT_METHODS,
    DEFAULT_TARGETS,
    Calibration,
    Sample,
    calibrate,
    parse_methods,
    parse_targets,
)
from analysis.schedule.predict import calibration_verdict
from analysis.workload.workload import Workload, seq_len_of

HELP = "measure real schedules of a scan and fit how its drops combine"


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("calibrate", help=HELP,
                       description="Build schedules from a scan (each method at each target global sparsity), "
                                   "measure each one for real, fit the calibrated prediction model and write "
                                   "DIR/calibration.json (used by `prunescope schedule` from then on) and "
                                   "DIR/calibration.csv (each schedule's measurement, each model's prediction "
                                   "and error).")
    p.add_argument("--scan", required=True, type=Path, metavar="DIR", help="a scan folder (sensitivity.csv, scan.json)")
    g = p.add_argument_group("model and data (default: the ones scan.json names)")
    g.add_argument("--model", default=None, metavar="M", help="the scanned model, as for scan")
    g.add_argument("--data", default=None, metavar="D", help="the eval data the scan measured")
    add_data_args(g)
    add_text_args(g)
    add_trust_arg(g)
    g = p.add_argument_group("calibration")
    targets = ",".join(f"{t:g}" for t in DEFAULT_TARGETS)
    g.add_argument("--targets", default=targets, metavar="T,T,...",
                   help=f"target global sparsities, each in (0, 1) (default {targets})")
    g.add_argument("--methods", default=",".join(DEFAULT_METHODS), metavar="M,M,...",
                   help=f"allocation methods (default {','.join(DEFAULT_METHODS)})")
    g.add_argument("--metric", choices=("accuracy", "agreement"), default=None,
                   help="the metric to predict (default accuracy, or agreement without labels)")
    g.add_argument("--bn-recalibrate", action="store_true",
                   help="calibrate the metric after BatchNorm recalibration instead of right after pruning")
    g.add_argument("--train-data", default=None, metavar="D",
                   help="inputs for BatchNorm recalibration, e.g. sample:digits-train (default: the eval inputs)")
    g.add_argument("--quiet", action="store_true", help="print nothing but errors")
    add_run_args(p)
    return p


def run(args: argparse.Namespace) -> int:
    if not args.scan.is_dir():
        raise UsageError(f"scan folder {args.scan} does not exist")
    targets, methods = parse_targets(args.targets), parse_methods(args.methods)
    if args.count is not None and args.count < 1:
        raise UsageError(f"--count must be at least 1, got {args.count}")
    profile = SensitivityProfile.load(args.scan)
    workload = _scanned_workload(args, profile)
    train = load_more_data(args, args.train_data, workload, "--train-data") if args.train_data else None
    _say_stage(args, profile, workload)

    def on_sample(s: Sample) -> None:
        if not args.quiet:
            print(f"measured {s.method} at {s.target:g}: {s.measured:.4f}", file=sys.stderr)

    result = calibrate(profile, workload, targets=targets, methods=methods, bn_recalibrate=args.bn_recalibrate,
                       train=train, metric=args.metric, batch_size=args.batch_size, device=args.device,
                       seed=args.seed, progress=on_sample)
    paths = save_calibration(args.scan, result)
    if not args.quiet:
        _print(args, workload, result, paths)
    return 0


def _scanned_workload(args: argparse.Namespace, profile: SensitivityProfile) -> Workload:
    """The model and data ``--model``/``--data`` name, else those ``scan.json`` names (as many samples as the scan
    used, unless ``--count``)."""
    meta = profile.meta
    model, data = args.model or meta.get("model"), args.data or meta.get("data")
    if not model or not data:
        missing = "model" if not model else "data"
        raise UsageError(f"{args.scan}/scan.json does not name its {missing}; pass --{missing}")
    count = args.count if args.count is not None else (meta.get("samples") if data == meta.get("data") else None)
    return load_workload_from(args, model, data, count,
                              seq_len_of(meta.get("input_shape") or [], meta.get("input_dtype", "float32")))


def _say_stage(args: argparse.Namespace, profile: SensitivityProfile, workload: Workload) -> None:
    if args.bn_recalibrate and not has_batchnorm(workload.model):
        note(f"{workload.model_spec} has no BatchNorm layers; --bn-recalibrate does not apply")
    elif bool((profile.meta.get("config") or {}).get("bn_recalibrate")) != args.bn_recalibrate and not args.quiet:
        scanned, now = ("with", "without") if not args.bn_recalibrate else ("without", "with")
        note(f"the scan measured each layer {scanned} BatchNorm recalibration; this calibration measures schedules "
             f"{now} it")


def _print(args: argparse.Namespace, workload: Workload, result: Calibration, paths: tuple[Path, Path]) -> None:
    info, predictor = result.to_dict(), result.predictor
    if abs(info["dense_measured"] - info["dense_scan"]) > 1e-6:
        note(f"dense {predictor.metric} is {info['dense_measured']:.4f} on {workload.data.spec}, the scan measured "
             f"{info['dense_scan']:.4f}; predictions start from the scan's")
    cols = ["method", "target", "global_sparsity", "measured", "predicted_additive", "predicted_multiplicative",
            "predicted_calibrated"]
    table = result.table[cols].rename(columns=lambda c: c.replace("predicted_", ""))
    print(f"{workload.model_spec} on {workload.data.spec}: {predictor.metric} ({info['stage']}), measured and "
          f"predicted (calibrated: leave-one-out)")
    print(table.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    mae = info["mae"]
    print(f"mean absolute error: additive {mae['additive']:.4f}, multiplicative {mae['multiplicative']:.4f}, "
          f"calibrated {mae['calibrated']:.4f} (leave-one-out; {mae['calibrated_fitted']:.4f} fitted on all)")
    edge = " (at the edge of the range searched)" if not 0.06 < predictor.power < 8.0 else ""
    used, reason = calibration_verdict(info)
    print(f"calibrated power {predictor.power:.3f}{edge} from {len(result.table)} schedules; `prunescope schedule "
          f"--scan {args.scan}` now predicts with {'it' if used else 'the additive model'}: {reason}")
    print(f"wrote {paths[0]} and {paths[1]}")
