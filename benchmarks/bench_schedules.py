"""Schedules on the bundled samples: measured accuracy of each allocation method, and prediction error.

For each sample model and each target global sparsity: uniform, global, LAMP, ERK and sensitivity schedules,
measured pruned, after BatchNorm recalibration (on the training split) and after a short sparse fine-tune
(from the recalibrated model). Then the prediction error of the additive, multiplicative and calibrated
models over uniform and sensitivity schedules at several targets (calibrated: leave-one-out, so each
schedule is predicted by a power fitted on the others). Prints Markdown tables for BENCHMARKS.md.

    OMP_NUM_THREADS=1 python benchmarks/bench_schedules.py [--finetune-steps 100] [--scans DIR]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from analysis.cli.folders import scan_setting  # noqa: E402
from analysis.schedule.allocate import Target, allocate  # noqa: E402
from analysis.schedule.measure import measure_schedule  # noqa: E402
from analysis.schedule.predict import Predictor  # noqa: E402
from analysis.sensitivity.config import ScanConfig  # noqa: E402
from analysis.sensitivity.driver import scan  # noqa: E402
from analysis.workload.data import load_data  # noqa: E402
from analysis.workload.workload import load_workload  # noqa: E402

MODELS = ("digits-cnn", "digits-resnet", "digits-mlp")
TARGETS = (0.5, 0.7, 0.9)
PREDICTION_TARGETS = (0.3, 0.5, 0.6, 0.7, 0.8, 0.9)
SPARSITIES = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.98)
ORDER = ("uniform", "global", "lamp", "erk", "sensitivity")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--finetune-steps", type=int, default=100)
    parser.add_argument("--scans", type=Path, default=Path("/tmp/prunescope-bench-scans"))
    args = parser.parse_args()
    torch.manual_seed(0)
    train = load_data("sample:digits-train")
    accuracy_rows, prediction_rows, speed_rows = [], [], []
    for name in MODELS:
        workload = load_workload(f"sample:{name}", "sample:digits")
        out = args.scans / name
        if not (out / "scan.json").is_file():
            scan(workload, ScanConfig(sparsities=SPARSITIES)).save(out)
        setting = scan_setting(out, ("global", "lamp"))
        measured: dict[tuple[str, float], object] = {}

        def run(method: str, target: float, steps: int):  # noqa: ANN202
            schedule = allocate(method, setting.layers, Target("sparsity", target), accountant=setting.accountant,
                                weights=setting.weights, profile=setting.profile)
            m = measure_schedule(workload, schedule, bn_recalibrate=True, train=train, finetune_steps=steps)
            measured[(method, target)] = (schedule, m)
            return m

        for target in TARGETS:
            cells = {}
            for method in ORDER:
                m = run(method, target, args.finetune_steps)
                bn = m.stages.get("bn_recalibrated")
                cells[method] = (m.stages["pruned"]["accuracy"], bn["accuracy"] if bn else None,
                                 m.stages["finetuned"]["accuracy"] if args.finetune_steps else None)
            accuracy_rows.append((name, target, cells))
        for target in PREDICTION_TARGETS:
            for method in ("uniform", "sensitivity"):
                if (method, target) not in measured:
                    run(method, target, 0)
        cases = [(sch, m.stages["pruned"]["accuracy"]) for (method, _), (sch, m) in measured.items()
                 if method in ("uniform", "sensitivity")]
        predictor = Predictor(setting.profile)
        errors = {model: [abs(e) for e in predictor.with_model(model).errors(cases)]
                  for model in ("additive", "multiplicative")}
        loo = []
        for i, (sch, value) in enumerate(cases):
            fitted = predictor.fit(cases[:i] + cases[i + 1:])
            loo.append(abs(fitted.predict(sch) - value))
        full = predictor.fit(cases)
        errors["calibrated (leave-one-out)"] = loo
        prediction_rows.append((name, len(cases), errors, full.power))
        schedule = measured[("sensitivity", 0.7)][0]
        speed_rows.append((name, len(setting.layers), _time(lambda: full.predict(schedule)),
                           _time(lambda: setting.accountant.totals(schedule))))
    _print(accuracy_rows, prediction_rows, speed_rows, args.finetune_steps)


def _time(fn, repeat: int = 2000) -> float:  # noqa: ANN001
    fn()
    start = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - start) / repeat * 1e6


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _print(accuracy_rows, prediction_rows, speed_rows, steps: int) -> None:  # noqa: ANN001
    print(f"Accuracy on sample:digits (pruned / after BN recalibration / after {steps} fine-tuning steps):\n")
    print("| model | target | " + " | ".join(ORDER) + " | sensitivity beats uniform (pruned / BN / fine-tuned) |")
    print("|---|---|" + "---|" * len(ORDER) + "---|")
    for name, target, cells in accuracy_rows:
        parts = [" / ".join(_fmt(v) for v in cells[m]) for m in ORDER]
        beats = " / ".join("n/a" if s is None else ("yes" if s > u else ("tie" if s == u else "**no**"))
                           for s, u in zip(cells["sensitivity"], cells["uniform"]))
        print(f"| {name} | {target:.0%} | " + " | ".join(parts) + f" | {beats} |")
    print("\nPrediction error (mean / max absolute error in accuracy, pruned, no recalibration) over the uniform "
          "and sensitivity schedules at " + ", ".join(f"{t:.0%}" for t in PREDICTION_TARGETS) + " global sparsity:\n")
    print("| model | schedules | additive | multiplicative | calibrated (leave-one-out) | fitted power |")
    print("|---|---|---|---|---|---|")
    for name, n, errors, power in prediction_rows:
        cols = [f"{statistics.mean(e):.3f} / {max(e):.3f}" for e in errors.values()]
        print(f"| {name} | {n} | " + " | ".join(cols) + f" | {power:.2f} |")
    print("\nSpeed of one call (microseconds, this machine):\n")
    print("| model | layers | Predictor.predict | Accountant.totals |")
    print("|---|---|---|---|")
    for name, n, p, t in speed_rows:
        print(f"| {name} | {n} | {p:.1f} | {t:.1f} |")


if __name__ == "__main__":
    main()
