"""Adaptive scans: collapse measures the full scan's cells and fewer of them; bisection finds the full grid's answer."""

from __future__ import annotations

import pandas as pd
import pytest

from analysis.core.profile import SensitivityProfile, tolerance_table
from analysis.sensitivity import adaptive
from analysis.sensitivity.config import FIELDS as ADAPTIVE_FIELDS
from analysis.sensitivity.config import ScanConfig, search_grid
from analysis.sensitivity.context import prepare
from analysis.sensitivity.driver import scan
from analysis.store.runs import RunStore, identity_key, scan_identity
from tests.conftest import run_cli
from tests.resuming import stop_and_resume

GRID = tuple(round(0.05 * i, 2) for i in range(1, 20))
SUMS = ["n", "correct", "agree"]


@pytest.fixture(scope="session")
def small():
    """The CNN and MLP samples on 150 held-out digits."""
    from analysis.workload.workload import load_workload

    return {name: load_workload(f"sample:{name}", "sample:digits", count=150) for name in ("digits-cnn", "digits-mlp")}


@pytest.fixture(scope="session")
def cnn_full(small):
    return scan(small["digits-cnn"], ScanConfig(sparsities=GRID))


def _cells(profile: SensitivityProfile) -> pd.DataFrame:
    return profile.table.set_index(["layer", "sparsity"])


def test_collapse_measures_the_full_scans_cells_and_stops_after_a_collapse(small, cnn_full):
    config = ScanConfig(sparsities=GRID, adaptive="collapse", collapse_at=0.6)
    profile = scan(small["digits-cnn"], config)
    full, got = _cells(cnn_full), _cells(profile)
    assert list(got.index) == list(full.index)  # the whole grid, measured or filled
    measured = got[got["measured"]]
    pd.testing.assert_frame_equal(measured[SUMS], full.loc[measured.index, SUMS])
    assert measured["loss_sum"].to_numpy() == pytest.approx(full.loc[measured.index, "loss_sum"].to_numpy(), rel=1e-9)
    ctx = prepare(small["digits-cnn"], config)
    floor = adaptive.collapse_floor(ctx, "accuracy")
    assert profile.meta["adaptive"] == {"mode": "collapse", "collapse_at": 0.6, "adaptive_metric": "accuracy",
                                        "points_per_call": 3}
    stopped = 0
    for layer in profile.layers:
        cells = profile.table[profile.table["layer"] == layer].sort_values("sparsity")
        flags = cells["measured"].tolist()
        assert flags == sorted(flags, reverse=True)  # measured cells come first, filled ones after
        if all(flags):
            # Never stopped: no measured cell before the last group collapsed.
            assert (cells["accuracy"].iloc[:-3] > floor).all()
            continue
        stopped += 1
        done, filled = cells[cells["measured"]], cells[~cells["measured"]]
        assert (done["accuracy"] <= floor).any() and (done["accuracy"].iloc[:-3] > floor).all()
        assert (filled["correct"] == done["correct"].iloc[-1]).all()  # the last measured value, carried on
        assert len(done) % 3 == 1  # the dense cell plus whole groups of 3
    assert stopped >= 1
    assert adaptive.measured_cells(profile)["measured"] < len(cnn_full.table)


def test_collapse_profile_round_trips_and_feeds_the_tolerance_table(small, tmp_path):
    profile = scan(small["digits-cnn"], ScanConfig(sparsities=GRID, adaptive="collapse", collapse_at=0.5))
    profile.save(tmp_path / "p")
    again = SensitivityProfile.load(tmp_path / "p")
    assert again.table["measured"].tolist() == profile.table["measured"].tolist()
    assert again.meta["adaptive"]["mode"] == "collapse"
    assert len(tolerance_table(again, 0.01)) == len(profile.layers)


@pytest.mark.parametrize("name,resolution,tolerance", [("digits-mlp", 0.01, 0.05), ("digits-cnn", 0.02, 0.02)])
def test_bisection_finds_the_full_grids_tolerance(small, name, resolution, tolerance):
    """Both cases have layers whose pass/fail is monotone in sparsity and layers where it is not."""
    workload = small[name]
    found = scan(workload, ScanConfig(adaptive="bisect", tolerance=tolerance, resolution=resolution))
    fine = scan(workload, ScanConfig(sparsities=search_grid(resolution)))
    table = adaptive.bisect_table(found).set_index("layer")
    grid_answer = tolerance_table(fine, tolerance, "accuracy").set_index("layer")["max_sparsity"]
    # The answer is tolerance_table over the measured points, and every measured point is the full grid's cell.
    assert table["max_sparsity"].to_dict() == tolerance_table(found, tolerance, "accuracy").set_index("layer")[
        "max_sparsity"].to_dict()
    measured, full = _cells(found), _cells(fine)
    pd.testing.assert_frame_equal(measured[SUMS], full.loc[measured.index, SUMS])
    drops = fine.drop("accuracy")
    monotone = noisy = 0
    for layer, row in table.iterrows():
        cells = drops[drops["layer"] == layer].sort_values("sparsity")
        fails = (cells["drop"] > tolerance + 1e-12).tolist()
        assert row["evaluations"] <= 16 and row["evaluations"] < len(cells) // 4
        if fails == sorted(fails):  # pass/fail monotone in sparsity: the search must equal the grid
            monotone += 1
            assert row["max_sparsity"] == grid_answer[layer]
        else:  # the documented guarantee: a passing sparsity right below a failing one
            noisy += 1
            assert not fails[cells["sparsity"].tolist().index(row["max_sparsity"])]
            assert row["first_failing"] == pytest.approx(row["max_sparsity"] + resolution)
            assert fails[cells["sparsity"].tolist().index(row["first_failing"])]
    assert monotone >= 1 and noisy >= 1


