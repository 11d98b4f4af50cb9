"""The ``prunescope`` command: the engine's steps, headless, for batch runs and CI.

Every command validates its arguments at the door; a wrong input ends with one line on stderr and exit
code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path

import torch

from analysis import __version__

EXIT_USAGE = 2


class UsageError(Exception):
    """A wrong input from the user: reported as one line, exit code 2."""


def _sparsity_list(text: str) -> tuple[float, ...]:
    from analysis.core.masks import check_sparsity

    try:
        return tuple(check_sparsity(part.strip()) for part in text.split(",") if part.strip())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _name_list(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def _add_workload_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model and data")
    g.add_argument("--model", required=True, metavar="M",
                   help="sample:NAME, torchvision:ARCH[=weights.pth], model.py:factory[=weights], a TorchScript "
                        ".pt/.ts file, a torch.export .pt2 file or an ONNX .onnx file")
    g.add_argument("--data", required=True, metavar="D",
                   help="sample:digits, a tensor file (.pt/.npz with x and optional y), an image folder or a .zip "
                        "of one, or random:CxHxW (label-free)")
    g.add_argument("--count", type=int, default=None, metavar="N",
                   help="use the first N samples (image folders: N spread over the classes, seeded; random "
                        "data: how many to draw; default 256)")
    g.add_argument("--input-size", type=int, default=224, metavar="PX", help="image folders: resize and crop to PX")
    g.add_argument("--normalize", choices=("imagenet", "none"), default="imagenet",
                   help="image folders: normalisation after scaling to [0, 1] (default imagenet)")
    _add_trust_arg(g)


def _add_trust_arg(g: argparse._ArgumentGroup) -> None:
    g.add_argument("--trust-code", "--trust-pickle", dest="trust_code", action="store_true",
                   help="allow models that are programs: model.py:factory, TorchScript, .pt2 or a pickled nn.Module "
                        "(loading them runs code from the file; state dicts, safetensors and ONNX never do)")


def _add_pruning_args(p: argparse.ArgumentParser) -> None:
    from analysis.core.criteria import CRITERIA

    g = p.add_argument_group("pruning")
    g.add_argument("--criterion", choices=CRITERIA, default="magnitude", help="importance criterion (default magnitude)")
    g.add_argument("--granularity", default="unstructured", metavar="G",
                   help="unstructured (default), channel, or an N:M pattern such as 2:4")


def _add_run_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("execution")
    g.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    g.add_argument("--batch-size", type=int, default=128, metavar="B", help="eval batch size (default 128)")
    g.add_argument("--seed", type=int, default=0, help="seed of the random criterion and random data (default 0)")
    g.add_argument("--threads", type=int, default=None, metavar="T", help="torch CPU threads (default: torch's choice)")


def _add_backend_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("cluster")
    g.add_argument("--backend", choices=("local", "ray"), default="local",
                   help="local (default: this process) or ray (a Ray cluster; pip install 'prunescope[ray]')")
    g.add_argument("--address", default=None, metavar="auto|HOST:PORT",
                   help="ray: the cluster to join (default: start Ray on this machine)")
    g.add_argument("--workers", type=int, default=None, metavar="N",
                   help="ray: worker actors (default: one per GPU for --device cuda, else one per CPU)")


def _load_workload(args: argparse.Namespace):  # noqa: ANN202
    from analysis.workload.workload import load_workload

    return load_workload(args.model, args.data, count=args.count, input_size=args.input_size,
                         normalize=args.normalize, trust_code=args.trust_code)


def _add_store_arg(p: argparse.ArgumentParser, what: str) -> None:
    g = p.add_argument_group("run store")
    g.add_argument("--no-store", action="store_true",
                   help=f"do not keep the {what} in the run store ($PRUNESCOPE_HOME/runs.sqlite; `prunescope runs "
                        "artifacts` lists what it keeps)")


def _store_artifact(kind: str, build: Callable, quiet: bool = False) -> None:
    """Keep a command's result in the run store, as the dashboard does: ``build(store)`` gives ``(name, payload,
    run_id)``. Called once the command's files are written, so a store that cannot be used (its one-line
    ``StoreError``, exit code 2) never costs them."""
    from analysis.store import artifacts
    from analysis.store.runs import RunStore

    with RunStore() as store:
        name, payload, run_id = build(store)
        artifact_id = artifacts.save(store, kind, name, payload, run_id)
        replaced = artifacts.replace_older(store, kind, artifact_id) if kind == artifacts.SCHEDULE else []
    if not quiet:
        note = f" (replacing the older schedule {name!r} of this model and data)" if replaced else ""
        print(f"stored as artifact {artifact_id} in {store.path}{note}", file=sys.stderr)


def _workload_id(workload) -> str:  # noqa: ANN001 - a Workload
    from analysis.store.artifacts import workload_id

    return workload_id(workload.fingerprint(), workload.data.fingerprint())


# ------------------------------------------------------------------------------------------------------- scan


def _scan_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    from analysis.scan.config import DEFAULT_SPARSITIES, PRECISIONS
    from analysis.scan.engines import ENGINES

    p = sub.add_parser("scan", help="measure every layer alone at every sparsity (a sensitivity profile)",
                       description="Prune each layer alone at each sparsity, measure accuracy, loss, agreement and "
                                   "KL against the dense model, and write DIR/sensitivity.csv and DIR/scan.json.")
    _add_workload_args(p)
    _add_pruning_args(p)
    g = p.add_argument_group("scan")
    g.add_argument("--sparsities", type=_sparsity_list, default=DEFAULT_SPARSITIES, metavar="S,S,...",
                   help="fractions to remove, each in [0, 1) (default 0.1,...,0.9; 0, the dense baseline, is added)")
    g.add_argument("--layers", type=_name_list, default=None, metavar="NAME,...", help="only these layers (default all)")
    g.add_argument("--engine", choices=tuple(ENGINES), default="fast",
                   help="scan engine: fast (default; reuses the dense prefix, same numbers) or naive (the reference)")
    g.add_argument("--precision", choices=PRECISIONS, default="exact",
                   help="float arithmetic of the pruned runs: exact (default; no TF32 on CUDA), tf32 (CUDA) or bf16")
    g.add_argument("--chunk-size", type=int, default=None, metavar="N",
                   help="fast engine: eval samples per chunk (default: batch size / number of sparsities, at least 32)")
    g.add_argument("--calib-samples", type=int, default=256, metavar="N",
                   help="samples used by the taylor and activation criteria (default 256)")
    g.add_argument("--bn-recalibrate", action="store_true",
                   help="re-estimate BatchNorm statistics after pruning each cell, before measuring")
    g.add_argument("--bn-batches", type=int, default=8, metavar="N",
                   help="batches of the eval inputs that --bn-recalibrate uses (default 8)")
    g.add_argument("--max-drop", type=float, default=0.01, metavar="D",
                   help="for the printed summary: the largest sparsity per layer within this drop (default 0.01)")
    g.add_argument("--out", required=True, type=Path, metavar="DIR", help="folder for sensitivity.csv and scan.json")
    g.add_argument("--quiet", action="store_true", help="no progress bar and no summary")
    _add_adaptive_args(p)
    g = p.add_argument_group("run store")
    g.add_argument("--fresh", action="store_true",
                   help="start a new run even if the store holds an unfinished run of this scan")
    g.add_argument("--no-store", action="store_true",
                   help="do not read or write the run store ($PRUNESCOPE_HOME/runs.sqlite)")
    _add_run_args(p)
    _add_backend_args(p)
    return p


def _add_adaptive_args(p: argparse.ArgumentParser) -> None:
    from analysis.core.metric_table import METRICS
    from analysis.scan.adaptive import MODES
    from analysis.scan.config import ScanConfig

    defaults = ScanConfig()
    g = p.add_argument_group("adaptive scan (fewer cells than the full grid; see README)")
    g.add_argument("--adaptive", choices=MODES, default="off",
                   help="off (default: every layer at every sparsity); collapse (stop a layer once its metric has "
                        "collapsed, fill the rest and flag it measured=False); bisect (search each layer's largest "
                        "sparsity within --tolerance to --resolution, and write DIR/tolerance.csv)")
    g.add_argument("--collapse-at", type=float, default=None, metavar="F",
                   help=f"collapse: a layer has collapsed once its metric has fallen this fraction of the way from "
                        f"dense to chance (1/classes), in (0, 1] (default {defaults.collapse_at:g})")
    g.add_argument("--tolerance", type=float, default=None, metavar="D",
                   help=f"bisect: the largest drop of the metric a layer may cost (default {defaults.tolerance:g} "
                        "= 1 point of accuracy or agreement)")
    g.add_argument("--resolution", type=float, default=None, metavar="R",
                   help=f"bisect: step of the sparsity grid searched, in (0, 0.5] (default {defaults.resolution:g})")
    g.add_argument("--metric", choices=METRICS, default=None,
                   help="collapse and bisect: the metric that decides (default accuracy with labels, else "
                        "agreement; collapse takes accuracy or agreement)")
    g.add_argument("--points-per-call", type=int, default=None, metavar="K",
                   help=f"collapse and bisect: sparsities measured per engine call (default "
                        f"{defaults.points_per_call})")


def _adaptive_settings(args: argparse.Namespace) -> dict:
    """The ScanConfig fields of ``--adaptive`` and its options; an option its mode does not use is an error."""
    from analysis.scan.adaptive import PARAMETERS
    from analysis.scan.config import DEFAULT_SPARSITIES

    given = {"collapse_at": args.collapse_at, "tolerance": args.tolerance, "resolution": args.resolution,
             "adaptive_metric": args.metric, "points_per_call": args.points_per_call}
    flags = {"collapse_at": "--collapse-at", "tolerance": "--tolerance", "resolution": "--resolution",
             "adaptive_metric": "--metric", "points_per_call": "--points-per-call"}
    used = PARAMETERS.get(args.adaptive, ())
    for field, value in given.items():
        if value is not None and field not in used:
            modes = [m for m, fields in PARAMETERS.items() if field in fields]
            raise UsageError(f"{flags[field]} applies to --adaptive {' or '.join(modes)} only")
    if args.adaptive == "bisect" and args.sparsities is not DEFAULT_SPARSITIES:
        raise UsageError("--sparsities does not apply to --adaptive bisect: it searches the grid of --resolution")
    return {"adaptive": args.adaptive, **{k: v for k, v in given.items() if v is not None}}


def _cmd_scan(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from analysis.scan.backends import Backend, prepare_for, validated_config
    from analysis.scan.config import ScanConfig
    from analysis.scan.driver import run_scan

    backend = Backend(args.backend, address=args.address, workers=args.workers).validated()
    workload = _load_workload(args)
    config = ScanConfig(criterion=args.criterion, granularity=args.granularity, sparsities=args.sparsities,
                        layers=args.layers, batch_size=args.batch_size, device=args.device, engine=args.engine,
                        seed=args.seed, calib_samples=args.calib_samples, precision=args.precision,
                        chunk_size=args.chunk_size, bn_recalibrate=args.bn_recalibrate, bn_batches=args.bn_batches,
                        **_adaptive_settings(args))
    config = validated_config(config, backend)
    if config.bn_recalibrate and not _has_batchnorm(workload.model):
        print(f"prunescope: note: {workload.model_spec} has no BatchNorm layers; --bn-recalibrate does not apply",
              file=sys.stderr)
    with _scan_writer(args, workload, config) as writer:
        ctx = prepare_for(workload, config, backend)
        resumed = writer.attach(workload, ctx) if writer else None
        if resumed:
            print(f"resuming run {resumed.id}: {len(resumed.done)} of {resumed.total_layers} layers already done",
                  file=sys.stderr)
        bar = tqdm(total=None, unit="layer", disable=args.quiet or not sys.stderr.isatty(), file=sys.stderr)

        def on_progress(p) -> None:  # noqa: ANN001
            bar.total = p.total
            bar.set_postfix_str(p.layer)
            bar.update(p.done - bar.n)

        try:
            profile = run_scan(workload, config, backend, done=resumed.done if resumed else None,
                               on_result=writer or None, progress=on_progress, context=ctx)
        except BaseException as exc:
            if writer:
                setattr(exc, KEPT_LAYERS, writer.committed_layers())
            raise
        bar.close()
        if writer:
            profile.meta["run_id"] = writer.run_id
            writer.finish(profile.meta, close_store=True)
        profile.save(args.out)
        tolerance = _save_adaptive(profile, args.out)
        _print_scan_summary(args, workload, config, backend, profile, tolerance)
        if writer and not resumed and not args.quiet:
            print(f"stored as run {writer.run_id} in {writer.store.path}", file=sys.stderr)
    return 0


def _scan_writer(args: argparse.Namespace, workload, config):  # noqa: ANN001, ANN202
    """The writer of this scan's run (it opens the store and finds the run at once, so a foreign store fails
    before the scan is prepared; then it creates a new run and commits layers from its own thread), or nothing
    with ``--no-store``."""
    if args.no_store:
        return nullcontext()
    from analysis.store.runs import LayerWriter

    return LayerWriter.start(workload, config, fresh=args.fresh)


def _print_scan_summary(args: argparse.Namespace, workload, config, backend, profile,  # noqa: ANN001
                        tolerance) -> None:  # noqa: ANN001 - tolerance: DataFrame | None
    from analysis.core.profile import tolerance_table

    for notice in profile.meta.get("engine", {}).get("notices", []):
        print(f"prunescope: note: {notice}", file=sys.stderr)
    if not args.quiet:
        metric = profile.default_metric
        grid = f"{len(config.sparsities)} sparsities"
        if config.adaptive == "bisect":
            grid = f"a {len(config.sparsities) - 1}-point sparsity grid searched by bisection"
        print(f"{workload.model_spec} on {workload.data.spec}: {len(profile.layers)} layers x "
              f"{grid}, dense {metric} {profile.baseline(metric):.4f}, "
              f"{profile.meta['timings']['total_s']:.1f} s ({config.engine} engine)")
        if backend.kind == "ray":
            from analysis.scan.cluster import describe

            print(describe(profile.meta["backend"]))
        for name, reason in profile.meta["skipped_layers"].items():
            print(f"skipped {name}: {reason}")
        if tolerance is not None:
            print(f"bisection: per layer, the largest sparsity whose {tolerance.attrs['metric']} drop stays within "
                  f"{tolerance.attrs['tolerance']:g} (grid step {tolerance.attrs['resolution']:g})")
            print(tolerance.to_string(index=False))
        else:
            print(tolerance_table(profile, max_drop=args.max_drop).to_string(index=False))
        if config.adaptive == "collapse":
            from analysis.scan.adaptive import measured_cells

            cells = measured_cells(profile)
            print(f"collapse: measured {cells['measured']} of {cells['cells']} cells; {cells['filled']} filled after "
                  "a collapse (measured=False in sensitivity.csv)")
        extra = f" and {args.out / 'tolerance.csv'}" if tolerance is not None else ""
        print(f"wrote {args.out / 'sensitivity.csv'} and {args.out / 'scan.json'}{extra}")


def _save_adaptive(profile, out: Path):  # noqa: ANN001, ANN202 - SensitivityProfile -> DataFrame | None
    """A bisection scan's tolerance table, written to ``out/tolerance.csv`` (``None`` for other scans)."""
    from analysis.scan.adaptive import bisect_table, mode_of

    if mode_of(profile) != "bisect" or profile.table.empty:
        return None
    table = bisect_table(profile)
    table.to_csv(out / "tolerance.csv", index=False)
    return table


