"""``prunescope diagnose``: why a layer is fragile (activation shift, dead units, BatchNorm recalibration)."""

from __future__ import annotations

import argparse
from pathlib import Path

from analysis.cli.common import (
    add_pruning_args,
    add_run_args,
    add_store_arg,
    add_workload_args,
    load_more_data,
    load_workload_from,
    name_list,
    sparsity_list,
    store_artifact,
    workload_id,
)
from analysis.cli.errors import UsageError
from analysis.diagnostics.diagnosis import Diagnosis, diagnose
from analysis.sensitivity.config import ScanConfig
from analysis.store import artifacts

HELP = "why a layer is fragile: activation shift, dead neurons, BatchNorm recalibration"


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("diagnose", help=HELP,
                       description="Prune one layer (or each layer) at the given sparsity and explain the drop: how "
                                   "far the outputs downstream move, which units die, and how much BatchNorm "
                                   "recalibration gives back. Writes activation_shift.csv, dead_neurons.csv, "
                                   "bn_recalibration.csv and diagnose.json into DIR, and keeps the diagnosis "
                                   "in the run store (unless --no-store).")
    add_workload_args(p)
    add_pruning_args(p)
    g = p.add_argument_group("diagnosis")
    g.add_argument("--layer", required=True, metavar="NAME|all",
                   help="the layer to prune (several: comma-separated; all: every layer, one at a time)")
    g.add_argument("--sparsity", required=True, type=sparsity_list, metavar="S[,S,...]",
                   help="fraction to remove, in [0, 1)")
    g.add_argument("--bn-batches", type=int, default=8, metavar="N",
                   help="batches used to re-estimate BatchNorm statistics (default 8)")
    g.add_argument("--calib-data", default=None, metavar="D",
                   help="inputs for BatchNorm recalibration, e.g. sample:digits-train (default: the eval inputs)")
    g.add_argument("--calib-samples", type=int, default=256, metavar="N",
                   help="samples used by the taylor and activation criteria (default 256)")
    g.add_argument("--out", required=True, type=Path, metavar="DIR", help="folder for the tables and diagnose.json")
    g.add_argument("--quiet", action="store_true", help="print nothing but errors")
    add_store_arg(p, "diagnosis")
    add_run_args(p)
    return p


def run(args: argparse.Namespace) -> int:
    if not args.sparsity:
        raise UsageError("--sparsity needs at least one value")
    workload = load_workload_from(args)
    layers = None if args.layer.strip() == "all" else name_list(args.layer)
    if layers is not None and not layers:
        raise UsageError("--layer needs a layer name or 'all'")
    calib_x = load_more_data(args, args.calib_data, workload, "--calib-data").x if args.calib_data else None
    config = ScanConfig(criterion=args.criterion, granularity=args.granularity, sparsities=args.sparsity,
                        layers=layers, batch_size=args.batch_size, device=args.device, seed=args.seed,
                        calib_samples=args.calib_samples, bn_batches=args.bn_batches)
    stored_as = None if args.no_store else workload_id(workload)
    result = diagnose(workload, config, calib_x=calib_x)
    result.save(args.out)
    if not args.quiet:
        _print(workload.model_spec, workload.data.spec, result, args.out)
    if not args.no_store:
        cell = artifacts.diagnosis_cell(result)
        store_artifact(artifacts.DIAGNOSIS, lambda store: (
            artifacts.diagnosis_name(cell, len(result.summary["cells"])),
            artifacts.diagnosis_payload(stored_as, cell, result), None), args.quiet)
    return 0


def _print(model: str, data: str, result: Diagnosis, out: Path) -> None:
    recal = result.summary["recalibration"]
    print(f"{model} on {data}: {len(result.summary['cells'])} cells, "
          f"{result.summary['timings']['total_s']:.1f} s; BatchNorm recalibration: {recal['reason']}")
    for cell in result.summary["cells"]:
        line = (f"{cell['layer']} @ {cell['sparsity']:g}: logits cosine {cell.get('logits_cosine', float('nan')):.4f}, "
                f"rel L2 {cell.get('logits_rel_l2', float('nan')):.4f}; dead units created: "
                f"{cell.get('structural_dead_created', 0)} structural, "
                f"{cell.get('functional_dead_created', 0)} functional")
        if "recalibrated" in cell:
            line += f"; {cell['pruned']:.4f} -> {cell['recalibrated']:.4f} with recalibration"
        print(line)
    print(f"wrote {out / 'activation_shift.csv'}, {out / 'dead_neurons.csv'}, {out / 'bn_recalibration.csv'} and "
          f"{out / 'diagnose.json'}")
