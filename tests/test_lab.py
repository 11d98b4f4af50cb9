"""The strategy lab: every strategy on the three samples (small budgets), the numbers it shows tied to their twins,
repeatable runs, masks that stay fixed, IMP at the target exactly, cancel and resume, the store and the report."""

from __future__ import annotations

import math
import signal
import sqlite3
import subprocess
import sys
import time
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from analysis.cli import main
from analysis.core.layers import find_layers
from analysis.core.metric_table import drop
from analysis.lab.config import LabConfig, identity
from analysis.lab.context import LabError
from analysis.lab.literature import TYPICAL, Typical
from analysis.lab.result import ROWS, LabResult
from analysis.lab.runner import run_lab
from analysis.lab.strategies import STRATEGIES, get_strategy
from analysis.report.html import build_report
from analysis.schedule.allocate import Target, allocate
from analysis.sensitivity.config import ScanConfig
from analysis.sensitivity.driver import scan
from analysis.store.labs import delete_lab, lab_into_store, labs, open_lab, stored_units
from analysis.store.runs import RunStore
from analysis.workload.data import load_data
from analysis.workload.workload import load_workload
from tests.conftest import ROOT, cli_env, run_cli

SMALL = dict(epochs=2.0, evals_per_epoch=1, rounds=2, round_epochs=0.5, rewind_epochs=0.5, gradual_epochs=1.0,
             gradual_steps=3, export=False)


@pytest.fixture(scope="module")
def workloads():
    """The three samples on the first 160 held-out samples: every curve point is an evaluation."""
    return {name: load_workload(f"sample:{name}", "sample:digits", count=160)
            for name in ("digits-cnn", "digits-resnet", "digits-mlp")}


@pytest.fixture(scope="module")
def train():
    """256 samples of the training split: 4 steps an epoch, so every strategy trains in a blink."""
    return load_data("sample:digits-train", count=256)


def small(target: float = 0.5, **extra) -> LabConfig:  # noqa: ANN003
    return LabConfig(Target("sparsity", target), **{**SMALL, **extra})


@pytest.fixture(scope="module")
def runs(workloads, train):  # noqa: ANN001
    """Every strategy on each sample, twice, with the units each run produced."""
    out = {}
    for name, workload in workloads.items():
        results, units = [], []
        for _ in range(2):
            seen = []
            results.append(run_lab(workload, train, small(), on_unit=seen.append))
            units.append({u.name: u for u in seen})
        out[name] = (results, units)
    return out


@pytest.mark.parametrize("sample", ["digits-cnn", "digits-resnet", "digits-mlp"])
def test_every_strategy_runs_and_the_same_seed_gives_the_same_table(runs, sample):  # noqa: ANN001
    (first, second), _ = runs[sample]
    assert first.complete and first.strategies == list(STRATEGIES)
    pd.testing.assert_frame_equal(first.cells(), second.cells())
    pd.testing.assert_frame_equal(first.curves(), second.curves())
    table = first.table()
    assert list(table.index) == list(ROWS.values())
    assert list(table.columns) == [get_strategy(s).title for s in STRATEGIES]


@pytest.mark.parametrize("sample", ["digits-cnn", "digits-resnet", "digits-mlp"])
def test_imp_and_gradual_reach_the_target_exactly(runs, workloads, sample):  # noqa: ANN001
    (result, _), _ = runs[sample]
    summary = result.summary().set_index("strategy")
    layers = [l for l in _layers(workloads[sample])]
    allocated = allocate("uniform", layers, Target("sparsity", 0.5)).meta["totals"]["global_sparsity"]
    for name in ("unstructured", "imp", "imp-rewind", "gradual"):
        assert summary.loc[name, "sparsity"] == allocated
        assert summary.loc[name, "global_sparsity"] == summary.loc[name, "sparsity"]  # accountant vs zeros counted
    assert abs(allocated - 0.5) <= sum(1 / l.params for l in layers)
    imp_rows = result.curves().query("strategy == 'imp' and pruning")
    assert len(imp_rows) == 2 and imp_rows["sparsity"].is_monotonic_increasing