# ------------------------------------------------------------------------------------------------------- runs


def _runs_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("runs", help="list, show and delete the runs and artifacts in the run store",
                       description="The run store ($PRUNESCOPE_HOME/runs.sqlite) keeps every scan as a run, one "
                                   "row per finished layer, and the schedules, diagnostics and exports made from "
                                   "them as artifacts.")
    rs = p.add_subparsers(dest="runs_command", metavar="ACTION", required=True)
    q = rs.add_parser("list", help="every run, newest first")
    q.add_argument("--json", action="store_true", help="one JSON object per line instead of a table")
    q = rs.add_parser("show", help="one run's configuration and progress; --out writes its profile")
    q.add_argument("run_id", type=int, metavar="RUN")
    q.add_argument("--out", type=Path, metavar="DIR", help="write sensitivity.csv and scan.json of the run here")
    q = rs.add_parser("delete", help="delete runs and their finished layers")
    q.add_argument("run_ids", type=int, nargs="+", metavar="RUN")
    q = rs.add_parser("artifacts", help="stored schedules, diagnostics and exports (from the schedule, diagnose and "
                                        "export commands and the dashboard), newest first")
    q.add_argument("--kind", default=None, help="only this kind (schedule, diagnostics, export, calibration, tuning)")
    q.add_argument("--run", type=int, default=None, metavar="RUN", help="only those made from this run")
    q = rs.add_parser("get", help="write one artifact's payload to a file (a schedule: a schedule file that export "
                                  "reads; a diagnosis or an export: its JSON payload)")
    q.add_argument("artifact_id", type=int, metavar="ID")
    q.add_argument("--out", type=Path, required=True, metavar="FILE")
    q = rs.add_parser("delete-artifact", help="delete stored artifacts")
    q.add_argument("artifact_ids", type=int, nargs="+", metavar="ID")
    rs.add_parser("check", help="read the whole store file and report any damage (opening only checks the parts "
                                "that do not grow with the store)")
    return p


