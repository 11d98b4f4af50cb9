"""Calibration: `prunescope calibrate` measures real schedules, fits the calibrated model, and `schedule` and
`evaluate` then carry its prediction next to the measurement."""

from __future__ import annotations

import json
import shutil

import pandas as pd
import pytest

from analysis.cli import main
from analysis.cli.folders import predictor_from_scan, scan_setting
from analysis.schedule.calibrate import build_schedules, fit, parse_methods, parse_targets
from analysis.schedule.predict import MODELS
from analysis.schedule.schedule import Schedule
from tests.conftest import run_cli

TARGETS = (0.5, 0.8)
METHODS = ("uniform", "sensitivity")


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory, workloads):
    """A digits-mlp scan folder, calibrated through the command line on 2 methods x 2 targets."""
    from analysis.sensitivity.config import ScanConfig
    from analysis.sensitivity.driver import scan

    out = tmp_path_factory.mktemp("calibrated")
    scan(workloads["digits-mlp"], ScanConfig(sparsities=(0.3, 0.6, 0.8, 0.9))).save(out)
    r = run_cli("calibrate", "--scan", out, "--targets", ",".join(map(str, TARGETS)), "--methods", ",".join(METHODS))
    assert r.returncode == 0, r.stderr
    return out, r


def test_calibrate_writes_the_calibration_and_one_row_per_measured_schedule(calibrated) -> None:
    out, r = calibrated
    info = json.loads((out / "calibration.json").read_text())
    assert info["model"] == "calibrated" and info["metric"] == "accuracy" and info["stage"] == "pruned"
    assert info["power"] > 0 and info["schedules"] == len(TARGETS) * len(METHODS)
    assert info["model_spec"] == "sample:digits-mlp" and info["dense_measured"] == pytest.approx(info["dense_scan"])
    table = pd.read_csv(out / "calibration.csv")
    assert sorted(zip(table.method, table.target)) == sorted((m, t) for m in METHODS for t in TARGETS)
    assert (table.global_sparsity - table.target).abs().max() < 1e-3
    for model in MODELS:
        assert (table[f"error_{model}"] - (table[f"predicted_{model}"] - table.measured)).abs().max() < 1e-12
        assert info["mae"][model] == pytest.approx(table[f"error_{model}"].abs().mean())
    assert table.measured.between(0, 1).all() and table.measured.nunique() > 1
    assert "mean absolute error: additive" in r.stdout and "wrote" in r.stdout


def test_the_fitted_model_predicts_the_measured_schedules_no_worse_than_additive(calibrated) -> None:
    out, _ = calibrated
    table = pd.read_csv(out / "calibration.csv")
    measured = {(row.method, row.target): row.measured for row in table.itertuples()}
    predictor = predictor_from_scan(out)
    assert predictor.model == "calibrated"
    assert predictor.power == pytest.approx(json.loads((out / "calibration.json").read_text())["power"])
    additive = predictor.with_model("additive")
    errors = {"calibrated": [], "additive": []}
    for method, target, schedule in build_schedules(scan_setting(out, tuple(METHODS)), TARGETS, METHODS):
        row = table[(table.method == method) & (table.target == target)].iloc[0]
        assert additive.predict(schedule) == pytest.approx(row.predicted_additive)
        errors["calibrated"].append(abs(predictor.predict(schedule) - measured[(method, target)]))
        errors["additive"].append(abs(additive.predict(schedule) - measured[(method, target)]))
    assert sum(errors["calibrated"]) <= sum(errors["additive"])


