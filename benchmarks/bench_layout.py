"""Before/after speed of the fast engine and the run store: the same scans on two checkouts, interleaved.

Is the scan engine (fast and naive) and the run store as fast after a refactoring as before it?

    OMP_NUM_THREADS=1 python benchmarks/bench_layout.py --before /work/before [--after .] [--repeats 7] \\
        [--engine-repeats 5] [--threads 1] [--json layout.json]

Two checkouts have different module paths (``analysis.engine`` before the layered package, ``analysis.sensitivity.*``
after it), so nothing here imports the engine: every measurement goes through the one interface both have, the
command line (``python -m analysis scan ...``, run in a child process with ``PYTHONPATH=<checkout>`` and ``-P``,
from an empty folder, so that neither the editable install nor the working directory decides which ``analysis``
is imported; the child reports the ``analysis/__init__.py`` it got and the run is refused if that is not the
checkout's) and what the command writes (``scan.json``: ``timings.total_s``, the engine's time).

Two cases, before and after interleaved (each pair's order alternating), the same seeds and data on both:

1. **engine**: ``scan --model torchvision:resnet18 --data random:3x32x32 --count 32 --no-store`` with ``--engine
   fast`` and ``--engine naive`` (sizes are flags), one fresh process per command, as a user runs it. Reported:
   the engine's seconds (``timings.total_s``), the whole command's wall time (interpreter start, imports, model
   and data, prepare, scan, saving), the after/before ratio of each pair (median and IQR), and the naive/fast
   speed-up before and after.
2. **store**: the three samples (``sample:digits-mlp``, ``-cnn``, ``-resnet`` on ``sample:digits``) with the run
   store (``--fresh``, a new empty ``PRUNESCOPE_HOME`` for every command) and with ``--no-store``. One child
   process per checkout and repeat runs one untimed warm-up command per model (with the store, in a throw-away
   home) and then the six timed commands (store and no store alternating which goes first), each the CLI's
   ``main`` as ``python -m analysis`` runs it, timed from inside the process: a whole command without the
   interpreter start and the imports, which are the same with or without the store and would bury its few
   milliseconds in their noise (the import of the store's own module is in the warm-up, so it is not counted).
   ``--store-cold`` runs every command in its own fresh process instead (slower, noisier, and it counts the
   import of the store's module and of sqlite3). Reported: the engine's seconds, and the store's overhead before
   and after: the median command time with the store minus the median without, of the whole command (noisy: the
   engine's own run-to-run spread is larger than the store) and of the command outside the engine's
   ``timings.total_s`` (opening the store, finding the run, waiting for the writer, plus model loading and
   prepare, which are the same in both), with the median of the paired after-minus-before differences of the
   latter.

At the defaults it takes about 10 minutes on a 2-core VM (a warm-up, 20 engine commands of 15-25 s each, 14 store
processes of about 12 s each); ``--cases engine`` or ``--cases store`` runs one case.

Each command starts from ``torch.manual_seed(0)`` (the CLI does not seed a random-init ``torchvision:`` model),
so every run of a command scans the same weights, and the tables say whether before and after wrote the same
``sensitivity.csv``. Children run with ``OMP_NUM_THREADS=MKL_NUM_THREADS=--threads`` and ``--threads`` on the
command (default 1: on a 2-core machine the other core absorbs the benchmark's own process and other noise). A
child whose command fell back to another engine, or wrote (or failed to write) a run store against the case, stops
the benchmark. The children share a private bytecode cache (``PYTHONPYCACHEPREFIX``, filled by a warm-up command
per checkout) so that neither checkout pays for compiling its sources, as an installed package would not. Prints
Markdown tables for BENCHMARKS.md; ``--json`` keeps every run's raw numbers. Needs only the standard library here;
the children need the project's dependencies (run it with the project's Python, or pass ``--python``).
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import platform
import runpy
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SAMPLES = ("sample:digits-mlp", "sample:digits-cnn", "sample:digits-resnet")
DEFAULT_SPARSITIES = ",".join(f"0.{i}" for i in range(1, 10))


# --------------------------------------------------------------------------------------------------- the child


def child(jobs_file: str, result_file: str) -> int:
    """Run in a fresh interpreter: import the CLI (timed), then each job as ``python -m analysis ARGV`` (timed),
    writing what it measured to ``result_file`` after every job."""
    jobs = json.loads(Path(jobs_file).read_text())
    t = time.perf_counter()
    import analysis.cli  # noqa: F401 - the CLI both layouts have (the `prunescope` entry point)
    import_s = time.perf_counter() - t
    import analysis
    import torch

    report = {"analysis_file": analysis.__file__, "import_s": import_s, "jobs": []}
    for job in jobs:
        os.environ.update(job["env"])
        torch.manual_seed(0)  # random-init models (torchvision:ARCH without weights) are not seeded by the CLI
        sys.argv = ["prunescope", *job["argv"]]
        t, rc = time.perf_counter(), 0
        try:
            runpy.run_module("analysis", run_name="__main__", alter_sys=True)
        except SystemExit as exc:
            rc = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        report["jobs"].append({"run_s": time.perf_counter() - t, "rc": rc})
        Path(result_file).write_text(json.dumps(report))
        if rc:
            return 1
    return 0


# ------------------------------------------------------------------------------------------------ the parent


class Runner:
    """Spawns children on one checkout or the other and collects what they measured."""

    def __init__(self, args: argparse.Namespace, tmp: Path) -> None:
        self.args, self.tmp, self.count, self.children = args, tmp, 0, 0
        self.checkouts = {"before": Path(args.before).resolve(), "after": Path(args.after).resolve()}
        self.runs: list[dict] = []
        self.started = time.perf_counter()

    def env(self, side: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items()
               if k not in ("PYTHONPATH", "PYTHONDONTWRITEBYTECODE", "PRUNESCOPE_HOME", "PYTHONSTARTUP")}
        threads = str(self.args.threads)
        env.update(PYTHONPATH=str(self.checkouts[side]), PYTHONPYCACHEPREFIX=str(self.tmp / "pycache"),
                   OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads, PYTHONHASHSEED="0")
        return env

    def job(self, argv: list[str], store: bool, **info) -> dict:  # noqa: ANN003
        """One command: its own out folder and an empty PRUNESCOPE_HOME."""
        self.count += 1
        folder = self.tmp / f"job{self.count}"
        (folder / "home").mkdir(parents=True)
        argv = [*argv, "--out", str(folder / "out"), "--threads", str(self.args.threads)]
        argv.append("--fresh" if store else "--no-store")
        return {"argv": argv, "env": {"PRUNESCOPE_HOME": str(folder / "home")}, "folder": str(folder),
                "store": store, **info}

    def run(self, side: str, jobs: list[dict], record: bool = True) -> list[dict]:
        """Run ``jobs`` in one fresh child on ``side``; one record per job (the child's import time and whole
        wall time stand in every record of that child)."""
        self.children += 1
        jobs_file, result_file = self.tmp / f"jobs{self.children}.json", self.tmp / f"result{self.children}.json"
        jobs_file.write_text(json.dumps([{"argv": j["argv"], "env": j["env"]} for j in jobs]))
        workdir = self.tmp / "cwd"
        workdir.mkdir(exist_ok=True)
        load = os.getloadavg()[0]
        with open(self.tmp / "child.log", "ab") as log:
            t = time.perf_counter()
            proc = subprocess.run([self.args.python, "-P", str(Path(__file__).resolve()), "--child",
                                   str(jobs_file), str(result_file)],
                                  cwd=workdir, env=self.env(side), stdout=log, stderr=subprocess.STDOUT)
            wall = time.perf_counter() - t
        report = json.loads(result_file.read_text()) if result_file.exists() else {"jobs": []}
        if proc.returncode or len(report["jobs"]) != len(jobs):
            done = report["jobs"]
            failed = jobs[len(done) - 1 if done and done[-1]["rc"] else min(len(done), len(jobs) - 1)]
            tail = (self.tmp / "child.log").read_text(errors="replace")[-3000:]
            sys.exit(f"bench_layout: a child on {side} failed (exit {proc.returncode}) running\n  "
                     f"{failed['argv']}\n--- its output ---\n{tail}")
        got = Path(report["analysis_file"]).resolve()
        if not got.is_relative_to(self.checkouts[side]):
            sys.exit(f"bench_layout: the {side} child imported {got}, not the checkout {self.checkouts[side]}")
        records = []
        for job, measured in zip(jobs, report["jobs"]):
            folder = Path(job["folder"])
            scan = json.loads((folder / "out" / "scan.json").read_text())
            csv = (folder / "out" / "sensitivity.csv").read_bytes()
            rec = {k: v for k, v in job.items() if k not in ("env", "folder")}
            rec.update(side=side, run_s=measured["run_s"], import_s=report["import_s"], process_s=wall,
                       jobs_in_process=len(jobs), load_before=load, analysis_file=str(got),
                       total_s=scan["timings"]["total_s"], prepare_s=scan["timings"].get("prepare_s"),
                       outside_s=measured["run_s"] - scan["timings"]["total_s"],
                       per_layer_s=scan["timings"].get("per_layer_s", {}),
                       layers=len(scan["layers"]), samples=scan["samples"], engine_used=scan["engine"].get("used"),
                       stored=(folder / "home" / "runs.sqlite").exists(), versions=scan.get("versions"),
                       csv_sha256=hashlib.sha256(csv).hexdigest())
            if rec["stored"] != job["store"] or rec["engine_used"] != job["argv"][job["argv"].index("--engine") + 1]:
                sys.exit(f"bench_layout: on {side}, {job['argv']} ran the {rec['engine_used']} engine and "
                         f"{'wrote' if rec['stored'] else 'did not write'} a run store: not the case asked for")
            records.append(rec)
            shutil.rmtree(folder, ignore_errors=True)
        if record:
            self.runs.extend(records)
        return records

    def progress(self, what: str) -> None:
        print(f"[{time.perf_counter() - self.started:6.0f} s] {what} (load {os.getloadavg()[0]:.2f})",
              file=sys.stderr, flush=True)


def scan_argv(model: str, data: str, count: int | None, engine: str, sparsities: str,
              layers: str | None = None) -> list[str]:
    argv = ["scan", "--model", model, "--data", data, "--engine", engine, "--sparsities", sparsities]
    if count:
        argv += ["--count", str(count)]
    if layers:
        argv += ["--layers", layers]
    return argv


def warm_up(r: Runner) -> None:
    """Per checkout: fill the bytecode cache and the page cache (imports, the store, torchvision, the samples)."""
    a = r.args
    for side in ("before", "after"):
        r.progress(f"warm-up on {side}")
        r.run(side, [r.job(scan_argv(SAMPLES[0], "sample:digits", None, "fast", "0.5"), store=True),
                     r.job(scan_argv(a.engine_model, a.engine_data, 4, "fast", "0.5"), store=False)], record=False)


def engine_case(r: Runner) -> None:
    a, k = r.args, 0
    engines = a.engines.split(",")
    for i in range(a.engine_repeats):
        for engine in (engines if i % 2 == 0 else engines[::-1]):
            order = ("before", "after") if k % 2 == 0 else ("after", "before")
            k += 1
            for side in order:
                r.progress(f"engine: repeat {i + 1}/{a.engine_repeats}, {engine}, {side}")
                argv = scan_argv(a.engine_model, a.engine_data, a.engine_count, engine, a.sparsities, a.engine_layers)
                r.run(side, [r.job(argv, store=False, case="engine", repeat=i, model=a.engine_model, engine=engine,
                                   first=side == order[0])])


def store_case(r: Runner) -> None:
    a = r.args
    models = a.store_models.split(",")
    for i in range(a.repeats):
        jobs_by_side: dict[str, list[dict]] = {}
        for side in ("before", "after"):
            warm = [r.job(scan_argv(m, a.store_data, None, a.store_engine, a.sparsities), store=True)
                    for m in models]
            timed = []
            for j, m in enumerate(models):
                for store in ((True, False) if (i + j) % 2 == 0 else (False, True)):
                    timed.append(r.job(scan_argv(m, a.store_data, None, a.store_engine, a.sparsities), store=store,
                                       case="store", repeat=i, model=m, engine=a.store_engine))
            jobs_by_side[side] = [warm, timed]
        for side in (("before", "after") if i % 2 == 0 else ("after", "before")):
            r.progress(f"store: repeat {i + 1}/{a.repeats}, {side}")
            warm, timed = jobs_by_side[side]
            if a.store_cold:
                for job in timed:
                    r.run(side, [job])
            else:
                records = r.run(side, warm + timed, record=False)
                r.runs.extend(rec for rec in records if rec.get("case") == "store")
                for job in warm:
                    shutil.rmtree(job["folder"], ignore_errors=True)


# ------------------------------------------------------------------------------------------------ statistics


def med(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def iqr(xs: list[float]) -> tuple[float, float]:
    if len(xs) < 2:
        return (xs[0], xs[0]) if xs else (float("nan"),) * 2
    q = statistics.quantiles(xs, n=4, method="inclusive")
    return q[0], q[2]


def spread(xs: list[float], fmt: str = "{:.3f}") -> str:
    lo, hi = iqr(xs)
    return f"{fmt.format(med(xs))} [{fmt.format(lo)}, {fmt.format(hi)}]"


def select(runs: list[dict], **want) -> list[dict]:  # noqa: ANN003
    return sorted((r for r in runs if all(r.get(k) == v for k, v in want.items())), key=lambda r: r["repeat"])


def pairs(runs: list[dict], key: str, **want) -> list[tuple[float, float]]:  # noqa: ANN003
    """(before, after) of ``key`` per repeat for the runs matching ``want``."""
    by = {side: {r["repeat"]: r[key] for r in select(runs, side=side, **want)} for side in ("before", "after")}
    return [(by["before"][i], by["after"][i]) for i in sorted(by["before"]) if i in by["after"]]


def identical(runs: list[dict], **want) -> str:  # noqa: ANN003
    """Whether every run of this command wrote the same sensitivity.csv, before and after."""
    hashes = {side: {r["csv_sha256"] for r in select(runs, side=side, **want)} for side in ("before", "after")}
    if len(hashes["before"] | hashes["after"]) == 1:
        return "yes"
    if len(hashes["before"]) > 1 or len(hashes["after"]) > 1:
        return "no (differs within a checkout too)"
    return "**no**"


def engine_table(runs: list[dict], a: argparse.Namespace) -> list[str]:
    lines = ["| model | data | N | L | engine | engine s, before / after | engine after/before [IQR] | "
             "command s, before / after | command after/before [IQR] | same numbers? |",
             "| --- | --- | ---: | ---: | --- | --- | --- | --- | --- | --- |"]
    engines = a.engines.split(",")
    for engine in engines:
        sel = select(runs, case="engine", engine=engine)
        if not sel:
            continue
        tot, wall = pairs(runs, "total_s", case="engine", engine=engine), pairs(runs, "process_s", case="engine",
                                                                                  engine=engine)
        lines.append(
            f"| {a.engine_model} | {a.engine_data} | {sel[0]['samples']} | {sel[0]['layers']} | {engine} | "
            f"{med([b for b, _ in tot]):.2f} / {med([x for _, x in tot]):.2f} | {spread([x / b for b, x in tot])} | "
            f"{med([b for b, _ in wall]):.2f} / {med([x for _, x in wall]):.2f} | "
            f"{spread([x / b for b, x in wall])} | {identical(runs, case='engine', engine=engine)} |")
    if len(engines) == 2:
        fast, naive = ("fast", "naive") if set(engines) == {"fast", "naive"} else engines
        speedups = {}
        for side in ("before", "after"):
            f = {r["repeat"]: r["total_s"] for r in select(runs, case="engine", engine=fast, side=side)}
            n = {r["repeat"]: r["total_s"] for r in select(runs, case="engine", engine=naive, side=side)}
            speedups[side] = {i: n[i] / f[i] for i in f if i in n}
        common = [i for i in speedups["before"] if i in speedups["after"]]
        if common:
            lines.append(
                f"| | | | | {naive}/{fast} speed-up | {med(list(speedups['before'].values())):.2f}x / "
                f"{med(list(speedups['after'].values())):.2f}x | "
                f"{spread([speedups['after'][i] / speedups['before'][i] for i in common])} | | | |")
    return lines


def store_table(runs: list[dict], a: argparse.Namespace) -> list[str]:
    lines = ["| model | L | engine s (no store), before / after | engine after/before [IQR] | "
             "engine s (store), before / after | command s (no store), before / after | command after/before [IQR] | "
             "store overhead, whole command, ms, before / after | "
             "store overhead outside the engine, ms, before / after | "
             "outside the engine, after - before, paired ms [IQR] | same numbers? |",
             "| --- | ---: | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for m in a.store_models.split(","):
        sel = select(runs, case="store", model=m)
        if not sel:
            continue
        want = {"case": "store", "model": m}
        tot, tot_store = pairs(runs, "total_s", **want, store=False), pairs(runs, "total_s", **want, store=True)
        cmd, cmd_store = pairs(runs, "run_s", **want, store=False), pairs(runs, "run_s", **want, store=True)
        rest, rest_store = pairs(runs, "outside_s", **want, store=False), pairs(runs, "outside_s", **want, store=True)
        whole = [med([p[k] for p in cmd_store]) - med([p[k] for p in cmd]) for k in (0, 1)]  # before, after
        outside = [med([p[k] for p in rest_store]) - med([p[k] for p in rest]) for k in (0, 1)]
        paired = [((sa - na) - (sb - nb)) * 1e3 for (nb, na), (sb, sa) in zip(rest, rest_store)]
        lines.append(
            f"| {m} | {sel[0]['layers']} | {med([b for b, _ in tot]):.3f} / {med([x for _, x in tot]):.3f} | "
            f"{spread([x / b for b, x in tot])} | {med([b for b, _ in tot_store]):.3f} / "
            f"{med([x for _, x in tot_store]):.3f} | {med([b for b, _ in cmd]):.3f} / {med([x for _, x in cmd]):.3f} | "
            f"{spread([x / b for b, x in cmd])} | {whole[0] * 1e3:.1f} / {whole[1] * 1e3:.1f} | "
            f"{outside[0] * 1e3:.1f} / {outside[1] * 1e3:.1f} | {spread(paired, '{:.1f}')} | "
            f"{identical(runs, **want)} |")
    return lines


def git_head(path: Path) -> str:
    try:
        head = subprocess.run(["git", "-C", str(path), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(path), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True).stdout.strip()
        return head + (" + uncommitted changes" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "not a git checkout"


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "--child":
        sys.exit(child(sys.argv[2], sys.argv[3]))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--before", default="/work/before", help="checkout of the code before the change")
    parser.add_argument("--after", default=str(REPO), help="checkout of the code after the change")
    parser.add_argument("--cases", default="engine,store", help="engine, store or both")
    parser.add_argument("--repeats", type=int, default=7, help="store case: repeats (before/after pairs)")
    parser.add_argument("--engine-repeats", type=int, default=5, help="engine case: repeats (pairs per engine)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of every child (and OMP/MKL)")
    parser.add_argument("--sparsities", default=DEFAULT_SPARSITIES, help="every scan's --sparsities")
    parser.add_argument("--engine-model", default="torchvision:resnet18", help="engine case: --model")
    parser.add_argument("--engine-data", default="random:3x32x32", help="engine case: --data")
    parser.add_argument("--engine-count", type=int, default=32, help="engine case: samples")
    parser.add_argument("--engine-layers", default=None, help="engine case: only these layers (all if not given)")
    parser.add_argument("--engines", default="fast,naive", help="engine case: the engines, comma-separated")
    parser.add_argument("--store-models", default=",".join(SAMPLES), help="store case: the models, comma-separated")
    parser.add_argument("--store-data", default="sample:digits", help="store case: --data")
    parser.add_argument("--store-engine", default="fast", help="store case: --engine")
    parser.add_argument("--store-cold", action="store_true",
                        help="store case: every command in a fresh process instead of warm processes")
    parser.add_argument("--python", default=sys.executable, help="interpreter of the children")
    parser.add_argument("--json", default=None, help="write every run's raw numbers here")
    parser.add_argument("--keep-tmp", action="store_true", help="keep the scratch folder (children's output)")
    args = parser.parse_args()
    cases = set(args.cases.split(","))

    tmp = Path(tempfile.mkdtemp(prefix="bench_layout_"))
    r = Runner(args, tmp)
    load0, t0 = os.getloadavg(), time.perf_counter()
    try:
        warm_up(r)
        if "engine" in cases:
            engine_case(r)
        if "store" in cases:
            store_case(r)
    finally:
        if args.keep_tmp:
            print(f"scratch folder: {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    elapsed, load1 = time.perf_counter() - t0, os.getloadavg()

    versions = next((x["versions"] for x in r.runs if x.get("versions")), {})
    imports = {side: [x["import_s"] for x in r.runs if x["side"] == side and x["jobs_in_process"] == 1]
               or [x["import_s"] for x in r.runs if x["side"] == side] for side in ("before", "after")}
    heads = {side: git_head(path) for side, path in r.checkouts.items()}
    out = [f"Before: `{r.checkouts['before']}` ({heads['before']}); after: `{r.checkouts['after']}` "
           f"({heads['after']}). {platform.node() or 'this machine'}: {os.cpu_count()} CPUs, torch "
           f"{versions.get('torch', '?')}, python {platform.python_version()}, {args.threads} torch thread(s) per "
           f"child; load average {load0[0]:.2f} before, {load1[0]:.2f} after; {elapsed / 60:.1f} min in all; "
           f"{datetime.date.today().isoformat()}.", ""]
    if "engine" in cases:
        out += [f"Engine, medians of {args.engine_repeats} before/after pairs per engine (fresh process per command; "
                f"sparsities {args.sparsities}; no store):", ""] + engine_table(r.runs, args) + [""]
    if "store" in cases:
        mode = "a fresh process per command" if args.store_cold else "warm processes, imports excluded"
        out += [f"Store, {args.store_engine} engine, medians of {args.repeats} before/after pairs ({mode}; store "
                f"overhead = median time with the store minus without, of the whole command and of the command "
                f"outside the engine's timings.total_s):", ""] + store_table(r.runs, args) + [""]
    out.append(f"`import analysis.cli` in a fresh process: before {med(imports['before']):.2f} s, after "
               f"{med(imports['after']):.2f} s (medians of {len(imports['before'])} / {len(imports['after'])}).")
    print("\n".join(out))
    if args.json:
        Path(args.json).write_text(json.dumps({
            "args": vars(args), "checkouts": {k: str(v) for k, v in r.checkouts.items()}, "heads": heads,
            "load_average": {"before": load0, "after": load1}, "elapsed_s": elapsed, "cpus": os.cpu_count(),
            "date": datetime.datetime.now().isoformat(timespec="seconds"), "table": out, "runs": r.runs}, indent=1))


if __name__ == "__main__":
    main()