def test_section_points_narrow_the_bracket():
    assert adaptive.section_points(0, 100, 3) == [25, 50, 75]
    assert adaptive.section_points(10, 14, 3) == [11, 12, 13]
    assert adaptive.section_points(10, 12, 3) == [11]
    points = adaptive.section_points(0, 6, 4)
    assert len(set(points)) == 4 and all(0 < p < 6 for p in points)
    assert search_grid(0.01)[-1] == 0.99 and len(search_grid(0.01)) == 100
    assert search_grid(0.3) == (0.0, 0.3, 0.6, 0.9)


def test_adaptive_runs_are_stored_resumable_and_their_own_identity(small, tmp_path):
    wl = small["digits-mlp"]
    full, collapse = ScanConfig(), ScanConfig(adaptive="collapse")
    keys = {identity_key(scan_identity(wl, c)) for c in (
        full, collapse, ScanConfig(adaptive="collapse", collapse_at=0.5), ScanConfig(adaptive="bisect"))}
    assert len(keys) == 4
    assert not set(ADAPTIVE_FIELDS) & set(scan_identity(wl, full))  # a full scan's identity is as it was
    # A setting the mode does not use does not make another run.
    assert scan_identity(wl, ScanConfig(adaptive="collapse", tolerance=0.3)) == scan_identity(wl, collapse)
    config = ScanConfig(adaptive="bisect", tolerance=0.02, resolution=0.02)
    reference = scan(wl, config)
    with RunStore(tmp_path / "runs.sqlite") as store:
        run_id, resumed = stop_and_resume(store, wl, config, stop_after=1)
        pd.testing.assert_frame_equal(resumed.table, reference.table)
        stored = store.profile(run_id)
        assert stored.meta["adaptive"]["mode"] == "bisect" and stored.table["measured"].all()
        pd.testing.assert_frame_equal(adaptive.bisect_table(stored), adaptive.bisect_table(reference))


@pytest.mark.parametrize("config,match", [
    (ScanConfig(adaptive="sometimes"), "unknown adaptive mode 'sometimes'"),
    (ScanConfig(adaptive="collapse", collapse_at=0.0), "collapse_at 0.0 is outside"),
    (ScanConfig(adaptive="collapse", adaptive_metric="loss"), "'loss' cannot drive a collapse scan"),
    (ScanConfig(adaptive="bisect", tolerance=-0.1), "tolerance -0.1"),
    (ScanConfig(adaptive="bisect", resolution=0.7), "resolution 0.7 is outside"),
    (ScanConfig(adaptive="bisect", points_per_call=0), "points per call must be a positive integer, got 0"),
    (ScanConfig(adaptive="bisect", granularity="2:4"), "no sparsity to search"),
])
def test_bad_adaptive_settings_are_named(config, match):
    with pytest.raises(ValueError, match=match):
        config.validated()


def test_accuracy_needs_labels(small):
    from analysis.workload.workload import load_workload

    wl = load_workload("sample:digits-mlp", "random:1x8x8", count=16)
    with pytest.raises(ValueError, match="accuracy needs labelled data"):
        scan(wl, ScanConfig(adaptive="collapse", adaptive_metric="accuracy"))


def test_cli_bisect_writes_the_tolerance_csv(tmp_path):
    out = tmp_path / "scan"
    done = run_cli("scan", "--model", "sample:digits-mlp", "--data", "sample:digits", "--count", "100",
                   "--adaptive", "bisect", "--tolerance", "0.02", "--resolution", "0.05", "--out", out)
    assert done.returncode == 0, done.stderr
    table = pd.read_csv(out / "tolerance.csv")
    assert list(table["layer"]) and set(table.columns) >= {"layer", "max_sparsity", "drop", "evaluations"}
    profile = SensitivityProfile.load(out)
    assert table["max_sparsity"].tolist() == adaptive.bisect_table(profile)["max_sparsity"].tolist()
    assert "bisection" in done.stdout


@pytest.mark.parametrize("args,message", [
    (["--adaptive", "bisect", "--collapse-at", "0.5"], "--collapse-at applies to --adaptive collapse only"),
    (["--tolerance", "0.1"], "--tolerance applies to --adaptive bisect, sequential or sequential-bisect only"),
    (["--adaptive", "bisect", "--sparsities", "0.5"], "--sparsities does not apply to --adaptive bisect"),
    (["--adaptive", "collapse", "--collapse-at", "2"], "collapse_at 2.0 is outside (0, 1]"),
    (["--adaptive", "bisect", "--backend", "ray"], "an adaptive scan (bisect) decides on the whole eval set"),
])
def test_cli_refuses_bad_adaptive_options_with_one_line(tmp_path, capsys, args, message):
    from analysis.cli import main

    code = main(["scan", "--model", "sample:digits-mlp", "--data", "sample:digits", "--count", "20", *args,
                 "--out", str(tmp_path / "bad"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and f"prunescope: error: {message}" in err, err
    assert not (tmp_path / "bad").exists()


def test_cli_help_names_the_adaptive_options(capsys):
    from analysis.cli import main

    with pytest.raises(SystemExit):
        main(["scan", "--help"])
    helped = capsys.readouterr().out
    assert all(flag in helped for flag in ("--adaptive {off,collapse,bisect,sequential,sequential-bisect}",
                                           "--collapse-at", "--tolerance", "--shard-size", "--confidence",
                                           "--resolution", "--points-per-call"))