@pytest.mark.parametrize("sample", ["digits-cnn", "digits-mlp"])
def test_the_mask_stays_fixed_while_fine_tuning(runs, sample):  # noqa: ANN001
    _, (units, _) = runs[sample]
    for name in STRATEGIES:
        masks = units[f"{name}/prune"].state["masks"]
        before, after = units[f"{name}/prune"].state["model"], units[f"{name}/recover"].state["model"]
        assert masks and any(not bool(m.all()) for m in masks.values())
        changed = False
        for param, keep in masks.items():
            assert bool((after[param][~keep] == 0).all()), (name, param)
            assert int((after[param] == 0).sum()) == int((~keep).sum()), (name, param)
            changed |= not bool(torch_equal(before[param], after[param]))
        assert changed, f"{name}: fine-tuning changed no pruned weight tensor"
    curves = runs[sample][0][0].curves()
    recovering = curves[curves["phase"] == "recover"]
    for name, rows in recovering.groupby("strategy"):
        initial = curves[(curves["strategy"] == name) & (curves["phase"] == "prune")]["sparsity"].iloc[-1]
        assert (rows["sparsity"] == initial).all(), name


def torch_equal(a, b) -> bool:  # noqa: ANN001
    import torch

    return torch.equal(a, b)


@pytest.mark.parametrize("sample", ["digits-cnn", "digits-resnet", "digits-mlp"])
def test_every_number_shown_agrees_with_the_curves_it_comes_from(runs, sample):  # noqa: ANN001
    (result, _), _ = runs[sample]
    curves, metric, dense, tol = result.curves(), result.metric, result.dense, result.config.tolerance
    for s in (result.strategy_summary(name) for name in result.strategies):
        c = curves[curves["strategy"] == s["strategy"]]
        at_mask = c[c["recovery_step"] == 0].iloc[-1]
        assert s["initial"] == at_mask[metric] and s["initial_drop"] == pytest.approx(dense - at_mask[metric])
        assert s["final"] == c[metric].iloc[-1] and s["final_gap"] == pytest.approx(dense - c[metric].iloc[-1])
        if s["initial_drop"] > 0:
            assert s["recovery"] == pytest.approx((s["initial_drop"] - s["final_gap"]) / s["initial_drop"])
        after = c[c["recovery_step"] >= 0]
        within = after[dense - after[metric] <= tol + 1e-12]
        assert s["recovered_step"] == (int(within["recovery_step"].iloc[0]) if len(within) else None)
        assert s["pruning_steps"] == int(at_mask["step"]) == get_strategy(s["strategy"]).pruning_steps(_lab(result))
        assert c["step"].is_monotonic_increasing and (c["step"].iloc[-1] - at_mask["step"]) == s["recovery_steps"]
        befores = c[metric].shift(1).fillna(dense)[c["pruning"]]
        steps = [drop(metric, b, v) for b, v in zip(befores, c[c["pruning"]][metric])]
        assert s["largest_step_drop"] == pytest.approx(max(0.0, *steps)) and s["pruning_events"] == len(steps)
    cells = result.cells().set_index(["row", "strategy"])
    unstructured = result.strategy_summary("unstructured")
    assert cells.loc[("initial_drop", "unstructured"), "text"] == f"{100 * unstructured['initial_drop']:.2f} points"
    assert cells.loc[("sparsity", "unstructured"), "value"] == unstructured["sparsity"]


def _lab(result: LabResult):  # noqa: ANN202 - a stand-in with what pruning_steps reads
    class Lab:
        config = result.config
        rewind = None

        def steps(self, epochs: float) -> int:
            return round(epochs * result.steps_per_epoch)

    return Lab()


def test_the_spread_is_that_of_a_one_shot_scan_at_the_target(runs, workloads):  # noqa: ANN001
    (result, _), _ = runs["digits-cnn"]
    profile = scan(workloads["digits-cnn"], ScanConfig(sparsities=(0.5,)))
    drops = profile.drop("accuracy").query("sparsity == 0.5")["drop"].to_numpy()
    s = result.strategy_summary("imp")
    assert s["spread_std"] == pytest.approx(float(np.std(drops)))
    at = profile.drop("accuracy").query("sparsity == 0.5")
    assert s["most_sensitive"] == at.sort_values("drop")["layer"].iloc[-1]
    structured = result.units["sensitivity/l1/channel"]
    assert "fc" not in {r["layer"] for r in structured["table"]}  # the classifier's outputs are kept