def _cmd_runs(args: argparse.Namespace) -> int:
    from analysis.store.runs import RunStore, StoreError

    with RunStore() as store:
        action = args.runs_command
        if action == "list":
            df = store.runs()
            if args.json:
                for record in df.to_dict(orient="records"):
                    print_json(record)
            else:
                table = df.drop(columns="sparsities").rename(columns={"grid": "sparsities"})
                print(table.to_string(index=False) if len(df) else f"no runs in {store.path}")
        elif action == "show":
            info = store.run(args.run_id)
            print(f"run {info['id']}: {info['status']}, {info['done_layers']} of {info['total_layers']} layers done")
            print(f"model {info['model']} (weights {info['model_fp']}), data {info['data']} (hash {info['data_fp']})")
            ident = info["identity"]
            print(f"criterion {ident['criterion']}, granularity {ident['granularity']}, sparsities "
                  f"{','.join(f'{s:g}' for s in ident['sparsities'])}")
            if args.out:
                store.profile(args.run_id).save(args.out)
                print(f"wrote {args.out / 'sensitivity.csv'} and {args.out / 'scan.json'}")
        elif action == "delete":
            for run_id in args.run_ids:
                store.delete_run(run_id)
                print(f"deleted run {run_id}")
        elif action == "artifacts":
            df = store.artifacts(kind=args.kind, run_id=args.run)
            print(df.to_string(index=False) if len(df) else f"no artifacts in {store.path}")
        elif action == "get":
            info, payload = store.get_artifact(args.artifact_id)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(payload, bytes):
                args.out.write_bytes(payload)
            else:
                args.out.write_text(json.dumps(payload, indent=2) + "\n")
            print(f"wrote {info['kind']} {info['name']} to {args.out}")
        elif action == "delete-artifact":
            for artifact_id in args.artifact_ids:
                store.delete_artifact(artifact_id)
                print(f"deleted artifact {artifact_id}")
        elif action == "check":
            problems = store.check()
            if problems:
                raise StoreError(f"the run store {store.path} is damaged: {'; '.join(problems[:5])}"
                                 + (f" (and {len(problems) - 5} more)" if len(problems) > 5 else "")
                                 + ". Move it away and Prunescope starts a new one")
            print(f"{store.path}: no damage found")
    return 0


def _has_batchnorm(model) -> bool:  # noqa: ANN001
    from analysis.core.batchnorm import has_batchnorm

    return has_batchnorm(model)


# --------------------------------------------------------------------------------------------------- diagnose


