"""``prunescope scan``: every layer alone at every sparsity, a sensitivity profile in a folder and the run store."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tqdm import tqdm

from analysis.cli.common import (
    add_pruning_args,
    add_run_args,
    add_workload_args,
    load_workload_from,
    name_list,
    note,
    sparsity_list,
)
from analysis.cli.errors import UsageError
from analysis.core.batchnorm import has_batchnorm
from analysis.core.metric_table import METRICS
from analysis.core.profile import SensitivityProfile, tolerance_table
from analysis.sensitivity.adaptive import bisect_table, measured_cells, mode_of, sample_evaluations
from analysis.sensitivity.backends import Backend, validated_config
from analysis.sensitivity.cluster import describe
from analysis.sensitivity.config import (
    DEFAULT_SPARSITIES,
    ENGINE_NAMES,
    MODES,
    PARAMETERS,
    PRECISIONS,
    SEARCH_MODES,
    SEQUENTIAL_MODES,
    ScanConfig,
)
from analysis.sensitivity.driver import Progress, run_scan
from analysis.store.runs import RunStore, ScanRun
from analysis.store.scanning import scan_into_store
from analysis.workload.workload import Workload

HELP = "measure every layer alone at every sparsity (a sensitivity profile)"
ADAPTIVE_FLAGS = {"collapse_at": "--collapse-at", "tolerance": "--tolerance", "resolution": "--resolution",
                  "adaptive_metric": "--metric", "points_per_call": "--points-per-call", "shard_size": "--shard-size"}


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("scan", help=HELP,
                       description="Prune each layer alone at each sparsity, measure accuracy, loss, agreement and "
                                   "KL against the dense model, and write DIR/sensitivity.csv and DIR/scan.json.")
    add_workload_args(p)
    add_pruning_args(p)
    g = p.add_argument_group("scan")
    g.add_argument("--sparsities", type=sparsity_list, default=DEFAULT_SPARSITIES, metavar="S,S,...",
                   help="fractions to remove, each in [0, 1) (default 0.1,...,0.9; 0, the dense baseline, is added)")
    g.add_argument("--layers", type=name_list, default=None, metavar="NAME,...", help="only these layers (default all)")
    g.add_argument("--include-embeddings", action="store_true",
                   help="also scan embedding tables and a language model's output head onto the vocabulary (listed "
                        "but left out by default)")
    g.add_argument("--engine", choices=ENGINE_NAMES, default="fast",
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
                   help="for the printed summary: the largest sparsity per layer within this drop (default 0.01; "
                        "sequential scans use their --tolerance)")
    g.add_argument("--confidence", type=float, default=ScanConfig().confidence, metavar="C",
                   help="level of every cell's interval in sensitivity.csv (*_lo, *_hi) and of the summary's bounds, "
                        "in (0, 1) (default 0.95); sequential scans decide at this level. The intervals cover the "
                        "eval set's sampling error only")
    g.add_argument("--out", required=True, type=Path, metavar="DIR", help="folder for sensitivity.csv and scan.json")
    g.add_argument("--quiet", action="store_true", help="no progress bar and no summary")
    _add_adaptive_args(p)
    g = p.add_argument_group("run store")
    g.add_argument("--fresh", action="store_true",
                   help="start a new run even if the store holds an unfinished run of this scan")
    g.add_argument("--no-store", action="store_true",
                   help="do not read or write the run store ($PRUNESCOPE_HOME/runs.sqlite)")
    add_run_args(p)
    _add_backend_args(p)
    return p


def _add_adaptive_args(p: argparse.ArgumentParser) -> None:
    defaults = ScanConfig()
    g = p.add_argument_group("adaptive scan (fewer cells than the full grid; see README)")
    g.add_argument("--adaptive", choices=MODES, default="off",
                   help="off (default: every layer at every sparsity); collapse (stop a layer once its metric has "
                        "collapsed, fill the rest and flag it measured=False); bisect (search each layer's largest "
                        "sparsity within --tolerance to --resolution, and write DIR/tolerance.csv); sequential "
                        "(every cell, sampled --shard-size samples at a time in a fixed seeded order until its drop "
                        "is settled within or beyond --tolerance at --confidence; settled cells stop sampling and are "
                        "flagged settled_early); sequential-bisect (bisection whose cells are sampled that way)")
    g.add_argument("--collapse-at", type=float, default=None, metavar="F",
                   help=f"collapse: a layer has collapsed once its metric has fallen this fraction of the way from "
                        f"dense to chance (1/classes), in (0, 1] (default {defaults.collapse_at:g})")
    g.add_argument("--tolerance", type=float, default=None, metavar="D",
                   help=f"bisect and sequential modes: the largest drop of the metric a layer may cost (default "
                        f"{defaults.tolerance:g} = 1 point of accuracy or agreement)")
    g.add_argument("--resolution", type=float, default=None, metavar="R",
                   help=f"bisect, sequential-bisect: step of the sparsity grid searched, in (0, 0.5] (default "
                        f"{defaults.resolution:g})")
    g.add_argument("--metric", choices=METRICS, default=None,
                   help="adaptive modes: the metric that decides (default accuracy with labels, else agreement; "
                        "collapse takes accuracy or agreement, sequential modes accuracy, agreement, loss or kl)")
    g.add_argument("--points-per-call", type=int, default=None, metavar="K",
                   help=f"collapse and the bisections: sparsities measured per engine call (default "
                        f"{defaults.points_per_call})")
    g.add_argument("--shard-size", type=int, default=None, metavar="N",
                   help=f"sequential modes: samples between two looks (default {defaults.shard_size})")


def _add_backend_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("cluster")
    g.add_argument("--backend", choices=("local", "ray"), default="local",
                   help="local (default: this process) or ray (a Ray cluster; pip install 'prunescope[ray]')")
    g.add_argument("--address", default=None, metavar="auto|HOST:PORT",
                   help="ray: the cluster to join (default: start Ray on this machine)")
    g.add_argument("--workers", type=int, default=None, metavar="N",
                   help="ray: worker actors (default: one per GPU for --device cuda, else one per CPU)")


def _adaptive_settings(args: argparse.Namespace) -> dict:
    """The ScanConfig fields of ``--adaptive`` and its options; an option its mode does not use is an error."""
    given = {field: getattr(args, flag[2:].replace("-", "_")) for field, flag in ADAPTIVE_FLAGS.items()}
    used = PARAMETERS.get(args.adaptive, ())
    for field, value in given.items():
        if value is not None and field not in used:
            modes = [m for m, fields in PARAMETERS.items() if field in fields]
            named = modes[0] if len(modes) == 1 else f"{', '.join(modes[:-1])} or {modes[-1]}"
            raise UsageError(f"{ADAPTIVE_FLAGS[field]} applies to --adaptive {named} only")
    if args.adaptive in SEARCH_MODES and args.sparsities is not DEFAULT_SPARSITIES:
        raise UsageError(f"--sparsities does not apply to --adaptive {args.adaptive}: it searches the grid of "
                         "--resolution")
    return {"adaptive": args.adaptive, **{k: v for k, v in given.items() if v is not None}}


def run(args: argparse.Namespace) -> int:
    backend = Backend(args.backend, address=args.address, workers=args.workers).validated()
    workload = load_workload_from(args)
    config = ScanConfig(criterion=args.criterion, granularity=args.granularity, sparsities=args.sparsities,
                        layers=args.layers, batch_size=args.batch_size, device=args.device, engine=args.engine,
                        seed=args.seed, calib_samples=args.calib_samples, precision=args.precision,
                        chunk_size=args.chunk_size, bn_recalibrate=args.bn_recalibrate, bn_batches=args.bn_batches,
                        confidence=args.confidence, include_embeddings=args.include_embeddings,
                        **_adaptive_settings(args))
    config = validated_config(config, backend)
    if config.bn_recalibrate and not has_batchnorm(workload.model):
        note(f"{workload.model_spec} has no BatchNorm layers; --bn-recalibrate does not apply")
    bar = tqdm(total=None, unit="layer", disable=args.quiet or not sys.stderr.isatty(), file=sys.stderr)

    def on_progress(p: Progress, *_: object) -> None:
        bar.total = p.total
        bar.set_postfix_str(p.layer)
        bar.update(p.done - bar.n)

    if args.no_store:
        profile, stored = run_scan(workload, config, backend, progress=on_progress), None
    else:
        store = RunStore()  # opened before the scan is prepared: a foreign store file fails before any work
        stored = scan_into_store(store, workload, config, backend, fresh=args.fresh, close_store=True,
                                 on_open=_say_resumed, progress=on_progress)
        profile = stored.profile
    bar.close()
    profile.save(args.out)
    tolerance = _save_adaptive(profile, args.out)
    _print_summary(args, workload, config, backend, profile, tolerance)
    if stored and not stored.resumed and not args.quiet:
        print(f"stored as run {stored.run_id} in {store.path}", file=sys.stderr)
    return 0


def _say_resumed(run_id: int, resumed: ScanRun | None, layers: int) -> None:
    if resumed:
        print(f"resuming run {run_id}: {len(resumed.done)} of {layers} layers already done", file=sys.stderr)


def _print_summary(args: argparse.Namespace, workload: Workload, config: ScanConfig, backend: Backend,
                   profile: SensitivityProfile, tolerance: object) -> None:
    for notice in profile.meta.get("engine", {}).get("notices", []):
        note(notice)
    if args.quiet:
        return
    metric = profile.default_metric
    grid = f"{len(config.sparsities)} sparsities"
    if config.adaptive == "bisect":
        grid = f"a {len(config.sparsities) - 1}-point sparsity grid searched by bisection"
    print(f"{workload.model_spec} on {workload.data.spec}: {len(profile.layers)} layers x "
          f"{grid}, dense {metric} {profile.baseline(metric):.4f}, "
          f"{profile.meta['timings']['total_s']:.1f} s ({config.engine} engine)")
    if backend.kind == "ray":
        print(describe(profile.meta["backend"]))
    for name, reason in profile.meta["skipped_layers"].items():
        print(f"skipped {name}: {reason}")
    if tolerance is not None and mode_of(profile) in SEARCH_MODES:
        print(f"bisection: per layer, the largest sparsity whose {tolerance.attrs['metric']} drop stays within "
              f"{tolerance.attrs['tolerance']:g} (grid step {tolerance.attrs['resolution']:g})")
    ranked = tolerance if tolerance is not None else tolerance_table(profile, max_drop=args.max_drop)
    print(f"max_sparsity_lo/_hi: the answer's bounds at {profile.confidence:.0%} confidence (the eval set's "
          "sampling error only)")
    print(ranked.to_string(index=False))
    if config.adaptive == "collapse":
        cells = measured_cells(profile)
        print(f"collapse: measured {cells['measured']} of {cells['cells']} cells; {cells['filled']} filled after "
              "a collapse (measured=False in sensitivity.csv)")
    if config.adaptive in SEQUENTIAL_MODES:
        spent = sample_evaluations(profile)
        print(f"{config.adaptive}: {spent['settled_early']} of {spent['cells']} cells settled early "
              f"(settled_early in sensitivity.csv); {spent['sample_evaluations']:,} sample-evaluations, the full "
              f"grid's {spent['full_grid']:,} ({spent['saved']:.0%} saved)")
    extra = f" and {args.out / 'tolerance.csv'}" if tolerance is not None else ""
    print(f"wrote {args.out / 'sensitivity.csv'} and {args.out / 'scan.json'}{extra}")


def _save_adaptive(profile: SensitivityProfile, out: Path):  # noqa: ANN202 - DataFrame | None
    """The tolerance table of a bisection or sequential scan (at its tolerance), written to ``out/tolerance.csv``
    (``None`` for other scans)."""
    mode = mode_of(profile)
    if mode not in (*SEARCH_MODES, *SEQUENTIAL_MODES) or profile.table.empty:
        return None
    info = profile.meta["adaptive"]
    table = bisect_table(profile) if mode in SEARCH_MODES else \
        tolerance_table(profile, float(info["tolerance"]), info["adaptive_metric"])
    table.to_csv(out / "tolerance.csv", index=False)
    return table