@pytest.mark.parametrize("allocation", ["uniform", "global"])
def test_the_structured_strategy_keeps_the_classifier_whole(workloads, allocation):  # noqa: ANN001
    """The channel coupling alone keeps the classes' group whole: no bound in the lab's allocation is needed."""
    config = LabConfig(Target("sparsity", 0.7), strategies=("structured",), export=False, allocation=allocation)
    result = run_lab(workloads["digits-cnn"], None, config)
    sparsities = result.units["structured/prune"]["schedule"]["sparsities"]
    assert sparsities.get("fc", 0.0) == 0.0 and max(sparsities.values()) > 0.5, sparsities


def test_snip_starts_from_a_reinitialised_network_near_chance(workloads):  # noqa: ANN001
    config = LabConfig(Target("sparsity", 0.5), strategies=("snip",), epochs=10.0, evals_per_epoch=1, export=False)
    result = run_lab(workloads["digits-mlp"], load_data("sample:digits-train"), config)
    s = result.strategy_summary("snip")
    assert s["initial"] < 0.3 and s["final"] > s["initial"] + 0.3
    assert s["family"] == "init" and result.cells().query("row == 'recovery' and strategy == 'snip'")["typical"].iloc[0]


def test_imp_with_rewinding_says_where_it_rewound_to_and_takes_a_checkpoint(workloads, train):  # noqa: ANN001
    workload = workloads["digits-mlp"]
    config = small(strategies=("imp-rewind",), epochs=0.5)
    default = run_lab(workload, train, config).strategy_summary("imp-rewind")
    assert any("re-training (no checkpoint given)" in n for n in default["notes"])
    state = {k: v * 0.5 for k, v in workload.model.state_dict().items()}
    given = run_lab(workload, train, config, rewind=state).strategy_summary("imp-rewind")
    assert any("the given checkpoint" in n for n in given["notes"])
    assert given["pruning_steps"] < default["pruning_steps"] and given["initial"] != default["initial"]
    with pytest.raises(ValueError, match="rewinding checkpoint"):
        run_lab(workload, train, config, rewind={"nothing": state["fc1.weight"]})


def test_exports_give_size_and_latency_shrunk_for_the_structured_strategy(workloads, train):  # noqa: ANN001
    config = small(strategies=("unstructured", "structured"), export=True, latency_repeats=3)
    result = run_lab(workloads["digits-cnn"], train, config)
    summary = result.summary().set_index("strategy")
    assert summary.loc["structured", "export_mode"] == "shrunk" and summary.loc["structured", "file_ratio"] < 0.9
    assert summary.loc["unstructured", "export_mode"] == "masked"
    assert summary.loc["unstructured", "file_ratio"] == pytest.approx(1.0, abs=0.02)
    assert summary.loc["unstructured", "gzip_ratio"] < 0.95 and summary["export_passed"].all()
    cell = result.cells().set_index(["row", "strategy"]).loc[("pattern", "structured"), "text"]
    assert cell.startswith(f"shrunk: file {summary.loc['structured', 'file_ratio']:.2f}x")


def test_the_errors_say_what_to_give(workloads, train):  # noqa: ANN001
    workload = workloads["digits-mlp"]
    with pytest.raises(LabError, match=r"imp, imp-rewind, gradual, snip train while pruning and need training data"):
        run_lab(workload, None, LabConfig())
    with pytest.raises(LabError, match="from scratch: 1 epochs cannot tell"):
        run_lab(workload, train, small(strategies=("snip",), epochs=1.0))
    with pytest.raises(ValueError, match="unknown strategy 'obd'"):
        run_lab(workload, train, small(strategies=("obd",)))
    with pytest.raises(ValueError, match="unknown allocation"):
        run_lab(workload, train, small(allocation="best"))
    with pytest.raises(LabError, match=r"training data .* has inputs of shape \[3\]"):
        run_lab(workload, load_data("random:3", count=8), small())


def test_without_training_data_the_one_shot_strategies_show_their_initial_drop(workloads):  # noqa: ANN001
    config = LabConfig(Target("sparsity", 0.6), strategies=("unstructured", "2:4"), export=False)
    result = run_lab(workloads["digits-mlp"], None, config)
    assert set(result.units) == {"dense", "sensitivity/magnitude/unstructured", "sensitivity/magnitude/2:4",
                                 "unstructured/prune", "2:4/prune"}
    cells = result.cells().set_index(["row", "strategy"])
    assert cells.loc[("recovery", "unstructured"), "text"] == "not measured (no recovery budget)"
    assert "2:4 prunes exactly 0.5" in result.strategy_summary("2:4")["notes"][0]