def _diagnose_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("diagnose", help="why a layer is fragile: activation shift, dead neurons, BatchNorm recalibration",
                       description="Prune one layer (or each layer) at the given sparsity and explain the drop: how "
                                   "far the outputs downstream move, which units die, and how much BatchNorm "
                                   "recalibration gives back. Writes activation_shift.csv, dead_neurons.csv, "
                                   "bn_recalibration.csv and diagnose.json into DIR, and keeps the diagnosis "
                                   "in the run store (unless --no-store).")
    _add_workload_args(p)
    _add_pruning_args(p)
    g = p.add_argument_group("diagnosis")
    g.add_argument("--layer", required=True, metavar="NAME|all",
                   help="the layer to prune (several: comma-separated; all: every layer, one at a time)")
    g.add_argument("--sparsity", required=True, type=_sparsity_list, metavar="S[,S,...]",
                   help="fraction to remove, in [0, 1)")
    g.add_argument("--bn-batches", type=int, default=8, metavar="N",
                   help="batches used to re-estimate BatchNorm statistics (default 8)")
    g.add_argument("--calib-data", default=None, metavar="D",
                   help="inputs for BatchNorm recalibration, e.g. sample:digits-train (default: the eval inputs)")
    g.add_argument("--calib-samples", type=int, default=256, metavar="N",
                   help="samples used by the taylor and activation criteria (default 256)")
    g.add_argument("--out", required=True, type=Path, metavar="DIR", help="folder for the tables and diagnose.json")
    g.add_argument("--quiet", action="store_true", help="print nothing but errors")
    _add_store_arg(p, "diagnosis")
    _add_run_args(p)
    return p


def _cmd_diagnose(args: argparse.Namespace) -> int:
    from analysis.diagnose.diagnostics import diagnose
    from analysis.scan.config import ScanConfig
    from analysis.workload.data import load_data
    from analysis.workload.workload import image_channels

    if not args.sparsity:
        raise UsageError("--sparsity needs at least one value")
    workload = _load_workload(args)
    layers = None if args.layer.strip() == "all" else _name_list(args.layer)
    if layers is not None and not layers:
        raise UsageError("--layer needs a layer name or 'all'")
    calib_x = None
    if args.calib_data:
        calib = load_data(args.calib_data, input_size=args.input_size, normalize=args.normalize,
                          channels=image_channels(workload.input_shape))
        if tuple(calib.x.shape[1:]) != tuple(workload.data.x.shape[1:]):
            raise UsageError(f"--calib-data {args.calib_data} has inputs of shape {list(calib.x.shape[1:])}, "
                             f"the eval data {list(workload.data.x.shape[1:])}")
        calib_x = calib.x
    config = ScanConfig(criterion=args.criterion, granularity=args.granularity, sparsities=args.sparsity,
                        layers=layers, batch_size=args.batch_size, device=args.device, seed=args.seed,
                        calib_samples=args.calib_samples, bn_batches=args.bn_batches)
    workload_id = None if args.no_store else _workload_id(workload)
    result = diagnose(workload, config, calib_x=calib_x)
    result.save(args.out)
    if not args.quiet:
        recal = result.summary["recalibration"]
        print(f"{workload.model_spec} on {workload.data.spec}: {len(result.summary['cells'])} cells, "
              f"{result.summary['timings']['total_s']:.1f} s; BatchNorm recalibration: {recal['reason']}")
        for cell in result.summary["cells"]:
            line = (f"{cell['layer']} @ {cell['sparsity']:g}: logits cosine {cell.get('logits_cosine', float('nan')):.4f}, "
                    f"rel L2 {cell.get('logits_rel_l2', float('nan')):.4f}; dead units created: "
                    f"{cell.get('structural_dead_created', 0)} structural, {cell.get('functional_dead_created', 0)} functional")
            if "recalibrated" in cell:
                line += f"; {cell['pruned']:.4f} -> {cell['recalibrated']:.4f} with recalibration"
            print(line)
        print(f"wrote {args.out / 'activation_shift.csv'}, {args.out / 'dead_neurons.csv'}, "
              f"{args.out / 'bn_recalibration.csv'} and {args.out / 'diagnose.json'}")
    if not args.no_store:
        from analysis.store import artifacts

        cell = artifacts.diagnosis_cell(result)
        _store_artifact(artifacts.DIAGNOSIS, lambda store: (
            artifacts.diagnosis_name(cell, len(result.summary["cells"])),
            artifacts.diagnosis_payload(workload_id, cell, result), None), args.quiet)
    return 0


# ---------------------------------------------------------------------------------------------------- compare


def _compare_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("compare", help="scans with different criteria side by side, cell by cell",
                       description="Read two or more scan folders (e.g. the same model scanned with magnitude, taylor "
                                   "and random) and write one row per (layer, sparsity) with each criterion's drop, "
                                   "the best criterion and the spread.")
    p.add_argument("--scan", action="append", required=True, type=Path, metavar="DIR",
                   help="a scan folder (give --scan two or more times)")
    p.add_argument("--metric", default=None, help="accuracy, loss, agreement, kl (default: accuracy if labelled)")
    p.add_argument("--out", type=Path, default=None, metavar="FILE.csv", help="write the comparison as CSV")
    p.add_argument("--plot", type=Path, default=None, metavar="FILE.html", help="write the comparison figure as HTML")
    return p


def _cmd_compare(args: argparse.Namespace) -> int:
    from analysis.core.metric_table import METRICS
    from analysis.core.profile import SensitivityProfile
    from analysis.diagnose.diagnostics import compare_criteria
    from analysis.report.plots import criterion_comparison_figure

    if args.metric is not None and args.metric not in METRICS:
        raise UsageError(f"unknown metric {args.metric!r}; choose one of {', '.join(METRICS)}")
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


# ----------------------------------------------------------------------------------------------------- export

EXIT_VERIFY = 1
_DEFAULT_EXPORT_DATA = {"sample:": "sample:digits", "torchvision:": "random:3x224x224"}


def _export_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    from analysis.export.export import EXPORTERS

    p = sub.add_parser("export", help="export the pruned model to ONNX, verified in ONNX Runtime",
                       description="Apply a schedule, export the pruned model to one ONNX file (masked, or with "
                                   "--shrink the pruned channels removed), verify it in ONNX Runtime against "
                                   "PyTorch, and report size and latency against the dense model. Writes "
                                   "FILE.onnx, FILE.schedule.json (the schedule exported) and FILE.md, and "
                                   "keeps the report in the run store (unless --no-store).")
    g = p.add_argument_group("model and data")
    g.add_argument("--model", required=True, metavar="M", help="the model spec, as for scan")
    g.add_argument("--data", default=None, metavar="D",
                   help="example, calibration and verification inputs (default: sample:digits for samples, "
                        "random:3x224x224 for torchvision models)")
    g.add_argument("--count", type=int, default=None, metavar="N",
                   help="use the first N samples (image folders: N spread over the classes, seeded)")
    g.add_argument("--input-size", type=int, default=224, metavar="PX", help="image folders: resize and crop to PX")
    g.add_argument("--normalize", choices=("imagenet", "none"), default="imagenet", help="image folders: normalisation")
    _add_trust_arg(g)
    g = p.add_argument_group("export")
    g.add_argument("--schedule", required=True, type=Path, metavar="FILE.json", help="the schedule to apply (JSON/YAML)")
    g.add_argument("--shrink", action="store_true",
                   help="channel granularity: remove the pruned channels (and what depends on them) for real")
    g.add_argument("--bn-recalibrate", action="store_true", help="re-estimate BatchNorm statistics after pruning")
    g.add_argument("--exporter", choices=EXPORTERS, default="auto",
                   help="torch.onnx exporter: dynamo, torchscript, or auto (dynamo, then torchscript; default)")
    g.add_argument("--tolerance", type=float, default=1e-3, metavar="T",
                   help="largest accepted output difference relative to the largest output (default 1e-3)")
    g.add_argument("--verify-samples", type=int, default=256, metavar="N", help="samples compared (default 256)")
    g.add_argument("--calib-samples", type=int, default=256, metavar="N",
                   help="samples for the taylor/activation criteria and BatchNorm recalibration (default 256)")
    g.add_argument("--no-latency", action="store_true", help="skip the ONNX Runtime latency measurement")
    g.add_argument("--repeats", type=int, default=20, metavar="R", help="latency repeats per model (default 20)")
    g.add_argument("--ort-threads", type=int, default=1, metavar="T", help="ONNX Runtime threads (default 1)")
    g.add_argument("--json", action="store_true", help="print the report as one JSON object instead of the summary")
    g.add_argument("--out", required=True, type=Path, metavar="FILE.onnx", help="the ONNX file to write")
    _add_store_arg(p, "export report (the .onnx file stays where --out puts it)")
    _add_run_args(p)
    return p


