"""``prunescope runs``: list, show and delete the runs and artifacts in the run store."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from analysis.cli.common import print_json
from analysis.store.runs import RunStore, StoreError

HELP = "list, show and delete the runs and artifacts in the run store"


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("runs", help=HELP,
                       description="The run store ($PRUNESCOPE_HOME/runs.sqlite) keeps every scan as a run, one "
                                   "row per finished layer, and the schedules, diagnostics and exports made from "
                                   "them as artifacts.")
    rs = p.add_subparsers(dest="runs_command", metavar="ACTION", required=True)
    q = rs.add_parser("list", help="every run, newest first")
    q.add_argument("--json", action="store_true", help="one JSON object per line instead of a table")
    q = rs.add_parser("show", help="one run's configuration and progress; --out writes its profile")
    q.add_argument("run_id", type=int, metavar="RUN")
    q.add_argument("--out", type=Path, metavar="DIR", help="write sensitivity.csv and scan.json of the run here")
    q = rs.add_parser("delete", help="delete runs with their finished layers and artifacts (run ids are never reused)")
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


def run(args: argparse.Namespace) -> int:
    with RunStore() as store:
        ACTIONS[args.runs_command](store, args)
    return 0


def _list(store: RunStore, args: argparse.Namespace) -> None:
    df = store.runs()
    if args.json:
        for record in df.to_dict(orient="records"):
            print_json(record)
    else:
        table = df.drop(columns="sparsities").rename(columns={"grid": "sparsities"})
        print(table.to_string(index=False) if len(df) else f"no runs in {store.path}")


def _show(store: RunStore, args: argparse.Namespace) -> None:
    info = store.run(args.run_id)
    print(f"run {info['id']}: {info['status']}, {info['done_layers']} of {info['total_layers']} layers done")
    print(f"model {info['model']} (weights {info['model_fp']}), data {info['data']} (hash {info['data_fp']})")
    ident = info["identity"]
    print(f"criterion {ident['criterion']}, granularity {ident['granularity']}, sparsities "
          f"{','.join(f'{s:g}' for s in ident['sparsities'])}")
    if args.out:
        store.profile(args.run_id).save(args.out)
        print(f"wrote {args.out / 'sensitivity.csv'} and {args.out / 'scan.json'}")


def _delete(store: RunStore, args: argparse.Namespace) -> None:
    for run_id in args.run_ids:
        store.delete_run(run_id)
        print(f"deleted run {run_id}")


def _artifacts(store: RunStore, args: argparse.Namespace) -> None:
    df = store.artifacts(kind=args.kind, run_id=args.run)
    print(df.to_string(index=False) if len(df) else f"no artifacts in {store.path}")


def _get(store: RunStore, args: argparse.Namespace) -> None:
    info, payload = store.get_artifact(args.artifact_id)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(payload, bytes):
        args.out.write_bytes(payload)
    else:
        args.out.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"wrote {info['kind']} {info['name']} to {args.out}")


def _delete_artifact(store: RunStore, args: argparse.Namespace) -> None:
    for artifact_id in args.artifact_ids:
        store.delete_artifact(artifact_id)
        print(f"deleted artifact {artifact_id}")


def _check(store: RunStore, args: argparse.Namespace) -> None:
    problems = store.check()
    if problems:
        raise StoreError(f"the run store {store.path} is damaged: {'; '.join(problems[:5])}"
                         + (f" (and {len(problems) - 5} more)" if len(problems) > 5 else "")
                         + ". Move it away and Prunescope starts a new one")
    print(f"{store.path}: no damage found")


ACTIONS = {"list": _list, "show": _show, "delete": _delete, "artifacts": _artifacts, "get": _get,
           "delete-artifact": _delete_artifact, "check": _check}