def test_the_sensitivity_allocation_reads_a_full_scan(workloads, train):  # noqa: ANN001
    result = run_lab(workloads["digits-mlp"], train, small(0.7, strategies=("unstructured",), epochs=0.5,
                                                            allocation="sensitivity"))
    unit = result.units["sensitivity/magnitude/unstructured"]
    grid = sorted({r["sparsity"] for r in unit["table"]})
    assert grid[0] == 0.0 and unit["sparsity"] in grid and len(grid) >= 10
    sparsities = result.units["unstructured/prune"]["schedule"]["sparsities"]
    assert len(set(sparsities.values())) > 1 and result.strategy_summary("unstructured")["sparsity"] == \
        pytest.approx(0.7, abs=3 / 1024)


def test_a_cancelled_lab_keeps_its_units_and_resumes_to_the_same_table(workloads, train):  # noqa: ANN001
    workload, config = workloads["digits-mlp"], small(strategies=("unstructured", "imp", "gradual"))
    whole = run_lab(workload, train, config)
    kept, ticks = [], iter(range(10**6))
    stopped = run_lab(workload, train, config, on_unit=kept.append, should_stop=lambda: next(ticks) > 12)
    assert not stopped.complete and 0 < len(kept) < len(whole.units)
    seen = []
    resumed = run_lab(workload, train, config, done={u.name: u for u in kept}, on_unit=seen.append)
    assert resumed.complete and {u.name for u in seen}.isdisjoint({u.name for u in kept})
    pd.testing.assert_frame_equal(resumed.curves(), whole.curves())
    pd.testing.assert_frame_equal(resumed.cells(), whole.cells())


def test_a_dropped_state_is_computed_again_with_the_same_numbers(workloads, train):  # noqa: ANN001
    workload, config = workloads["digits-mlp"], small(strategies=("imp",))
    units = []
    whole = run_lab(workload, train, config, on_unit=units.append)
    done = {u.name: u for u in units if u.name != "imp/recover"}
    done["imp/prune"].state = None
    again = []
    resumed = run_lab(workload, train, config, done=done, on_unit=again.append)
    assert [u.name for u in again] == ["imp/prune", "imp/recover"]
    assert again[0].result == done["imp/prune"].result
    pd.testing.assert_frame_equal(resumed.curves(), whole.curves())


def test_the_store_keeps_units_resumes_lists_reopens_and_deletes(workloads, train, tmp_path):  # noqa: ANN001
    store, workload = RunStore(tmp_path / "runs.sqlite"), workloads["digits-mlp"]
    config = small(strategies=("unstructured",), epochs=0.5)
    first = lab_into_store(store, workload, train, config)
    assert first.resumed == 0 and first.result.complete
    assert stored_units(store, first.key)["unstructured/recover"].state is None  # states go once complete
    more = lab_into_store(store, workload, train, small(strategies=("unstructured", "2:4"), epochs=0.5))
    assert more.key == first.key and more.resumed == 4
    listed = labs(store, f"{workload.fingerprint()}:{workload.data.fingerprint()}")
    assert list(listed["id"]) == [more.lab_id] and listed["units_done"].iloc[0] == listed["units"].iloc[0] == 7
    reopened = open_lab(store, more.lab_id)
    assert reopened.complete and reopened.strategies == ["unstructured", "2:4"]
    pd.testing.assert_frame_equal(reopened.cells(), more.result.cells())
    assert labs(store, "other:workload").empty
    other = lab_into_store(store, workload, train, small(0.6, strategies=("unstructured",), epochs=0.5))
    assert other.key != first.key and len(labs(store)) == 2
    delete_lab(store, more.lab_id)
    assert list(labs(store)["id"]) == [other.lab_id] and not stored_units(store, first.key)


def test_the_result_round_trips_through_lab_json(runs):  # noqa: ANN001
    import json

    (result, _), _ = runs["digits-resnet"]
    again = LabResult.from_dict(json.loads(json.dumps(result.to_dict(), default=str)))
    pd.testing.assert_frame_equal(again.cells(), result.cells())
    assert again.config == result.config