# --------------------------------------------------------------------------------------------------- schedule


def _max_sparsity(text: str) -> tuple[float | None, dict[str, float]]:
    """``0.9`` (every layer), ``fc=0.5,conv1=0.7`` (per layer) or both: ``0.9,fc=0.5``."""
    from analysis.core.masks import check_sparsity

    default, per_layer = None, {}
    try:
        for part in (p.strip() for p in text.split(",") if p.strip()):
            if "=" in part:
                name, _, value = part.partition("=")
                per_layer[name.strip()] = check_sparsity(value.strip(), f"maximum sparsity of layer {name.strip()}")
            else:
                default = check_sparsity(part, "maximum sparsity")
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return default, per_layer


def _schedule_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    from analysis.schedule.allocate import METHODS

    p = sub.add_parser("schedule", help="allocate per-layer sparsities from a scan to reach a global target",
                       description="Choose per-layer sparsities that reach a target global sparsity, parameter "
                                   "count or FLOP count, write a schedule file and keep the schedule in the run "
                                   "store (unless --no-store). The schedule inherits the scan's criterion and "
                                   "granularity.")
    p.add_argument("--scan", required=True, type=Path, metavar="DIR", help="a scan folder (sensitivity.csv, scan.json)")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--target-sparsity", metavar="T", help="fraction of prunable weights to remove, in [0, 1)")
    g.add_argument("--target-params", metavar="N", help="prunable weights to keep: a count (1.5M) or a percentage (30%%)")
    g.add_argument("--target-flops", metavar="N", help="FLOPs to keep: a count (20M) or a percentage (40%%)")
    p.add_argument("--method", choices=METHODS, default="sensitivity", help="allocation method (default sensitivity)")
    p.add_argument("--metric", choices=("accuracy", "agreement", "loss", "kl"), default=None,
                   help="sensitivity method: the metric whose predicted drop is minimised (default accuracy, or "
                        "agreement without labels)")
    p.add_argument("--max-sparsity", type=_max_sparsity, default=(None, {}), metavar="S|NAME=S,...",
                   help="upper bound for every layer (0.9), for named layers (fc=0.5) or both (0.9,fc=0.5)")
    p.add_argument("--keep-dense", type=_name_list, default=(), metavar="NAME,...", help="layers never pruned")
    p.add_argument("--model", default=None, metavar="M",
                   help="the scanned model, where scan.json's model spec no longer loads (global, lamp, channel)")
    _add_trust_arg(p)
    p.add_argument("--out", required=True, type=Path, metavar="FILE", help="schedule file (.json, or .yaml/.yml)")
    p.add_argument("--name", default=None, metavar="NAME",
                   help="the schedule's name in the run store (default: the --out file's name without its suffix)")
    p.add_argument("--quiet", action="store_true", help="print nothing but errors")
    _add_store_arg(p, "schedule")
    return p


def _cmd_schedule(args: argparse.Namespace) -> int:
    from analysis.schedule.allocate import Bounds, schedule_from_scan
    from analysis.schedule.predict import Predictor
    from analysis.store import artifacts

    if not args.scan.is_dir():
        raise UsageError(f"scan folder {args.scan} does not exist")
    stored_name = artifacts.check_name(args.name) if args.name is not None else artifacts.name_from_file(args.out)
    kind, value = next((k, v) for k, v in (("sparsity", args.target_sparsity), ("params", args.target_params),
                                           ("flops", args.target_flops)) if v is not None)
    default, per_layer = args.max_sparsity
    bounds = Bounds(default, per_layer, tuple(args.keep_dense))
    schedule = schedule_from_scan(str(args.scan), args.method, kind, value, bounds, args.metric, args.model,
                                  trust_code=args.trust_code)
    predictor = Predictor.from_scan(args.scan, args.metric if args.metric in ("accuracy", "agreement") else None)
    unmeasured = predictor.unmeasured(schedule)
    if unmeasured:
        prediction = f"no prediction: the scan did not measure {', '.join(unmeasured)}"
    else:
        schedule.meta["predicted"] = {predictor.metric: predictor.predict(schedule), "model": predictor.model,
                                      "stage": predictor.stage}
        power = f", power {predictor.power:.2f}" if predictor.model == "calibrated" else ""
        prediction = (f"predicted {predictor.metric} {schedule.meta['predicted'][predictor.metric]:.4f} "
                      f"({predictor.model}{power}, {predictor.stage})")
    schedule.save(args.out)
    if not args.quiet:
        totals = schedule.meta["totals"]
        for name, s in schedule.sparsities.items():
            print(f"{name:40s} {s:.4f}")
        print(f"{args.method}: global sparsity {totals['global_sparsity']:.4f}, params kept "
              f"{totals['params_kept']:.4f}, FLOPs kept {totals['flops_kept']:.4f}; {prediction}")
        print(f"wrote {args.out}")
    if not args.no_store:
        _store_artifact(artifacts.SCHEDULE, lambda store: _stored_schedule(store, schedule, stored_name, args.scan),
                        args.quiet)
    return 0


def _stored_schedule(store, schedule, name: str, scan: Path) -> tuple:  # noqa: ANN001
    """A schedule's artifact: linked to the run its scan folder came from (and so to that run's workload)."""
    from analysis.store import artifacts

    try:
        run_id = artifacts.scan_run(store, json.loads((scan / "scan.json").read_text()))
    except (OSError, ValueError):
        run_id = None
    payload = artifacts.schedule_payload(schedule, name, artifacts.run_workload(store, run_id), run_id)
    return name, payload, run_id


# -------------------------------------------------------------------------------------------------- calibrate


