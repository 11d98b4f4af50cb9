"""``prunescope lab``: pruning strategies compared on the user's model, data and target (lab.csv, lab.json)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd
from tqdm import tqdm

from analysis.cli.common import (
    add_run_args,
    add_target_args,
    add_workload_args,
    load_more_data,
    load_workload_from,
    name_list,
    note,
    target_from,
)
from analysis.cli.errors import UsageError
from analysis.cli.folders import write_lab
from analysis.core.layers import find_layers
from analysis.deploy.export import EXPORTERS
from analysis.lab.config import LabConfig
from analysis.lab.result import LabResult
from analysis.lab.runner import LabProgress, run_lab
from analysis.lab.strategies import STRATEGIES, STRATEGY_CLASSES
from analysis.schedule.allocate import METHODS, parse_target
from analysis.schedule.totals import Accountant
from analysis.store.labs import lab_into_store
from analysis.store.runs import RunStore
from analysis.workload.models import read_state_dict

HELP = "compare pruning strategies on your model: initial drop, recovery curve, size and latency"
DEFAULTS = LabConfig()


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    strategies = "; ".join(f"{name}: {cls.summary}" for name, cls in STRATEGY_CLASSES.items())
    p = sub.add_parser("lab", help=HELP,
                       description="Prune the model to the target with each strategy, measure the initial drop, the "
                                   "recovery curve when fine-tuned with the mask fixed, the spread of per-layer "
                                   "sensitivity and the exported model's size and latency, beside the typical "
                                   "ranges of the literature. Writes DIR/lab.csv (every measured point) and "
                                   "DIR/lab.json; each finished unit is kept in the run store, so running the same "
                                   f"command again resumes. Strategies: {strategies}.")
    add_workload_args(p)
    g = p.add_argument_group("lab")
    g.add_argument("--train-data", default=None, metavar="T",
                   help="training data for the recovery curves and the strategies that train (sample:digits-train, "
                        "an image folder or a tensor file); without it only one-shot strategies run, unrecovered")
    add_target_args(p)
    g.add_argument("--strategies", type=name_list, default=(), metavar="NAME,...",
                   help=f"the strategies to compare (default every one: {','.join(STRATEGIES)})")
    g.add_argument("--allocation", choices=METHODS, default=DEFAULTS.allocation,
                   help=f"per-layer sparsities for the target (default {DEFAULTS.allocation}; sensitivity scans first)")
    g.add_argument("--epochs", type=float, default=DEFAULTS.epochs, metavar="N",
                   help=f"recovery budget: epochs of fine-tuning with the mask fixed (default {DEFAULTS.epochs:g})")
    g.add_argument("--evals-per-epoch", type=int, default=DEFAULTS.evals_per_epoch, metavar="K",
                   help=f"points of each curve per epoch (default {DEFAULTS.evals_per_epoch})")
    g.add_argument("--tolerance", type=float, default=DEFAULTS.tolerance, metavar="D",
                   help=f"recovered = within this drop of dense (default {DEFAULTS.tolerance:g}, 1 point)")
    g.add_argument("--rounds", type=int, default=DEFAULTS.rounds, metavar="K",
                   help=f"IMP: pruning rounds (default {DEFAULTS.rounds})")
    g.add_argument("--round-epochs", type=float, default=DEFAULTS.round_epochs, metavar="N",
                   help=f"IMP: epochs of training between rounds (default {DEFAULTS.round_epochs:g})")
    g.add_argument("--rewind-checkpoint", type=Path, default=None, metavar="F",
                   help="IMP with rewinding: a state dict from early in your training to rewind to (default: the "
                        "dense weights after --rewind-epochs of re-training)")
    g.add_argument("--rewind-epochs", type=float, default=DEFAULTS.rewind_epochs, metavar="N",
                   help=f"without a checkpoint: epochs of re-training for the rewinding point (default "
                        f"{DEFAULTS.rewind_epochs:g})")
    g.add_argument("--gradual-epochs", type=float, default=DEFAULTS.gradual_epochs, metavar="N",
                   help=f"gradual pruning: epochs the pruning steps spread over (default {DEFAULTS.gradual_epochs:g})")
    g.add_argument("--gradual-steps", type=int, default=DEFAULTS.gradual_steps, metavar="K",
                   help=f"gradual pruning: pruning steps (default {DEFAULTS.gradual_steps})")
    g.add_argument("--lr", type=float, default=DEFAULTS.lr, help=f"SGD learning rate (default {DEFAULTS.lr:g})")
    g.add_argument("--train-batch-size", type=int, default=DEFAULTS.batch_size, metavar="B",
                   help=f"training batch size (default {DEFAULTS.batch_size})")
    g.add_argument("--calib-samples", type=int, default=DEFAULTS.calib_samples, metavar="N",
                   help=f"training samples for SNIP's connection sensitivity (default {DEFAULTS.calib_samples})")
    g.add_argument("--no-export", action="store_true", help="skip the ONNX export (size and latency)")
    g.add_argument("--exporter", choices=EXPORTERS, default=DEFAULTS.exporter,
                   help=f"ONNX exporter for size and latency (default {DEFAULTS.exporter}: the fast one)")
    g.add_argument("--fresh", action="store_true", help="compute every unit again, even those the run store holds")
    g.add_argument("--no-store", action="store_true", help="keep the lab out of the run store (no resuming)")
    g.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--out", required=True, type=Path, metavar="DIR", help="folder for lab.csv and lab.json")
    add_run_args(p)
    return p


def run(args: argparse.Namespace) -> int:
    unknown = [s for s in args.strategies if s not in STRATEGIES]
    if unknown:
        raise UsageError(f"unknown strategy {unknown[0]!r}; choose from {','.join(STRATEGIES)}")
    workload = load_workload_from(args)
    train = load_more_data(args, args.train_data, workload, "--train-data") if args.train_data else None
    rewind = read_state_dict(args.rewind_checkpoint) if args.rewind_checkpoint else None
    config = _config(args, workload).validated()
    result = _run(args, workload, train, config, rewind)
    _write(args.out, result)
    return 0


def _config(args: argparse.Namespace, workload) -> LabConfig:  # noqa: ANN001 - a Workload
    kind, text = target_from(args)
    layers = find_layers(workload.model, workload.data.x[:1])
    accountant = Accountant(layers)
    target = parse_target(kind, text, accountant.flops if kind == "flops" else accountant.weights)
    return LabConfig(target, tuple(args.strategies), args.allocation, epochs=args.epochs,
                     evals_per_epoch=args.evals_per_epoch, tolerance=args.tolerance, rounds=args.rounds,
                     round_epochs=args.round_epochs, rewind_epochs=args.rewind_epochs,
                     gradual_epochs=args.gradual_epochs, gradual_steps=args.gradual_steps, lr=args.lr,
                     batch_size=args.train_batch_size, eval_batch_size=args.batch_size,
                     calib_samples=args.calib_samples, seed=args.seed, export=not args.no_export,
                     exporter=args.exporter, device=args.device)


def _run(args: argparse.Namespace, workload, train, config: LabConfig, rewind) -> LabResult:  # noqa: ANN001
    bar = tqdm(total=1000, unit="‰", disable=args.quiet or not sys.stderr.isatty(), file=sys.stderr)

    def progress(p: LabProgress) -> None:
        bar.set_description(f"{p.units_done}/{p.units} units, {p.unit}")
        if p.eta_s is not None:
            bar.set_postfix_str(f"about {p.eta_s:.0f} s left")
        bar.update(int(1000 * p.fraction) - bar.n)

    def opened(lab_id: int, done: int, units: int) -> None:
        if done:
            print(f"resuming lab {lab_id}: {done} of {units} units already done", file=sys.stderr)

    try:
        if args.no_store:
            return run_lab(workload, train, config, rewind=rewind, progress=progress)
        with RunStore() as store:
            stored = lab_into_store(store, workload, train, config, rewind=rewind, fresh=args.fresh,
                                    on_open=opened, progress=progress)
        print(f"stored as lab {stored.lab_id} in {store.path}", file=sys.stderr)
        return stored.result
    except KeyboardInterrupt:
        note("interrupted: the finished units are kept in the run store; run the same command again to resume")
        raise
    finally:
        bar.close()


def _write(out: Path, result: LabResult) -> None:
    csv, as_json = write_lab(out, result)
    with pd.option_context("display.width", 250, "display.max_colwidth", 48):
        print(f"{result.meta['model']} on {result.meta['data']}: {result.config.target}, "
              f"{result.config.allocation} allocation, dense {result.metric} {result.dense:.4f}")
        print(result.table(literature=False).to_string())
        cells = result.cells()
        placed = cells[cells["place"].notna()]
        if len(placed):
            print("\nagainst the literature's typical ranges:")
            wide = placed.pivot(index="label", columns="title", values="place")
            order = [label for label in dict.fromkeys(cells["label"]) if label in wide.index]
            print(wide.reindex(index=order, columns=list(dict.fromkeys(placed["title"]))).fillna("").to_string())
    for s in result.summary().to_dict(orient="records"):
        for text in s["notes"]:
            note(f"{s['strategy']}: {text}")
    print(f"wrote {csv} and {as_json}")