def test_the_html_report_includes_the_lab(runs, workloads):  # noqa: ANN001
    (result, _), _ = runs["digits-mlp"]
    profile = scan(workloads["digits-mlp"], ScanConfig(sparsities=(0.5,)))
    page = build_report(profile, lab=result, plotlyjs="cdn")
    assert "<h2>Strategy lab</h2>" in page and "Recovery with the mask fixed" in page
    assert all(get_strategy(s).title in page for s in STRATEGIES)
    assert TYPICAL["recovery"]["structured"].text in page


def test_the_literature_places_a_value_in_its_range():
    assert Typical("5 - 20", 5, 20).place(3) == "below" and Typical("5 - 20", 5, 20).place(25) == "above"
    assert Typical(">95%", 0.95).place(0.97) == "within" and Typical("words").place(1.0) is None
    assert Typical("x", 0.1, 0.2).place(None) is None and math.isfinite(TYPICAL["initial_drop"]["unstructured"].high)


def test_whole_numbers_and_floats_give_one_lab_identity():
    as_ints = LabConfig(Target("params", 5000), epochs=3, round_epochs=1, lr=1).validated()
    as_floats = LabConfig(Target("params", 5000.0), epochs=3.0, round_epochs=1.0, lr=1.0).validated()
    assert identity(as_ints, "m", "d", None, None) == identity(as_floats, "m", "d", None, None)
    assert identity(as_ints, "m", "d", None, None) != identity(replace(as_floats, epochs=4.0), "m", "d", None, None)


def _layers(workload):  # noqa: ANN001, ANN202
    return find_layers(workload.model, workload.data.x[:1])


# ---------------------------------------------------------------------------------------------------- the CLI

LAB_ARGS = ["lab", "--model", "sample:digits-cnn", "--data", "sample:digits", "--count", "160", "--train-data",
            "sample:digits-train", "--target-sparsity", "0.5", "--strategies", "unstructured,imp", "--epochs", "2",
            "--rounds", "2", "--round-epochs", "1", "--evals-per-epoch", "1", "--no-export"]


def _stored_units(path) -> int:  # noqa: ANN001
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5) as conn:
            return conn.execute("SELECT COUNT(*) FROM artifacts WHERE kind = 'lab-unit'").fetchone()[0]
    except sqlite3.Error:
        return 0