def _calibrate_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    from analysis.schedule.calibrate import DEFAULT_METHODS, DEFAULT_TARGETS

    p = sub.add_parser("calibrate", help="measure real schedules of a scan and fit how its drops combine",
                       description="Build schedules from a scan (each method at each target global sparsity), "
                                   "measure each one for real, fit the calibrated prediction model and write "
                                   "DIR/calibration.json (used by `prunescope schedule` from then on) and "
                                   "DIR/calibration.csv (each schedule's measurement, each model's prediction "
                                   "and error).")
    p.add_argument("--scan", required=True, type=Path, metavar="DIR", help="a scan folder (sensitivity.csv, scan.json)")
    g = p.add_argument_group("model and data (default: the ones scan.json names)")
    g.add_argument("--model", default=None, metavar="M", help="the scanned model, as for scan")
    g.add_argument("--data", default=None, metavar="D", help="the eval data the scan measured")
    g.add_argument("--count", type=int, default=None, metavar="N",
                   help="use the first N samples (default: as many as the scan used)")
    g.add_argument("--input-size", type=int, default=224, metavar="PX", help="image folders: resize and crop to PX")
    g.add_argument("--normalize", choices=("imagenet", "none"), default="imagenet", help="image folders: normalisation")
    _add_trust_arg(g)
    g = p.add_argument_group("calibration")
    targets = ",".join(f"{t:g}" for t in DEFAULT_TARGETS)
    g.add_argument("--targets", default=targets, metavar="T,T,...",
                   help=f"target global sparsities, each in (0, 1) (default {targets})")
    g.add_argument("--methods", default=",".join(DEFAULT_METHODS), metavar="M,M,...",
                   help=f"allocation methods (default {','.join(DEFAULT_METHODS)})")
    g.add_argument("--metric", default=None, metavar="accuracy|agreement",
                   help="the metric to predict (default accuracy, or agreement without labels)")
    g.add_argument("--bn-recalibrate", action="store_true",
                   help="calibrate the metric after BatchNorm recalibration instead of right after pruning")
    g.add_argument("--train-data", default=None, metavar="D",
                   help="inputs for BatchNorm recalibration, e.g. sample:digits-train (default: the eval inputs)")
    g.add_argument("--quiet", action="store_true", help="print nothing but errors")
    _add_run_args(p)
    return p


def _cmd_calibrate(args: argparse.Namespace) -> int:
    from analysis.core.profile import SensitivityProfile
    from analysis.schedule.calibrate import calibrate, parse_methods, parse_targets
    from analysis.workload.data import load_data
    from analysis.workload.workload import image_channels, load_workload

    if not args.scan.is_dir():
        raise UsageError(f"scan folder {args.scan} does not exist")
    targets, methods = parse_targets(args.targets), parse_methods(args.methods)
    if args.metric not in (None, "accuracy", "agreement"):
        raise UsageError(f"--metric must be accuracy or agreement, got {args.metric!r}")
    if args.count is not None and args.count < 1:
        raise UsageError(f"--count must be at least 1, got {args.count}")
    meta = SensitivityProfile.load(args.scan).meta
    model, data = args.model or meta.get("model"), args.data or meta.get("data")
    if not model or not data:
        raise UsageError(f"{args.scan}/scan.json does not name its {'model' if not model else 'data'}; pass "
                         f"--{'model' if not model else 'data'}")
    count = args.count if args.count is not None else (meta.get("samples") if data == meta.get("data") else None)
    workload = load_workload(model, data, count=count, input_size=args.input_size, normalize=args.normalize,
                             trust_code=args.trust_code)
    train = None
    if args.train_data:
        train = load_data(args.train_data, input_size=args.input_size, normalize=args.normalize,
                          channels=image_channels(workload.input_shape))
    if args.bn_recalibrate and not _has_batchnorm(workload.model):
        print(f"prunescope: note: {workload.model_spec} has no BatchNorm layers; --bn-recalibrate does not apply",
              file=sys.stderr)
    elif bool((meta.get("config") or {}).get("bn_recalibrate")) != args.bn_recalibrate and not args.quiet:
        scanned, now = ("with", "without") if not args.bn_recalibrate else ("without", "with")
        print(f"prunescope: note: the scan measured each layer {scanned} BatchNorm recalibration; this calibration "
              f"measures schedules {now} it", file=sys.stderr)

    def on_sample(s) -> None:  # noqa: ANN001
        if not args.quiet:
            print(f"measured {s.method} at {s.target:g}: {s.measured:.4f}", file=sys.stderr)

    result = calibrate(args.scan, workload, targets=targets, methods=methods, bn_recalibrate=args.bn_recalibrate,
                       train=train, metric=args.metric, model_spec=args.model, batch_size=args.batch_size,
                       device=args.device, seed=args.seed, progress=on_sample)
    json_path, csv_path = result.save(args.scan)
    if args.quiet:
        return 0
    info, predictor = result.to_dict(), result.predictor
    if abs(info["dense_measured"] - info["dense_scan"]) > 1e-6:
        print(f"prunescope: note: dense {predictor.metric} is {info['dense_measured']:.4f} on {workload.data.spec}, "
              f"the scan measured {info['dense_scan']:.4f}; predictions start from the scan's", file=sys.stderr)
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
    print(f"calibrated power {predictor.power:.3f}{edge} from {len(result.table)} schedules; `prunescope schedule "
          f"--scan {args.scan}` now predicts with it")
    print(f"wrote {json_path} and {csv_path}")
    return 0


# --------------------------------------------------------------------------------------------------- evaluate


def _evaluate_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("evaluate", help="apply a whole schedule and measure it (prints one JSON object)",
                       description="Prune the model by a schedule file and measure accuracy, loss, agreement and "
                                   "the totals; with BatchNorm recalibration and optional sparse fine-tuning.")
    _add_workload_args(p)
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
    _add_run_args(p)
    return p


