"""``prunescope evaluate``: a whole schedule applied and measured; one JSON object on stdout."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tqdm import tqdm

from analysis.cli.common import add_run_args, add_workload_args, load_more_data, load_workload_from, print_json
from analysis.cli.errors import UsageError
from analysis.schedule.finetune import FinetuneProgress
from analysis.schedule.measure import measure_schedule
from analysis.schedule.predict import check_prediction
from analysis.schedule.schedule import Schedule

HELP = "apply a whole schedule and measure it (prints one JSON object)"


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("evaluate", help=HELP,
                       description="Prune the model by a schedule file and measure accuracy, loss, agreement and "
                                   "the totals; with BatchNorm recalibration and optional sparse fine-tuning.")
    add_workload_args(p)
    g = p.add_argument_group("schedule")
    g.add_argument("--schedule", required=True, type=Path, metavar="FILE", help="a schedule file (.json or .yaml)")
    g.add_argument("--bn-recalibrate", action="store_true",
                   help="report (and fine-tune from) the model after BatchNorm recalibration")
    g.add_argument("--train-data", default=None, metavar="D",
                   help="training data for fine-tuning and BatchNorm recalibration (e.g. sample:digits-train)")
    g.add_argument("--finetune-steps", type=int, default=0, metavar="N", help="sparse fine-tuning steps (default 0)")
    g.add_argument("--lr", type=float, default=0.01, help="fine-tuning learning rate (default 0.01)")
    g.add_argument("--calib-samples", type=int, default=256, metavar="N",
                   help="samples used by the taylor and activation criteria (default 256)")
    g.add_argument("--quiet", action="store_true", help="no progress bar")
    add_run_args(p)
    return p


def run(args: argparse.Namespace) -> int:
    schedule = Schedule.load(args.schedule)
    if args.finetune_steps < 0:
        raise UsageError(f"--finetune-steps must be zero or more, got {args.finetune_steps}")
    if args.finetune_steps and not args.train_data:
        raise UsageError("--finetune-steps needs --train-data (fine-tuning on the eval set would measure nothing)")
    if not args.lr > 0:
        raise UsageError(f"--lr must be positive, got {args.lr}")
    workload = load_workload_from(args)
    train = load_more_data(args, args.train_data, workload, "--train-data") if args.train_data else None
    bar = tqdm(total=args.finetune_steps, unit="step", disable=args.quiet or not sys.stderr.isatty() or
               not args.finetune_steps, file=sys.stderr)

    def on_step(p: FinetuneProgress) -> None:
        bar.set_postfix(loss=f"{p.loss:.4f}")
        bar.update(1)

    result = measure_schedule(workload, schedule, bn_recalibrate=args.bn_recalibrate, train=train,
                              finetune_steps=args.finetune_steps, lr=args.lr, batch_size=args.batch_size,
                              calib_samples=args.calib_samples, device=args.device, seed=args.seed,
                              progress=on_step)
    bar.close()
    measured = result.to_dict()
    print_json({"model": workload.model_spec, "data": workload.data.spec, "schedule": str(args.schedule),
                **measured, **check_prediction(schedule.meta.get("predicted"), measured)})
    return 0