def test_schedule_predicts_with_the_calibration_and_evaluate_shows_it_next_to_the_measurement(calibrated,
                                                                                               tmp_path) -> None:
    out, _ = calibrated
    path = tmp_path / "uniform.json"
    r = run_cli("schedule", "--scan", out, "--method", "uniform", "--target-sparsity", "0.5", "--out", path)
    assert r.returncode == 0, r.stderr
    assert "prediction model calibrated (power" in r.stdout and "leave-one-out error" in r.stdout
    schedule = Schedule.load(path)
    predicted = schedule.meta["predicted"]
    assert predicted["model"] == "calibrated" and predicted["stage"] == "pruned"
    assert predicted["accuracy"] == pytest.approx(predictor_from_scan(out).predict(schedule))
    r = run_cli("evaluate", "--model", "sample:digits-mlp", "--data", "sample:digits", "--schedule", path, "--quiet")
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout)
    assert result["predicted"] == pytest.approx(predicted["accuracy"]) and result["prediction_model"] == "calibrated"
    assert result["prediction"]["measured"] == pytest.approx(result["pruned"]["accuracy"])
    assert result["prediction"]["error"] == pytest.approx(result["predicted"] - result["pruned"]["accuracy"])
    table = pd.read_csv(out / "calibration.csv")
    row = table[(table.method == "uniform") & (table.target == 0.5)].iloc[0]
    assert result["pruned"]["accuracy"] == pytest.approx(row.measured)  # calibrate measured the same schedule


def test_a_calibration_of_another_profile_is_ignored(calibrated, tmp_path) -> None:
    out, _ = calibrated
    copy = tmp_path / "scan"
    shutil.copytree(out, copy)
    info = json.loads((copy / "calibration.json").read_text())
    assert predictor_from_scan(copy).model == "calibrated"
    (copy / "calibration.json").write_text(json.dumps({**info, "scan": "0" * 16}))
    assert predictor_from_scan(copy).model == "additive"


def _main(args: list, capsys) -> tuple[int, str]:
    try:
        code = main([str(a) for a in args])
    except SystemExit as exc:
        code = exc.code
    return code, capsys.readouterr().err


def test_calibrate_rejects_bad_inputs_with_one_line(calibrated, tmp_path, capsys) -> None:
    out, _ = calibrated
    r = run_cli("calibrate", "--scan", tmp_path / "missing")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "does not exist" in r.stderr, r.stderr
    not_a_scan = tmp_path / "empty"
    not_a_scan.mkdir()
    for args, needle in [(("--targets", "1.0"), "'1.0'"), (("--targets", "abc"), "'abc'"),
                         (("--targets", "0.5,0"), "'0'"), (("--methods", "uniform,best"), "'best'"),
                         (("--metric", "loss"), "loss")]:
        code, err = _main(["calibrate", "--scan", out, *args], capsys)
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 1 and lines[0].startswith("prunescope: error:") and needle in lines[0], err
    code, err = _main(["calibrate", "--scan", not_a_scan], capsys)
    assert code == 2 and "not a scan folder" in err and len(err.strip().splitlines()) == 1, err


def test_parsers_and_fit_validate_their_inputs(calibrated) -> None:
    assert parse_targets("0.5, 0.7,0.5") == (0.5, 0.7)
    assert parse_methods(["sensitivity", "uniform"]) == ("sensitivity", "uniform")
    with pytest.raises(ValueError, match="at least one target"):
        parse_targets(" , ")
    out, _ = calibrated
    predictor = predictor_from_scan(out)
    with pytest.raises(ValueError, match="at least two measured schedules"):
        fit(predictor, [])


def test_schedule_without_a_measured_layer_is_written_without_a_prediction(workloads, tmp_path, capsys) -> None:
    from analysis.sensitivity.config import ScanConfig
    from analysis.sensitivity.driver import scan

    partial = tmp_path / "partial"
    scan(workloads["digits-mlp"], ScanConfig(sparsities=(0.5, 0.9), layers=("fc1", "fc2"))).save(partial)
    path = tmp_path / "u.json"
    # global reads the model, so it may prune fc3, which the scan left out: before, this ended in an error.
    code = main(["schedule", "--scan", str(partial), "--method", "global", "--target-sparsity", "0.5",
                 "--out", str(path)])
    assert code == 0
    assert "no prediction: the scan did not measure fc3" in capsys.readouterr().out
    assert "predicted" not in Schedule.load(path).meta