def _cmd_export(args: argparse.Namespace) -> int:
    from analysis.export.export import VerificationError, export
    from analysis.schedule.schedule import Schedule
    from analysis.workload.workload import load_workload

    for name in ("verify_samples", "calib_samples", "repeats", "ort_threads"):
        if getattr(args, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    data = args.data
    if data is None:
        data = next((d for prefix, d in _DEFAULT_EXPORT_DATA.items() if args.model.startswith(prefix)), None)
        if data is None:
            raise UsageError("give --data: the export needs example inputs to trace, calibrate and verify")
    schedule = Schedule.load(args.schedule)
    if args.shrink and schedule.granularity != "channel":
        raise UsageError(f"--shrink removes whole channels and needs channel granularity; {args.schedule} has "
                         f"{schedule.granularity}. Export it masked (without --shrink)")
    workload = load_workload(args.model, data, count=args.count, input_size=args.input_size,
                             normalize=args.normalize, trust_code=args.trust_code)
    workload_id = None if args.no_store else _workload_id(workload)
    try:
        report = export(workload.model, schedule, workload.data, args.out, shrink_channels=args.shrink,
                        bn_recalibrate=args.bn_recalibrate, model_spec=args.model, exporter=args.exporter,
                        tolerance=args.tolerance, verify_samples=args.verify_samples,
                        measure_latency=not args.no_latency, threads=args.ort_threads, repeats=args.repeats,
                        calib_samples=args.calib_samples, seed=args.seed, device=args.device)
    except VerificationError as exc:
        print(f"prunescope: error: {exc}", file=sys.stderr)
        return EXIT_VERIFY
    if args.json:
        print_json(report.to_dict())
    else:
        print(report.to_markdown())
        print(f"wrote {report.onnx_path}, {report.schedule_path} and {report.summary_path}")
    if not args.no_store:
        from analysis.store import artifacts

        label = args.schedule.name
        _store_artifact(artifacts.EXPORT, lambda store: (
            artifacts.export_name(label, report), artifacts.export_payload(workload_id, label, report),
            _schedule_run(store, schedule)))
    return 0


def _schedule_run(store, schedule) -> int | None:  # noqa: ANN001
    """The run a schedule came from: the one its ``meta`` names, else the run of the scan folder it was made
    from (``prunescope schedule`` records the folder), when that folder is still there."""
    from analysis.store.artifacts import scan_run

    run_id = schedule.meta.get("run_id")
    if isinstance(run_id, int) and not isinstance(run_id, bool):
        return run_id
    scan = schedule.meta.get("scan")
    if isinstance(scan, str) and (Path(scan) / "scan.json").is_file():
        try:
            return scan_run(store, json.loads((Path(scan) / "scan.json").read_text()))
        except (OSError, ValueError):
            return None
    return None


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from analysis.schedule.measure import measure_schedule
    from analysis.schedule.schedule import Schedule
    from analysis.workload.data import load_data
    from analysis.workload.workload import image_channels

    schedule = Schedule.load(args.schedule)
    if args.finetune_steps < 0:
        raise UsageError(f"--finetune-steps must be zero or more, got {args.finetune_steps}")
    if args.finetune_steps and not args.train_data:
        raise UsageError("--finetune-steps needs --train-data (fine-tuning on the eval set would measure nothing)")
    if not args.lr > 0:
        raise UsageError(f"--lr must be positive, got {args.lr}")
    workload = _load_workload(args)
    train = None
    if args.train_data:
        train = load_data(args.train_data, input_size=args.input_size, normalize=args.normalize,
                          channels=image_channels(workload.input_shape))
    bar = tqdm(total=args.finetune_steps, unit="step", disable=args.quiet or not sys.stderr.isatty() or
               not args.finetune_steps, file=sys.stderr)

    def on_step(p) -> None:  # noqa: ANN001
        bar.set_postfix(loss=f"{p.loss:.4f}")
        bar.update(1)

    result = measure_schedule(workload, schedule, bn_recalibrate=args.bn_recalibrate, train=train,
                              finetune_steps=args.finetune_steps, lr=args.lr, batch_size=args.batch_size,
                              calib_samples=args.calib_samples, device=args.device, seed=args.seed,
                              progress=on_step)
    bar.close()
    print_json({"model": workload.model_spec, "data": workload.data.spec, "schedule": str(args.schedule),
                **result.to_dict(), **_prediction_fields(schedule.meta.get("predicted"), result.to_dict())})
    return 0


def _prediction_fields(predicted: object, measured: dict) -> dict:
    """``predicted``, ``prediction_model`` and the measurement it stands for, when the schedule carries one."""
    if not isinstance(predicted, dict):
        return {}
    metric = next((m for m in ("accuracy", "agreement", "loss", "kl")
                   if isinstance(predicted.get(m), (int, float)) and not isinstance(predicted.get(m), bool)), None)
    if metric is None:
        return {}
    value = float(predicted[metric])
    stage = predicted.get("stage")
    if not isinstance(stage, str) or not measured.get(stage):
        stage = "pruned"
    actual = (measured.get(stage) or {}).get(metric)
    detail = {"metric": metric, "stage": stage, "measured": actual,
              "error": None if actual is None else value - actual}
    return {"predicted": value, "prediction_model": predicted.get("model"), "prediction": detail}


# ----------------------------------------------------------------------------------------------------- report


def _report_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    from analysis.report.html import PLOTLYJS

    p = sub.add_parser("report", help="one HTML report of a scan, with its diagnosis, schedule and export",
                       description="Write one self-contained HTML page: the sensitivity heatmap, curves and "
                                   "tolerance table of a scan, and where given the diagnosis, the schedule with "
                                   "its totals, prediction and measurement, and the export's verification, size "
                                   "and latency.")
    p.add_argument("--scan", required=True, type=Path, metavar="DIR", help="a scan folder (sensitivity.csv, scan.json)")
    p.add_argument("--schedule", type=Path, default=None, metavar="F", help="a schedule file (.json or .yaml)")
    p.add_argument("--diagnosis", type=Path, default=None, metavar="DIR", help="a folder written by prunescope diagnose")
    p.add_argument("--export-dir", type=Path, default=None, metavar="D",
                   help="a folder holding an export (FILE.onnx with FILE.export.json or FILE.md)")
    p.add_argument("--metric", default=None, help="accuracy, agreement, loss or kl (default: accuracy if labelled)")
    p.add_argument("--plotlyjs", choices=PLOTLYJS, default="inline",
                   help="inline plotly.js so the report opens offline (default), or load it from the CDN")
    p.add_argument("--title", default="Prunescope report", help="the report's title")
    p.add_argument("--out", required=True, type=Path, metavar="FILE.html", help="the HTML file to write")
    return p


def _cmd_report(args: argparse.Namespace) -> int:
    from analysis.core.profile import SensitivityProfile
    from analysis.report.html import build_report, load_diagnosis, load_export
    from analysis.schedule.predict import Predictor
    from analysis.schedule.schedule import Schedule

    if not args.scan.is_dir():
        raise UsageError(f"scan folder {args.scan} does not exist")
    if args.out.suffix.lower() not in (".html", ".htm"):
        raise UsageError(f"--out must end in .html, got {args.out}")
    profile = SensitivityProfile.load(args.scan)
    schedule = prediction = totals = None
    if args.schedule is not None:
        schedule = Schedule.load(args.schedule)
        if "predicted" not in schedule.meta:
            predictor = Predictor.from_scan(args.scan, args.metric)
            prediction = {predictor.metric: predictor.predict(schedule), "model": predictor.model}
        if "totals" not in schedule.meta and schedule.granularity != "channel":
            from analysis.schedule.allocate import scan_setting

            totals = scan_setting(str(args.scan)).accountant.totals(schedule).fractions()
    diagnosis = load_diagnosis(args.diagnosis) if args.diagnosis is not None else None
    export = load_export(args.export_dir) if args.export_dir is not None else None
    html = build_report(profile, metric=args.metric, diagnosis=diagnosis, schedule=schedule, prediction=prediction,
                        totals=totals, export=export, title=args.title, plotlyjs=args.plotlyjs)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(html, encoding="utf-8")
    print(f"wrote {args.out} ({len(html.encode()) / 1024:.0f} KB)")
    return 0


# -------------------------------------------------------------------------------------------------- dashboard


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"port {text!r} is not a whole number") from None
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port {port} is outside 1 to 65535")
    return port