@pytest.mark.slow
def test_a_lab_killed_with_sigkill_resumes_to_an_uninterrupted_runs_table(tmp_path):
    home, out = tmp_path / "home", tmp_path / "resumed"
    proc = subprocess.Popen([sys.executable, "-m", "analysis", *LAB_ARGS, "--out", str(out)], cwd=ROOT,
                            env=cli_env(PRUNESCOPE_HOME=str(home)), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    while proc.poll() is None and time.monotonic() < deadline and _stored_units(home / "runs.sqlite") < 3:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the lab finished before it could be killed"
    kept = _stored_units(home / "runs.sqlite")
    assert 3 <= kept < 6
    resumed = run_cli(*LAB_ARGS, "--out", out, PRUNESCOPE_HOME=str(home))
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming lab 1: {kept} of 6 units already done" in resumed.stderr
    whole = run_cli(*LAB_ARGS, "--no-store", "--out", tmp_path / "whole", PRUNESCOPE_HOME=str(tmp_path / "other"))
    assert whole.returncode == 0, whole.stderr
    assert (out / "lab.csv").read_text() == (tmp_path / "whole" / "lab.csv").read_text()
    curves = pd.read_csv(out / "lab.csv")
    assert list(curves["strategy"].drop_duplicates()) == ["unstructured", "imp"]
    assert all(rows["step"].is_monotonic_increasing for _, rows in curves.groupby("strategy"))
    assert "One-shot unstructured" in resumed.stdout and "against the literature" in resumed.stdout


@pytest.mark.parametrize("extra,match", [
    (["--strategies", "obd"], "unknown strategy 'obd'"),
    (["--epochs", "-1"], "epochs must be a number of epochs"),
    (["--rewind-checkpoint", "missing.pt"], "does not exist"),
    (["--target-sparsity", "1.5"], "is not a number in [0, 1)"),
    (["--target-params", "lots"], "is not a count"),
])
def test_bad_lab_input_is_one_line_and_exit_2(tmp_path, capsys, extra, match):  # noqa: ANN001
    args = ["lab", "--model", "sample:digits-mlp", "--data", "sample:digits", "--train-data", "sample:digits-train"]
    if not any(a.startswith("--target") for a in extra):
        args += ["--target-sparsity", "0.5"]
    assert main([*args, *extra, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert match in err and len(err.strip().splitlines()) == 1 and not (tmp_path / "out").exists()


def test_without_training_data_the_cli_says_which_strategies_need_it(tmp_path, capsys):  # noqa: ANN001
    code = main(["lab", "--model", "sample:digits-mlp", "--data", "sample:digits", "--target-sparsity", "0.5",
                 "--out", str(tmp_path / "out")])
    assert code == 2 and "need training data (--train-data" in capsys.readouterr().err


TINY = ["--target-sparsity", "0.5", "--strategies", "unstructured,imp", "--epochs", "0.25", "--rounds", "2",
        "--round-epochs", "0.25", "--no-export", "--no-store", "--quiet"]


def _digits(count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``count`` digits as a model input (N, 1, 8, 8) and labels, as the samples read them."""
    train = load_data("sample:digits-train")
    return train.x[:count], train.y[:count]


def test_a_tensor_file_and_an_image_folder_train_the_lab(tmp_path, capsys):  # noqa: ANN001
    x, y = _digits(128)
    torch.save({"x": x, "y": y}, tmp_path / "train.pt")
    pixels = (x[:, 0] - x.min()) / (x.max() - x.min()) * 255
    for i, (image, label) in enumerate(zip(pixels, y)):
        (tmp_path / "images" / str(int(label))).mkdir(parents=True, exist_ok=True)
        Image.fromarray(image.round().to(torch.uint8).numpy()).save(tmp_path / "images" / str(int(label)) / f"{i}.png")
    base = ["lab", "--model", "sample:digits-mlp", "--data", "sample:digits", *TINY]
    for name, extra in (("train.pt", []), ("images", ["--input-size", "8", "--normalize", "none"])):
        out = tmp_path / f"out-{name}"
        assert main([*base, "--train-data", str(tmp_path / name), *extra, "--epochs", "1", "--out", str(out)]) == 0
        curves = pd.read_csv(out / "lab.csv")
        assert set(curves["phase"]) == {"prune", "recover"} and curves["step"].max() > 0


@pytest.mark.parametrize("write,match", [
    (lambda f: torch.save({"x": torch.zeros(4, 3, 8, 8), "y": torch.zeros(4, dtype=torch.long)}, f),
     "has inputs of shape [3, 8, 8], the eval data [1, 8, 8]"),
    (lambda f: torch.save({"x": _digits(4)[0], "y": torch.full((4,), 12)}, f),
     "has label 12; sample:digits-mlp has 10"),
    (lambda f: torch.save({"x": torch.zeros(0, 1, 8, 8)}, f), "holds no samples"),
    (lambda f: f.write_text("not tensors"), "is not a torch.save or .npz file"),
])
def test_bad_training_data_is_one_line_and_exit_2(tmp_path, capsys, write, match):  # noqa: ANN001
    write(tmp_path / "train.pt")
    code = main(["lab", "--model", "sample:digits-mlp", "--data", "sample:digits", "--train-data",
                 str(tmp_path / "train.pt"), *TINY, "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and match in err and len(err.strip().splitlines()) == 1 and not (tmp_path / "out").exists()


def test_the_report_command_takes_a_lab_folder(tmp_path, capsys):  # noqa: ANN001
    base = ["--model", "sample:digits-mlp", "--data", "sample:digits", "--quiet"]
    assert main(["lab", *base, "--target-sparsity", "0.6", "--strategies", "unstructured,2:4", "--no-export",
                 "--out", str(tmp_path / "lab")]) == 0
    assert main(["scan", *base, "--sparsities", "0.6", "--no-store", "--out", str(tmp_path / "scan")]) == 0
    assert main(["report", "--scan", str(tmp_path / "scan"), "--lab", str(tmp_path / "lab"), "--plotlyjs", "cdn",
                 "--out", str(tmp_path / "r.html")]) == 0
    page = (tmp_path / "r.html").read_text()
    assert "<h2>Strategy lab</h2>" in page and "2:4 (N:M)" in page
    assert main(["report", "--scan", str(tmp_path / "scan"), "--lab", str(tmp_path / "scan"), "--out",
                 str(tmp_path / "r2.html")]) == 2
    assert "not a lab folder" in capsys.readouterr().err