def _dashboard_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("dashboard", help="open the dashboard (streamlit run app.py)",
                       description="Serve the Streamlit dashboard on http://127.0.0.1:PORT. Arguments after -- go to "
                                   "streamlit run unchanged (e.g. -- --server.fileWatcherType none).")
    p.add_argument("--port", type=_port, default=8501, help="the port to serve on (default 8501)")
    p.add_argument("--address", default="127.0.0.1",
                   help="the address to bind (default 127.0.0.1: only this machine can connect)")
    p.add_argument("--allow-code-uploads", action="store_true",
                   help="take TorchScript and .pt2 model uploads too: they are programs, and running them runs code "
                        "from the uploaded file with this server's rights (default: ONNX and state dicts only)")
    p.add_argument("streamlit_args", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    return p


DASHBOARD_PACKAGE = "prunescope_dashboard"  # app.py, pages/, ui/ and .streamlit/ as the wheel installs them


def dashboard_app() -> Path:
    """The dashboard's ``app.py``: the installed one (``prunescope_dashboard``, shipped in the wheel), else the one
    at the top of the checkout this package lies in."""
    import importlib.util

    spec = importlib.util.find_spec(DASHBOARD_PACKAGE)
    places = [Path(p) for p in (spec.submodule_search_locations or [])] if spec else []
    places.append(Path(__file__).resolve().parents[2])
    app = next((p / "app.py" for p in places if (p / "app.py").is_file()), None)
    if app is None:
        raise UsageError(f"the dashboard's app.py is not installed ({DASHBOARD_PACKAGE}) nor in a checkout next to "
                         "the analysis package; reinstall prunescope")
    return app


def dashboard_command(port: int = 8501, address: str = "127.0.0.1", extra: list[str] | None = None) -> list[str]:
    """The ``streamlit run app.py`` command line the dashboard command runs."""
    app = dashboard_app()
    extra = [a for a in (extra or []) if a != "--"]
    return [sys.executable, "-m", "streamlit", "run", str(app), "--server.port", str(port),
            "--server.address", address, *extra]


def _cmd_dashboard(args: argparse.Namespace) -> int:
    import os

    from analysis.workload.uploads import CODE_UPLOADS_ENV

    command = dashboard_command(args.port, args.address, args.streamlit_args)
    print(f"prunescope dashboard on http://{args.address}:{args.port}", file=sys.stderr, flush=True)
    if args.allow_code_uploads:
        os.environ[CODE_UPLOADS_ENV] = "1"
        print("prunescope: warning: TorchScript and .pt2 uploads are taken; they run code from the uploaded file",
              file=sys.stderr, flush=True)
    os.chdir(Path(command[4]).parent)
    os.execv(sys.executable, command)
    return 0  # not reached: streamlit replaces this process



# ------------------------------------------------------------------------------------------------------- main


COMMANDS: dict[str, tuple[Callable, Callable]] = {
    "scan": (_scan_parser, _cmd_scan),
    "diagnose": (_diagnose_parser, _cmd_diagnose),
    "compare": (_compare_parser, _cmd_compare),
    "schedule": (_schedule_parser, _cmd_schedule),
    "evaluate": (_evaluate_parser, _cmd_evaluate),
    "calibrate": (_calibrate_parser, _cmd_calibrate),
    "export": (_export_parser, _cmd_export),
    "runs": (_runs_parser, _cmd_runs),
    "report": (_report_parser, _cmd_report),
    "dashboard": (_dashboard_parser, _cmd_dashboard),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="prunescope",
        description="Measure how much accuracy each layer of a network loses when it is pruned.")
    parser.add_argument("--version", action="version", version=f"prunescope {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for make_parser, handler in COMMANDS.values():
        make_parser(sub).set_defaults(handler=handler)
    return parser


def main(argv: list[str] | None = None) -> int:
    from analysis.workload.errors import SpecError

    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "threads", None):
        torch.set_num_threads(args.threads)
    try:
        if getattr(args, "out", None) is not None:
            check_out(args.out, folder=(args.command, getattr(args, "runs_command", None)) in OUT_FOLDERS)
        return args.handler(args)
    except (UsageError, SpecError, ValueError, FileNotFoundError, KeyError) as exc:
        message = _model_failure(args, exc) or (exc.args[0] if isinstance(exc, KeyError) and exc.args else exc)
        print(f"prunescope: error: {message}{_kept_note(exc)}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt as exc:
        print(f"prunescope: interrupted{_kept_note(exc)}", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
    except Exception as exc:  # noqa: BLE001 - only the user's model's failures become a line; ours are re-raised
        message = _model_failure(args, exc)
        if message is None:
            raise
        print(f"prunescope: error: {message}{_kept_note(exc)}", file=sys.stderr)
        return EXIT_USAGE


def _model_failure(args: argparse.Namespace, exc: BaseException) -> str | None:
    from analysis.workload.usercode import model_failure

    return model_failure(exc, getattr(args, "model", None) or "the model")


KEPT_LAYERS = "prunescope_kept_layers"  # set on an exception that ends a scan whose finished layers are stored


def _kept_note(exc: BaseException) -> str:
    kept = getattr(exc, KEPT_LAYERS, None)
    if not kept:
        return ""
    return (f"; the {kept} finished layer{'s are' if kept != 1 else ' is'} kept in the run store: run the same "
            "command again to resume")


OUT_FOLDERS = {("scan", None), ("diagnose", None), ("runs", "show")}  # commands whose --out is a folder


def check_out(path: Path, folder: bool) -> None:
    """Refuse an ``--out`` that cannot be written before any work is done (a scan's results are not lost to a
    path that names a file, or a folder where a file goes)."""
    if folder and path.exists() and not path.is_dir():
        raise UsageError(f"--out {path} is a file; give a folder for the results")
    if not folder and path.is_dir():
        raise UsageError(f"--out {path} is a folder; give a file name")
    parent = path if folder else path.parent
    existing = next((p for p in (parent, *parent.parents) if p.exists()), None)
    if existing is not None and not existing.is_dir():
        raise UsageError(f"--out {path} cannot be written: {existing} is a file")
    if existing is not None and not os.access(existing, os.W_OK):
        raise UsageError(f"--out {path} cannot be written: no permission to write in {existing}")


def _json_default(obj: object) -> object:
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(type(obj).__name__)


def print_json(obj: object) -> None:
    """Print one JSON object on stdout (for commands whose output scripts read)."""
    print(json.dumps(obj, default=_json_default))


if __name__ == "__main__":
    sys.exit(main())
